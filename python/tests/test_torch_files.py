"""Reading what PyTorch wrote, without running it: torch.save files (written here by Debian's
torch) loaded by meshckpt.torch.load and read in place by the CLI, imported and exported, and
hostile files — malicious pickles (nothing runs), storages claiming 2^40 elements, missing and
damaged records — refused with errors that say what and where."""

import collections
import io
import json
import os
import pickle
import struct
import subprocess
import zipfile

import pytest
import torch

import meshckpt as mc
import meshckpt.torch as mt
from conftest import cli
from torch_dcp import import_dcp


def run(*args):
    return subprocess.run([cli(), *map(str, args)], capture_output=True, text=True)


def assert_same(ref, out, where="<root>"):
    """`out` equals `ref` as torch.load returned it: values, dtypes, shapes, strides, containers."""
    if isinstance(ref, torch.Tensor):
        assert isinstance(out, torch.Tensor), where
        assert out.dtype == ref.dtype and out.shape == ref.shape and out.stride() == ref.stride(), where
        assert torch.equal(out, ref), where
    elif isinstance(ref, dict):
        assert isinstance(out, dict) and list(out) == list(ref), where
        for k in ref:
            assert_same(ref[k], out[k], f"{where}.{k}")
    elif isinstance(ref, (list, tuple)):
        assert type(out) is type(ref) and len(out) == len(ref), where
        for i, (a, b) in enumerate(zip(ref, out)):
            assert_same(a, b, f"{where}.{i}")
    else:
        assert out == ref and type(out) is type(ref), where


def trainer_state():
    """A model with tied weights and buffers, and an Adam optimizer after one step."""
    torch.manual_seed(0)
    emb = torch.nn.Embedding(10, 4)
    head = torch.nn.Linear(4, 10, bias=False)
    head.weight = emb.weight  # tied
    model = torch.nn.Sequential(emb, torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4), head)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.tensor([1, 2, 3])).sum().backward()
    opt.step()
    return {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 3, "note": "run-7", "best": None}


def test_torch_save_files_load_as_torch_load_gives_them(tmp_path):
    state = trainer_state()
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    state["extra"] = {
        "t": base.t(),  # non-contiguous
        "row": base[1],  # a view at an offset
        "cl": torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5).to(memory_format=torch.channels_last),
        "empty": torch.zeros(0, 3),
        "scalar": torch.tensor(2.5, dtype=torch.float64),
        "dtypes": [torch.ones(3, dtype=d) for d in (torch.bool, torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64,
                                                     torch.float16, torch.bfloat16, torch.complex64, torch.complex128)],
    }
    path = tmp_path / "trainer.pt"
    torch.save(state, path)
    ref = torch.load(path)
    out = mt.load({}, path)
    assert_same(ref, out)
    # Tied weights and views share their storage again, as after torch.load.
    m = out["model"]
    assert m["0.weight"].data_ptr() == m["3.weight"].data_ptr()
    assert out["extra"]["row"].storage().data_ptr() == out["extra"]["t"].storage().data_ptr()


def test_a_torch_file_loads_into_the_given_tensors_in_place(tmp_path):
    model = torch.nn.Linear(3, 2)
    torch.save(model.state_dict(), tmp_path / "m.pt")
    fresh = torch.nn.Linear(3, 2)
    sd = fresh.state_dict()
    before = sd["weight"].data_ptr()
    mt.load(sd, tmp_path / "m.pt")
    assert sd["weight"].data_ptr() == before
    assert torch.equal(fresh.weight, model.weight) and torch.equal(fresh.bias, model.bias)
    # A mismatch is refused by name.
    with pytest.raises(mc.MismatchError, match="weight"):
        mt.load(torch.nn.Linear(4, 2).state_dict(), tmp_path / "m.pt")


