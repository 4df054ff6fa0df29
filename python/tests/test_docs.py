"""docs/PYTHON.md's examples run as written (paths moved to a temporary directory)."""

import os
import re

HERE = os.path.dirname(os.path.abspath(__file__))
DOC = os.path.join(HERE, "..", "..", "docs", "PYTHON.md")


def blocks():
    with open(DOC) as f:
        return re.findall(r"```python\n(.*?)```", f.read(), re.S)


def test_the_first_example_saves_and_restores(tmp_path):
    code = blocks()[0].replace("/ckpts/run/ckpt", str(tmp_path / "ckpt"))
    scope = {}
    exec(compile(code, "docs/PYTHON.md", "exec"), scope)
    assert scope["path"] == str(tmp_path / "ckpt-1")


def test_the_pytorch_example_saves_and_loads(tmp_path):
    import torch

    model = torch.nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(1, 4)).sum().backward()
    opt.step()
    code = blocks()[1].replace("/ckpts/step-1000", str(tmp_path / "step-1000"))
    exec(compile(code, "docs/PYTHON.md", "exec"), {"model": model, "opt": opt})
    assert (tmp_path / "step-1000.manifest").exists()
