"""docs/PYTHON.md's examples run as written (paths moved to a temporary directory)."""

import os
import re

HERE = os.path.dirname(os.path.abspath(__file__))
DOC = os.path.join(HERE, "..", "..", "docs", "PYTHON.md")


def blocks():
    with open(DOC) as f:
        return re.findall(r"```python\n(.*?)```", f.read(), re.S)


def test_the_first_example_saves_and_restores(tmp_path):
    code = blocks()[1].replace("/ckpts/run/ckpt", str(tmp_path / "ckpt"))
    scope = {}
    exec(compile(code, "docs/PYTHON.md", "exec"), scope)
    assert scope["path"] == str(tmp_path / "ckpt-1")


def test_the_pytorch_example_trains_checkpoints_and_resumes(tmp_path):
    import torch

    def run():
        model = torch.nn.Linear(4, 2)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

        def train_step():
            opt.zero_grad()
            model(torch.ones(1, 4)).sum().backward()
            opt.step()

        code = blocks()[0].replace("/ckpts/run", str(tmp_path / "run"))
        scope = {"model": model, "opt": opt, "train_step": train_step}
        exec(compile(code, "docs/PYTHON.md", "exec"), scope)
        return model, scope

    model, scope = run()
    assert scope["saved"].result() == str(tmp_path / "run" / "ckpt-300")
    manifests = sorted(f for f in os.listdir(tmp_path / "run") if f.endswith(".manifest"))
    assert manifests == ["ckpt-100.manifest", "ckpt-200.manifest", "ckpt-300.manifest"]
    # The second run resumes at step 300: it loads, trains no step, and holds the same weights.
    resumed, scope = run()
    assert scope["state"]["epoch"] == 300 and torch.equal(resumed.weight, model.weight)