def test_the_cli_reads_torch_files_in_place_and_imports_and_exports_them(tmp_path):
    state = trainer_state()
    pt = tmp_path / "trainer.pt"
    torch.save(state, pt)
    r = run("inspect", "--json", pt)
    assert r.returncode == 0, r.stderr
    keys = {t["key"]: t for t in json.loads(r.stdout)["tensors"]}
    assert keys["model.1.weight"]["dtype"] == "float32" and keys["model.1.weight"]["shape"] == [4, 4]
    assert keys["model.2.num_batches_tracked"]["dtype"] == "int64" and keys["model.2.num_batches_tracked"]["shape"] == []
    assert "model.3.weight" not in keys  # tied to model.0.weight: stored once
    assert "optimizer.state.0.exp_avg" in keys
    assert run("verify", pt).returncode == 0
    r = run("cat", "--json", pt, "model.1.bias")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["values"] == pytest.approx(state["model"]["1.bias"].tolist())
    # import, then load the import: the same state, sharing kept.
    r = run("import", pt, "--to", tmp_path / "imported")
    assert r.returncode == 0, r.stderr
    assert run("diff", pt, tmp_path / "imported").returncode == 1  # the import adds its skeleton entry
    out = mt.load({}, tmp_path / "imported")
    assert_same(torch.load(pt), out)
    assert out["model"]["0.weight"].data_ptr() == out["model"]["3.weight"].data_ptr()
    # The Checkpoint API restores the import by name.
    mesh = mc.Mesh([("x", 1)])
    w = torch.empty(4, 4)
    root = mc.Module()
    root["model.1.weight"] = mc.Variable(w, mesh=mesh)
    mc.Checkpoint(mesh, root).read(str(tmp_path / "imported")).expect_partial()
    assert torch.equal(w, state["model"]["1.weight"])
    # ... and the torch file itself, in place.
    w.zero_()
    mc.Checkpoint(mesh, root).read(str(pt)).expect_partial()
    assert torch.equal(w, state["model"]["1.weight"])
    # export --to torch: what torch.load(weights_only=True) loads, same keys, dtypes, bytes.
    r = run("export", tmp_path / "imported", "--to", "torch", tmp_path / "out.pt")
    assert r.returncode == 1 and "__meshckpt_torch__" in r.stderr and "--skip-unsupported" in r.stderr
    r = run("export", tmp_path / "imported", "--to", "torch", tmp_path / "out.pt", "--skip-unsupported")
    assert r.returncode == 0, r.stderr
    back = torch.load(tmp_path / "out.pt", weights_only=True)
    assert set(back) == set(keys)
    for k, t in back.items():
        assert t.dtype == getattr(torch, keys[k]["dtype"].replace("float8_e4m3", "float8_e4m3fn")) and list(t.shape) == keys[k]["shape"]
    assert torch.equal(back["model.1.weight"], state["model"]["1.weight"])
    assert torch.equal(back["optimizer.state.0.exp_avg_sq"], state["optimizer"]["state"][0]["exp_avg_sq"])
    # A meshckpt checkpoint exports too.
    mt.save({"w": torch.arange(5.0)}, tmp_path / "own")
    assert run("export", tmp_path / "own", "--to", "torch", tmp_path / "own.pt", "--skip-unsupported").returncode == 0
    assert torch.equal(torch.load(tmp_path / "own.pt", weights_only=True)["w"], torch.arange(5.0))


