"""meshckpt.torch's C++ path: the Checkpointer (numbered saves of one state dict, bindings kept
while the state stays the same, async saves), tensors that share a storage (tied weights,
views), every torch dtype, strided, 0-d and empty tensors, and skeletons that are hostile."""

import json
import subprocess

import pytest
import torch

import meshckpt as mc
import meshckpt.torch as mt
from meshckpt import _C
from conftest import cli


def storage_ptr(t):
    return t.storage().data_ptr()


def inspect(path):
    r = subprocess.run([cli(), "inspect", "--json", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return {t["key"]: t for t in json.loads(r.stdout)["tensors"]}


def test_a_checkpointer_saves_numbered_steps_keeps_the_newest_and_loads_the_latest(tmp_path):
    w = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    state = {"model": {"w": w}, "epoch": 1}
    with mt.Checkpointer(tmp_path / "run", max_to_keep=2) as c:
        for step in (10, 20, 30):
            w.add_(1)
            state["epoch"] = step
            assert c.save(state, step) == str(tmp_path / "run" / f"ckpt-{step}")
        assert c.checkpoints == [str(tmp_path / "run" / "ckpt-20"), str(tmp_path / "run" / "ckpt-30")]
        out = c.load({})
        assert out["epoch"] == 30 and torch.equal(out["model"]["w"], w)
        older = c.load({}, str(tmp_path / "run" / "ckpt-20"))
        assert torch.equal(older["model"]["w"], w - 1)
    # The directory is released on close: another Checkpointer takes it and resumes.
    again = mt.Checkpointer(tmp_path / "run")
    target = {"model": {"w": torch.zeros(3, 4)}}
    again.load(target)
    assert torch.equal(target["model"]["w"], w)
    again.close()
    with pytest.raises(mc.InvalidArgumentError, match="closed"):
        again.save(state, 40)
    with pytest.raises(mc.NotFoundError, match="no checkpoint"):
        mt.Checkpointer(tmp_path / "empty").load({})


def test_a_checkpointer_keeps_its_bindings_while_the_state_stays_the_same(tmp_path):
    tree = _C.TorchState(mc.Mesh([("ranks", 1)]), 0, 1)
    w = torch.ones(4)
    calls = []
    assert tree.update({"w": w, "n": 1}, True, lambda: calls.append(1)) == "rebound"
    assert tree.update({"w": w, "n": 2}, True, lambda: calls.append(1)) == "same"  # a plain value changes nothing
    w2 = torch.zeros(4)
    assert tree.update({"w": w2, "n": 2}, True, lambda: calls.append(1)) == "rebound"  # new memory
    assert tree.update({"w": w2, "x": w}, True, None) == "rebound"  # an entry added
    assert tree.update({"x": w}, True, None) == "stale"  # an entry gone: a new tree is needed
    assert len(calls) == 2 and tree.bound == 2

    # Through the Checkpointer: a rebound parameter, a new entry and a removed one all land.
    p = torch.nn.Parameter(torch.ones(2, 2))
    with mt.Checkpointer(tmp_path / "c") as c:
        c.save({"p": p, "gone": torch.ones(1)}, 1)
        p.data = torch.full((2, 2), 7.0)  # new memory under the same key
        c.save({"p": p, "gone": torch.ones(1)}, 2)
        c.save({"p": p, "new": torch.arange(3)}, 3)
        assert torch.equal(c.load({})["p"], p.detach())
        last = c.load({})
        assert set(last) == {"p", "new"} and torch.equal(last["new"], torch.arange(3))
        assert c.save({"p": p}, None).endswith("ckpt-4")  # the save counter went on across the new tree
        assert torch.equal(c.load({}, str(tmp_path / "c" / "ckpt-2"))["p"], torch.full((2, 2), 7.0))


def test_async_save_returns_once_the_tensors_may_change(tmp_path):
    w = torch.full((256, 256), 3.0)
    with mt.Checkpointer(tmp_path / "a") as c:
        futures = []
        for step in range(1, 4):
            futures.append(c.async_save({"w": w, "step": step}, step))
            w.fill_(-1.0)  # after the call returns: not in the saved checkpoint
            w.fill_(3.0 + step)
        paths = [f.result() for f in futures]
        for step, path in enumerate(paths, start=1):
            out = mt.load({}, path)
            assert out["step"] == step and torch.equal(out["w"], torch.full((256, 256), 2.0 + step))
        lazy = c.save_lazy({"w": w}, 9)
        lazy.wait_snapshot()
        assert lazy.wait_committed().endswith("ckpt-9")


def test_tied_weights_are_saved_once_and_tied_after_load(tmp_path):
    emb = torch.nn.Embedding(50, 8)
    head = torch.nn.Linear(8, 50, bias=False)
    head.weight = emb.weight  # tied, as in language models
    model = torch.nn.ModuleDict({"emb": emb, "head": head})
    sd = model.state_dict()
    assert sd["emb.weight"].data_ptr() == sd["head.weight"].data_ptr()
    mt.save(sd, tmp_path / "t")
    tensors = inspect(tmp_path / "t")
    assert "emb..weight" in tensors and "head..weight" not in tensors  # one tensor, its bytes once (keys escape '.')
    out = mt.load({}, tmp_path / "t")
    assert out["emb.weight"].data_ptr() == out["head.weight"].data_ptr()
    assert torch.equal(out["head.weight"], emb.weight.detach())
    # Into a model that ties them too: in place, still tied.
    model2 = torch.nn.ModuleDict({"emb": torch.nn.Embedding(50, 8), "head": torch.nn.Linear(8, 50, bias=False)})
    model2["head"].weight = model2["emb"].weight
    mt.load(model2.state_dict(), tmp_path / "t")
    assert model2["head"].weight is model2["emb"].weight and torch.equal(model2["emb"].weight, emb.weight)
    # Into two separate tensors: both receive the values.
    a, b = torch.zeros(50, 8), torch.zeros(50, 8)
    mt.load({"emb.weight": a, "head.weight": b}, tmp_path / "t")
    assert torch.equal(a, emb.weight.detach()) and torch.equal(b, emb.weight.detach())
    with pytest.raises(mc.MismatchError, match="head.weight \\(a second key of emb.weight\\): saved float32\\[50, 8\\]"):
        mt.load({"emb.weight": a, "head.weight": torch.zeros(8)}, tmp_path / "t")


def test_views_of_one_storage_are_saved_once_and_share_it_after_load(tmp_path):
    base = torch.arange(24, dtype=torch.float32)
    sd = {"flat": base, "first": base[:6], "grid_t": base[:12].view(3, 4).t(), "tail": base[20:], "other": torch.ones(3)}
    mt.save(sd, tmp_path / "v")
    tensors = inspect(tmp_path / "v")
    storage = tensors["__meshckpt_storage__.S0"]  # keys escape '/' as ".S"
    assert storage["dtype"] == "uint8" and storage["shape"] == [96]
    assert not {"flat", "first", "grid_t", "tail"} & set(tensors) and "other" in tensors
    out = mt.load({}, tmp_path / "v")
    for k in ("flat", "first", "grid_t", "tail", "other"):
        assert torch.equal(out[k], sd[k]), k
    assert len({storage_ptr(out[k]) for k in ("flat", "first", "grid_t", "tail")}) == 1
    out["flat"][0] = 100.0  # one storage: a write through one view shows in the others
    assert out["first"][0] == 100.0 and out["grid_t"][0, 0] == 100.0
    # Into tensors the caller gives (separate ones): each receives its values.
    given = {k: torch.zeros_like(v) for k, v in sd.items()}
    mt.load(given, tmp_path / "v")
    for k in sd:
        assert torch.equal(given[k], sd[k]), k
    with pytest.raises(mc.MismatchError, match="first: saved float32"):
        mt.load({"first": torch.zeros(5)}, tmp_path / "v")


@pytest.mark.parametrize("dtype", [torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.float16,
                                   torch.bfloat16, torch.float32, torch.float64, torch.complex64, torch.complex128], ids=str)
def test_every_torch_dtype_round_trips(tmp_path, dtype):
    torch.manual_seed(0)
    t = (torch.randn(5, 3, dtype=torch.complex128) * 100).to(dtype) if dtype.is_complex else (torch.randn(5, 3) * 100).to(dtype)
    mt.save({"t": t, "scalar": t[0, 0].clone(), "empty": t[:0]}, tmp_path / "d")
    out = mt.load({}, tmp_path / "d")
    assert out["t"].dtype == dtype and torch.equal(out["t"], t)
    assert out["scalar"].shape == () and torch.equal(out["scalar"], t[0, 0])
    assert out["empty"].shape == (0, 3) and out["empty"].dtype == dtype


def test_complex_tensors_in_the_cli(tmp_path):
    z = torch.tensor([1 + 2j, 0.5 - 1j], dtype=torch.complex64)
    mt.save({"z": z, "zz": z.to(torch.complex128)}, tmp_path / "c")
    r = subprocess.run([cli(), "cat", str(tmp_path / "c"), "z"], capture_output=True, text=True)
    assert r.returncode == 0 and "1.+2.j" in r.stdout and "0.5-1.j" in r.stdout, r.stdout + r.stderr
    r = subprocess.run([cli(), "export", str(tmp_path / "c"), "--to", "safetensors", str(tmp_path / "c.safetensors"),
                        "--skip-unsupported"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert '"zz" (complex128)' in r.stderr
    raw = (tmp_path / "c.safetensors").read_bytes()
    header = json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])
    assert header["z"]["dtype"] == "C64" and "zz" not in header
    n = header["z"]["data_offsets"]
    data = raw[8 + int.from_bytes(raw[:8], "little"):]
    assert torch.equal(torch.frombuffer(bytearray(data[n[0]:n[1]]), dtype=torch.complex64), z)


def test_strided_channels_last_0d_and_empty_tensors(tmp_path):
    x = torch.randn(2, 3, 4, 5).contiguous(memory_format=torch.channels_last)
    sd = {"cl": x, "t": torch.randn(4, 6).t(), "step": torch.tensor(7), "none": torch.empty(0), "wide": torch.randn(3, 0, 2)}
    with mt.Checkpointer(tmp_path / "s") as c:
        c.save(sd, 1)
        x.mul_(2)  # a strided tensor's copy is refreshed at each save
        c.save(sd, 2)
        out = c.load({})
    assert torch.equal(out["cl"], x) and out["step"].shape == () and out["step"] == 7
    assert out["none"].shape == (0,) and out["wide"].shape == (3, 0, 2)
    target = {"cl": torch.zeros(2, 3, 4, 5).contiguous(memory_format=torch.channels_last), "t": torch.zeros(4, 6).t()}
    mt.load(target, tmp_path / "s" / "ckpt-2")
    assert torch.equal(target["cl"], x) and torch.equal(target["t"], sd["t"])
    assert target["cl"].is_contiguous(memory_format=torch.channels_last)


def hostile(tmp_path, name, state):
    """A checkpoint whose meshckpt.torch skeleton is `state`, beside a 16-byte storage."""
    root = mc.Module()
    root["__meshckpt_torch__"] = mc.Bytes(json.dumps({"format": 2, "state": state}).encode())
    root["__meshckpt_storage__/0"] = mc.Variable(torch.zeros(16, dtype=torch.uint8), mesh=mc.Mesh([("ranks", 1)]))
    mc.Checkpoint(mc.Mesh([("ranks", 1)]), root).write(str(tmp_path / name))
    return tmp_path / name


@pytest.mark.parametrize("state,why", [
    ({"view": "__meshckpt_storage__/0", "storage_bytes": 16, "offset": 8, "dtype": "float32", "shape": [4], "stride": [1]},
     "beyond its storage"),
    ({"view": "__meshckpt_storage__/0", "storage_bytes": 16, "offset": 0, "dtype": "float32", "shape": [2], "stride": [1 << 60]},
     "malformed view"),
    ({"view": "__meshckpt_storage__/0", "storage_bytes": 16, "offset": 2, "dtype": "float32", "shape": [1], "stride": [1]},
     "malformed view"),
    ({"tensor": "x", "dtype": "os.system", "shape": [1]}, "no dtype os.system"),
    ({"tensor": "x", "dtype": "float32", "shape": [-1]}, "negative dimension"),
    ({"dict": [["s", "a"]]}, "not \\[kind, key, value\\]"),
    ({"tensor": 3, "dtype": "float32", "shape": [1]}, "wrong type"),
    ([1, 2], "not an object"),
    ({"what": 1}, "no known kind"),
    ({"tensor": "x", "dtype": "float32", "shape": [1 << 40]}, "holds no tensor of that name"),
    ({"tensor": "__meshckpt_storage__/0", "dtype": "float32", "shape": [1 << 40]}, "the checkpoint holds uint8\\[16\\]"),
    ({"view": "__meshckpt_storage__/1", "storage_bytes": 1 << 40, "offset": 0, "dtype": "uint8", "shape": [1], "stride": [1]},
     "holds no tensor of that name"),
], ids=["beyond", "huge-stride", "misaligned", "dtype-name", "negative", "bad-item", "key-type", "list", "unknown", "absent",
        "other-shape", "absent-storage"])
def test_hostile_skeletons_are_refused_with_a_reason(tmp_path, state, why):
    """Checked before anything is allocated: a leaf claiming 2^40 elements is refused, not tried."""
    path = hostile(tmp_path, "h", state)
    with pytest.raises(mc.CorruptCheckpointError, match=why):
        mt.load({}, path)


def test_state_dicts_meshckpt_torch_cannot_hold_are_refused(tmp_path):
    with pytest.raises(mc.InvalidArgumentError, match="same path|two entries"):
        mt.save({"a/b": torch.ones(1), "a": {"b": torch.ones(1)}}, tmp_path / "x")
    with pytest.raises(mc.InvalidArgumentError, match="not a str or an int"):
        mt.save({(1, 2): torch.ones(1)}, tmp_path / "x")
    with pytest.raises(mc.InvalidArgumentError, match="quint8"):
        mt.save({"q": torch.quantize_per_tensor(torch.ones(2), 0.1, 0, torch.quint8)}, tmp_path / "x")
    deep = {}
    for _ in range(150):
        deep = {"d": deep}
    with pytest.raises(mc.InvalidArgumentError, match="100 levels"):
        mt.save(deep, tmp_path / "x")


def test_plain_values_round_trip_through_the_cpp_skeleton_reader(tmp_path):
    import math
    values = {"s": "héllo ✓ 😀 \"q\" \\ \n\t", "big": 2 ** 70, "neg": -3, "f": 0.1, "e": 1e-300, "nan": float("nan"),
              "inf": float("inf"), "ninf": float("-inf"), "t": True, "n": None, "nested": [1, (2, [3.5, "x"]), {"k": 1, 7: "seven"}],
              "tensors": (torch.ones(2), [torch.zeros(1)])}
    mt.save(values, tmp_path / "p")
    out = mt.load({}, tmp_path / "p")
    assert out["s"] == values["s"] and out["big"] == 2 ** 70 and out["neg"] == -3 and out["f"] == 0.1 and out["e"] == 1e-300
    assert math.isnan(out["nan"]) and out["inf"] == math.inf and out["ninf"] == -math.inf and out["t"] is True and out["n"] is None
    assert out["nested"] == [1, (2, [3.5, "x"]), {"k": 1, 7: "seven"}]
    assert isinstance(out["tensors"], tuple) and torch.equal(out["tensors"][1][0], torch.zeros(1))


@pytest.mark.parametrize("doc,why", [
    (b'{"format": 2, "state": {"dict": [', "not JSON at byte"),
    (b'{"format": 2, "state": {"value": "\\ud800"}}', "surrogate"),
    (b'{"format": 2, "state": {"value": 1}} x', "text after"),
    (b'{"format": 2, "state": {"value": tru}}', "not JSON"),
    (b'[' * 300 + b']' * 300, "nested too deeply"),
    (b'{"format": 3, "state": {}}', "format 3 is not supported"),
    (b'{"state": {}}', "format \\(none\\) is not supported"),
    (b'{"format": 2, "state": {"dict": [["i", "x", {"value": 1}]]}}', "dict key of the wrong type"),
], ids=["truncated", "lone-surrogate", "trailing", "bad-literal", "deep", "format", "no-format", "int-key"])
def test_malformed_skeleton_documents_are_refused(tmp_path, doc, why):
    """Unreadable documents are corrupt checkpoints; readable ones of another format, unsupported."""
    root = mc.Module()
    root["__meshckpt_torch__"] = mc.Bytes(doc)
    mc.Checkpoint(mc.Mesh([("ranks", 1)]), root).write(str(tmp_path / "m"))
    expected = mc.InvalidArgumentError if "is not supported" in why else mc.CorruptCheckpointError
    with pytest.raises(expected, match=why):
        mt.load({}, tmp_path / "m")
