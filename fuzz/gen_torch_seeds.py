"""Regenerates the seeds of fuzz_torch_file from files torch.save writes (Debian's torch):
python3 fuzz/gen_torch_seeds.py fuzz/corpus/fuzz_torch_file"""

import collections
import io
import sys
import zipfile
from pathlib import Path

import torch


def states():
    torch.manual_seed(0)
    w = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    yield "flat", collections.OrderedDict(w=w, b=torch.zeros(3, dtype=torch.bfloat16))
    yield "shared", {"a": w, "tied": w, "col": w[:, 1], "t": w.t(), "n": 3, "lr": 0.5, "s": "x", "none": None}
    yield "nested", {"opt": {"state": {0: {"step": torch.tensor(1.0)}}, "param_groups": [{"betas": (0.9, 0.99), "params": [0]}]},
                     "e": torch.zeros(0, 2), "c": torch.ones(1, dtype=torch.complex64), "z": torch.tensor(7)}
    yield "linear", torch.nn.Linear(2, 2).state_dict()


def main(out):
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name, state in states():
        buf = io.BytesIO()
        torch.save(state, buf)
        raw = buf.getvalue()
        pkl = next(zipfile.ZipFile(io.BytesIO(raw)).read(n) for n in zipfile.ZipFile(io.BytesIO(raw)).namelist() if n.endswith("/data.pkl"))
        (out / f"{name}-file").write_bytes(b"\x00" + raw)
        (out / f"{name}-zipped-pickle").write_bytes(b"\x01" + pkl)
        (out / f"{name}-pickle").write_bytes(b"\x02" + pkl)
        legacy = io.BytesIO()  # the legacy (non-zip) format: pickles, then raw storages
        torch.save(state, legacy, _use_new_zipfile_serialization=False)
        (out / f"{name}-legacy-file").write_bytes(b"\x00" + legacy.getvalue())


def dcp_seeds(out):
    """DCP .metadata files that torch 1.13 writes (its dataclasses made importable under 3.11)."""
    import tempfile
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "python" / "tests"))
    from torch_dcp import import_dcp
    dcp = import_dcp()[0]
    with tempfile.TemporaryDirectory() as d:
        dcp.save_state_dict({"w": torch.arange(6.0).reshape(2, 3), "b": torch.ones(2, dtype=torch.bfloat16), "step": 3},
                            dcp.FileSystemWriter(d), no_dist=True)
        (Path(out) / "dcp-metadata").write_bytes(b"\x03" + (Path(d) / ".metadata").read_bytes())


if __name__ == "__main__":
    main(sys.argv[1])
    dcp_seeds(sys.argv[1])