class Evil:
    """What a malicious checkpoint holds: unpickling it runs a command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickles_are_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"w": torch.ones(2), "payload": Evil(marker)}, tmp_path / "evil.pt")
    with pytest.raises(mc.CorruptCheckpointError, match=r"refuses the global (posix|os)\.system"):
        mt.load({}, tmp_path / "evil.pt")
    r = run("import", tmp_path / "evil.pt", "--to", tmp_path / "x")
    assert r.returncode == 1 and "system" in r.stderr
    r = run("inspect", tmp_path / "evil.pt")
    assert r.returncode == 1 and "system" in r.stderr
    assert not marker.exists()
    assert not (tmp_path / "x.manifest").exists()
    # A pickled module (torch.save(model)) names its class: refused, not imported.
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pt")
    with pytest.raises(mc.CorruptCheckpointError, match="torch.nn.modules.linear.Linear"):
        mt.load({}, tmp_path / "module.pt")


def write_pt(path, pkl, records, root="x"):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr(f"{root}/data.pkl", pkl)
        for name, data in records.items():
            z.writestr(f"{root}/data/{name}", data)
        z.writestr(f"{root}/version", "3\n")


class StorageRef:
    def __init__(self, numel):
        self.numel = numel


class TensorRef:
    def __init__(self, numel, size):
        self.numel, self.size = numel, size

    def __reduce__(self):
        return (torch._utils._rebuild_tensor_v2, (StorageRef(self.numel), 0, self.size, (1,), False, collections.OrderedDict()))


def hand_pickle(numel, size, legacy=None):
    """The pickle of {"w": a float32 tensor of `size` over a storage of `numel`}; `legacy`: the
    legacy format's storage id, with its view member (True: None)."""
    class P(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, StorageRef):
                pid = ("storage", torch.FloatStorage, "0", "cpu", obj.numel)
                return pid + ((None if legacy is True else legacy),) if legacy is not None else pid
            return None

    buf = io.BytesIO()
    P(buf, protocol=2).dump({"w": TensorRef(numel, size)})
    return buf.getvalue()


def test_sizes_and_records_are_checked_against_the_file_before_anything_is_allocated(tmp_path):
    # A storage that claims 2^40 elements (4 TiB) over a record of 16 bytes.
    write_pt(tmp_path / "huge.pt", hand_pickle(2**40, (2**40,)), {"0": b"\0" * 16})
    with pytest.raises(mc.CorruptCheckpointError, match="1099511627776 elements.*its record 16"):
        mt.load({}, tmp_path / "huge.pt")
    # A storage record that is missing.
    write_pt(tmp_path / "missing.pt", hand_pickle(4, (4,)), {})
    with pytest.raises(mc.CorruptCheckpointError, match="has no record x/data/0"):
        mt.load({}, tmp_path / "missing.pt")
    r = run("inspect", tmp_path / "missing.pt")
    assert r.returncode == 1 and "no record x/data/0" in r.stderr
    # The hand-made file is read when it is consistent (the root folder is not always "archive").
    write_pt(tmp_path / "ok.pt", hand_pickle(4, (4,)), {"0": torch.arange(4.0).numpy().tobytes()}, root="anything")
    assert torch.equal(mt.load({}, tmp_path / "ok.pt")["w"], torch.arange(4.0))


def test_a_damaged_storage_fails_its_crc_and_the_legacy_format_is_named(tmp_path):
    torch.save({"w": torch.arange(1000.0)}, tmp_path / "m.pt")
    raw = bytearray((tmp_path / "m.pt").read_bytes())
    at = raw.find(torch.arange(1000.0).numpy().tobytes()[400:416])
    raw[at] ^= 1
    (tmp_path / "m.pt").write_bytes(raw)
    with pytest.raises(mc.ChecksumMismatchError, match="CRC-32 mismatch.*tensor \"w\""):
        mt.load({}, tmp_path / "m.pt")
    r = run("verify", tmp_path / "m.pt")
    assert r.returncode != 0 and "CRC-32 mismatch" in r.stdout + r.stderr


def test_legacy_torch_save_files_are_read_in_place_imported_and_loaded(tmp_path):
    """torch.save's format before torch 1.6 (still what `_use_new_zipfile_serialization=False`
    writes, and what many published pytorch_model.bin files are): pickles, then raw storages."""
    state = trainer_state()
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    state["extra"] = {"t": base.t(), "row": base[1], "empty": torch.zeros(0, 3), "scalar": torch.tensor(7),
                      "dtypes": [torch.ones(3, dtype=d) for d in (torch.bool, torch.int8, torch.float16, torch.bfloat16, torch.complex128)]}
    path = tmp_path / "pytorch_model.bin"
    torch.save(state, path, _use_new_zipfile_serialization=False)
    assert not zipfile.is_zipfile(path)
    out = mt.load({}, path)
    assert_same(torch.load(path), out)
    assert out["model"]["0.weight"].data_ptr() == out["model"]["3.weight"].data_ptr()  # still tied
    assert out["extra"]["row"].storage().data_ptr() == out["extra"]["t"].storage().data_ptr()
    # Into given tensors, in place.
    model = torch.nn.Linear(3, 2)
    torch.save(model.state_dict(), tmp_path / "m.bin", _use_new_zipfile_serialization=False)
    fresh = torch.nn.Linear(3, 2)
    sd = fresh.state_dict()
    before = sd["weight"].data_ptr()
    mt.load(sd, tmp_path / "m.bin")
    assert sd["weight"].data_ptr() == before and torch.equal(fresh.weight, model.weight)
    # The CLI: read in place, said to hold no checksum; an import gains meshckpt's checksums.
    r = run("inspect", path)
    assert r.returncode == 0 and "torch.save (legacy" in r.stdout and "no checksums" in r.stdout, r.stdout + r.stderr
    r = run("verify", "--json", path)
    assert r.returncode == 0 and json.loads(r.stdout)["checkpoints"][0]["checksummed"] is False, r.stdout
    assert "no checksum" in run("verify", path).stdout
    assert run("import", path, "--to", tmp_path / "imported").returncode == 0
    r = run("verify", "--json", tmp_path / "imported")
    assert r.returncode == 0 and json.loads(r.stdout)["checkpoints"][0]["checksummed"] is True
    assert_same(torch.load(path), mt.load({}, tmp_path / "imported"))


def legacy_file(path, pkl, keys, records, little=True):
    """A legacy-format torch.save file of the state pickle `pkl`, storage `keys` and their
    (element count, bytes) records."""
    sys_info = {"protocol_version": 1001, "little_endian": little, "type_sizes": {"short": 2, "int": 4, "long": 4}}
    head = b"".join(pickle.dumps(x, protocol=2) for x in (0x1950a86a20f9469cfc6c, 1001, sys_info))
    body = pkl + pickle.dumps(keys, protocol=2) + b"".join(struct.pack("<q", n) + data for n, data in records)
    path.write_bytes(head + body)


def test_hostile_legacy_files_are_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"w": torch.ones(2), "payload": Evil(marker)}, tmp_path / "evil.bin", _use_new_zipfile_serialization=False)
    with pytest.raises(mc.CorruptCheckpointError, match=r"refuses the global (posix|os)\.system"):
        mt.load({}, tmp_path / "evil.bin")
    assert run("inspect", tmp_path / "evil.bin").returncode == 1 and not marker.exists()
    four = torch.arange(4.0).numpy().tobytes()
    legacy_file(tmp_path / "ok.bin", hand_pickle(4, (4,), legacy=True), ["0"], [(4, four)])
    assert torch.equal(mt.load({}, tmp_path / "ok.bin")["w"], torch.arange(4.0))
    # A storage whose record counts other elements than the state says.
    legacy_file(tmp_path / "count.bin", hand_pickle(4, (4,), legacy=True), ["0"], [(3, four)])
    with pytest.raises(mc.CorruptCheckpointError, match="4 elements by the state, 3 by its record"):
        mt.load({}, tmp_path / "count.bin")
    # 2^40 elements claimed over 16 bytes: an error, no allocation.
    legacy_file(tmp_path / "huge.bin", hand_pickle(2**40, (2**40,), legacy=True), ["0"], [(2**40, four)])
    with pytest.raises(mc.CorruptCheckpointError, match="past the end"):
        mt.load({}, tmp_path / "huge.bin")
    # Cut short: in the storages, and in the pickles.
    raw = (tmp_path / "ok.bin").read_bytes()
    (tmp_path / "short.bin").write_bytes(raw[:-3])
    with pytest.raises(mc.CorruptCheckpointError, match="past the end"):
        mt.load({}, tmp_path / "short.bin")
    (tmp_path / "cut.bin").write_bytes(raw[:60])
    with pytest.raises(mc.CorruptCheckpointError, match="ends without a STOP|past the end of the input"):
        mt.load({}, tmp_path / "cut.bin")
    # Storages the keys do not list, or list twice; a big-endian writer; a storage view.
    legacy_file(tmp_path / "unlisted.bin", hand_pickle(4, (4,), legacy=True), [], [])
    with pytest.raises(mc.CorruptCheckpointError, match="do not list"):
        mt.load({}, tmp_path / "unlisted.bin")
    legacy_file(tmp_path / "twice.bin", hand_pickle(4, (4,), legacy=True), ["0", "0"], [(4, four), (4, four)])
    with pytest.raises(mc.CorruptCheckpointError, match="listed twice"):
        mt.load({}, tmp_path / "twice.bin")
    legacy_file(tmp_path / "big.bin", hand_pickle(4, (4,), legacy=True), ["0"], [(4, four)], little=False)
    with pytest.raises(mc.UnsupportedError, match="big-endian"):
        mt.load({}, tmp_path / "big.bin")
    legacy_file(tmp_path / "view.bin", hand_pickle(4, (4,), legacy=("0", 0, 16)), ["0"], [(4, four)])
    with pytest.raises(mc.UnsupportedError, match="a view of a storage"):
        mt.load({}, tmp_path / "view.bin")


def dcp_module():
    return import_dcp()[0]


def test_dcp_directories_written_by_torch_are_read_in_place_imported_and_loaded(tmp_path):
    dcp = dcp_module()
    state = {"w": torch.arange(12.0).reshape(3, 4), "b": torch.ones(3, dtype=torch.bfloat16), "step": 5,
             "opt": {"lr": 0.1, "m": torch.full((2,), 7.0)}}
    dcp.save_state_dict(state, dcp.FileSystemWriter(str(tmp_path / "run")), no_dist=True)
    out = mt.load({}, tmp_path / "run")
    assert torch.equal(out["w"], state["w"]) and out["b"].dtype == torch.bfloat16 and out["step"] == 5
    assert out["opt"]["lr"] == 0.1 and torch.equal(out["opt"]["m"], state["opt"]["m"])
    r = run("inspect", "--json", tmp_path / "run")
    assert r.returncode == 0, r.stderr
    keys = {t["key"]: t for t in json.loads(r.stdout)["tensors"]}
    assert keys["w"]["shape"] == [3, 4] and keys["opt.m"]["dtype"] == "float32"
    assert run("verify", tmp_path / "run").returncode == 0
    r = run("import", tmp_path / "run", "--to", tmp_path / "imported")
    assert r.returncode == 0, r.stderr
    back = mt.load({}, tmp_path / "imported")
    assert torch.equal(back["w"], state["w"]) and back["step"] == 5
    # A damaged chunk fails its CRC-32; a missing .distcp file is named.
    victim = sorted(p for p in (tmp_path / "run").iterdir() if p.suffix == ".distcp")[0]
    raw = bytearray(victim.read_bytes())
    raw[-200] ^= 0xFF  # inside the central directory or data: some check fails
    victim.write_bytes(raw)
    with pytest.raises(mc.MeshckptError):
        mt.load({}, tmp_path / "run")
    victim.unlink()
    with pytest.raises(mc.NotFoundError, match=victim.name):
        mt.load({}, tmp_path / "run")
    # ... by every reader: the checkpoint is there, a file of it is not (not "no checkpoint").
    for args in (("verify", tmp_path / "run"), ("import", tmp_path / "run", "--to", tmp_path / "again"),
                 ("cat", tmp_path / "run", "w")):
        r = run(*args)
        assert r.returncode != 0 and victim.name in r.stdout + r.stderr, (args, r.stdout, r.stderr)
    with pytest.raises(mc.NotFoundError, match=victim.name):
        mc.Checkpoint(mc.Mesh([("x", 1)]), mt.StateModule()).read(str(tmp_path / "run"))


def test_dcp_metadata_under_torch_2_names_is_read_and_hostile_metadata_refused(tmp_path):
    dcp = dcp_module()
    dcp.save_state_dict({"w": torch.arange(4.0)}, dcp.FileSystemWriter(str(tmp_path / "run")), no_dist=True)
    meta = (tmp_path / "run" / ".metadata").read_bytes()

    def rename(data, old, new):
        o, n = old.encode(), new.encode()
        data = data.replace(b"\x8c" + bytes([len(o)]) + o, b"\x8c" + bytes([len(n)]) + n)
        assert data[2] == 0x95  # one FRAME (a small pickle): its length follows the edit
        return data[:3] + (len(data) - 11).to_bytes(8, "little") + data[11:]

    # torch 2.x writes the same records under torch.distributed.checkpoint.
    v2 = rename(meta, "torch.distributed._shard.checkpoint.metadata", "torch.distributed.checkpoint.metadata")
    v2 = rename(v2, "torch.distributed._shard.checkpoint.filesystem", "torch.distributed.checkpoint.filesystem")
    v2 = rename(v2, "torch.distributed._shard.sharded_tensor.metadata", "torch.distributed.checkpoint.metadata")
    assert v2 != meta and b"_shard" not in v2
    (tmp_path / "run" / ".metadata").write_bytes(v2)
    assert torch.equal(mt.load({}, tmp_path / "run")["w"], torch.arange(4.0))
    # getattr of anything but the enum's members is refused: a way from an allowed class to os.
    (tmp_path / "run" / ".metadata").write_bytes(rename(meta, "TORCH_CONTIGUOUS_FORMAT", "__class__"))
    with pytest.raises(mc.CorruptCheckpointError, match="getattr"):
        mt.load({}, tmp_path / "run")
    (tmp_path / "run" / ".metadata").write_bytes(rename(meta, "torch.distributed._shard.checkpoint.metadata", "os"))
    with pytest.raises(mc.CorruptCheckpointError, match=r"refuses the global os\.Metadata"):
        mt.load({}, tmp_path / "run")


@pytest.mark.parametrize("world", [2, 4])
def test_dcp_of_a_sharded_tensor_from_several_ranks_loads_whole(tmp_path, world):
    import random
    import sys
    helper = os.path.join(os.path.dirname(__file__), "dcp_sharded.py")
    r = subprocess.run([sys.executable, helper, str(tmp_path / "run"), str(world), str(random.randint(20000, 40000))],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert any(p.name.startswith(f"__{world - 1}_") for p in (tmp_path / "run").iterdir())  # the last rank wrote its chunk
    rows = 4 * world + 1
    out = mt.load({}, tmp_path / "run")
    assert torch.equal(out["emb"], torch.arange(rows * 3, dtype=torch.float32).reshape(rows, 3))
    assert torch.equal(out["bias"], torch.arange(5.0)) and out["step"] == 9
    r = run("inspect", "--json", tmp_path / "run")
    emb = next(t for t in json.loads(r.stdout)["tensors"] if t["key"] == "emb")
    assert emb["shape"] == [rows, 3] and emb["slices"] == world


def gloo(mode, d, world):
    import random
    import sys
    helper = os.path.join(os.path.dirname(__file__), "gloo_ranks.py")
    r = subprocess.run([sys.executable, helper, mode, str(d), str(world), str(random.randint(20000, 40000))],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]


@pytest.mark.parametrize("saved, loaded", [(4, 2), (2, 4)])
def test_torchrun_style_jobs_save_over_gloo_and_load_on_another_world_size(tmp_path, saved, loaded):
    gloo("save", tmp_path, saved)
    # Rows of each tensor were spread over the ranks: one slice per rank.
    r = run("inspect", "--json", tmp_path / "one")
    w = next(t for t in json.loads(r.stdout)["tensors"] if t["key"].endswith("w"))
    assert w["slices"] == saved
    assert run("verify", tmp_path / "run").returncode == 0
    gloo("load", tmp_path, loaded)
    # ... and onto one process, without torch.distributed.
    out = mt.load({}, tmp_path / "one")
    assert torch.equal(out["model"]["w"], torch.arange(40, dtype=torch.float32).reshape(8, 5) + 1)


@pytest.mark.parametrize("saved, loaded", [(4, 2), (2, 4)])
def test_sharded_tensors_are_saved_as_the_global_tensor_and_load_onto_another_sharding(tmp_path, saved, loaded):
    gloo("sharded-save", tmp_path, saved)
    # Each ShardedTensor is one tensor of its global shape, split as its shards were: each rank
    # wrote its own chunk (by rows, by columns), the replicated tensor's rows were spread.
    tensors = {t["key"]: t for t in json.loads(run("inspect", "--json", tmp_path / "sharded").stdout)["tensors"]}
    assert tensors["emb"]["shape"] == [17, 3] and tensors["emb"]["slices"] == saved
    assert tensors["proj"]["shape"] == [3, 10] and tensors["proj"]["slices"] == saved
    assert tensors["emb"]["layout"] == ["ranks", "unsharded"] and tensors["proj"]["layout"] == ["unsharded", "ranks"]
    assert tensors["bias"]["slices"] == saved
    assert len([f for f in os.listdir(tmp_path) if f.startswith("sharded.data-")]) == saved
    assert run("verify", tmp_path / "shardrun").returncode == 0
    assert not (tmp_path / "refused").exists()
    gloo("sharded-load", tmp_path, loaded)
    # One process, no torch.distributed: a full state dict.
    out = mt.load({}, tmp_path / "sharded")
    assert torch.equal(out["emb"], torch.arange(51.0).reshape(17, 3) + 1)
    assert torch.equal(out["proj"], torch.arange(30.0).reshape(3, 10) + 1) and out["step"] == 1


def test_the_store_coordinator_keeps_rounds_when_a_rank_is_late():
    """Two ranks on threads over one in-process store (torch.distributed.HashStore): the
    collectives meet; a rank that skips a gather makes rank 0 time out naming it, its late
    contribution goes to the round given up, and both meet again at the next round."""
    import threading
    import torch.distributed as dist
    from meshckpt import _C
    store = dist.HashStore()
    ranks = [_C.store_coordinator(store, r, 2, "t") for r in range(2)]
    results, errors = {}, []

    def rank(r, skip_first_gather):
        c = ranks[r]
        try:
            results[(r, "bcast")] = c.broadcast(b"from 0" if r == 0 else b"", 5)
            c.barrier(5)
            if r == 0:
                with pytest.raises(mc.TimedOutError, match="rank\\(s\\) 1 of 2"):
                    c.gather(b"zero", 0.3)
            elif not skip_first_gather:
                c.gather(b"one", 5)
            c.barrier(5)  # rank 1 comes here late, once rank 0 gave up
            if r == 1:
                c.gather(b"late", 5)  # the round rank 0 gave up: dropped
            results[(r, "gather")] = c.gather(b"r%d" % r, 5)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=rank, args=(r, True)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    assert results[(1, "bcast")] == b"from 0"
    assert results[(0, "gather")] == [b"r0", b"r1"] and results[(1, "gather")] == []


def test_a_directory_that_is_no_checkpoint_is_still_not_found(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    with pytest.raises(mc.NotFoundError, match="not found"):
        mc.Checkpoint(mc.Mesh([("x", 1)]), mc.Module()).read(str(tmp_path / "d"))
    r = run("cat", tmp_path / "d", "x")
    assert r.returncode == 1 and "not found" in r.stderr
