"""Shards are the caller's memory: every dtype round trip (numpy and torch), zero copy in both
directions, and the arrays the library refuses."""

import numpy as np
import pytest
import torch

import meshckpt as mc
from conftest import pattern

NUMPY_DTYPES = [np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64,
                np.float16, np.float32, np.float64]
TORCH_DTYPES = [torch.bool, torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8, torch.float16,
                torch.bfloat16, torch.float32, torch.float64]


@pytest.mark.parametrize("dtype", NUMPY_DTYPES, ids=lambda d: np.dtype(d).name)
def test_every_numpy_dtype_round_trips_sharded(tmp_path, mesh_x2y2, dtype):
    whole = pattern((6, 5), dtype, 3)
    lay = mc.Layout(["x", "y"], mesh_x2y2)
    v = mc.Variable.zeros(whole.shape, np.dtype(dtype).name, lay)
    v.assign(whole)
    mc.Checkpoint(mesh_x2y2, v=v).write(tmp_path / "c")
    back = mc.Variable.zeros(whole.shape, np.dtype(dtype).name, mc.Layout(["y", "unsharded"], mesh_x2y2))
    mc.Checkpoint(mesh_x2y2, v=back).read(tmp_path / "c").assert_consumed()
    assert back.dtype == np.dtype(dtype).name
    np.testing.assert_array_equal(back.numpy(), whole)


@pytest.mark.parametrize("dtype", TORCH_DTYPES, ids=str)
def test_every_torch_dtype_round_trips_in_place(tmp_path, mesh1, dtype):
    g = torch.Generator().manual_seed(5)
    if dtype == torch.bool:
        t = torch.randint(0, 2, (7, 3), generator=g).bool()
    elif dtype.is_floating_point:
        t = torch.randn(7, 3, generator=g).to(dtype)
    else:
        t = torch.randint(0, 100, (7, 3), generator=g).to(dtype)
    mc.Checkpoint(mesh1, t=mc.Variable(t, mesh=mesh1)).write(tmp_path / "c")
    out = torch.zeros_like(t)
    address = out.data_ptr()
    mc.Checkpoint(mesh1, t=mc.Variable(out, mesh=mesh1)).read(tmp_path / "c").assert_consumed()
    assert out.data_ptr() == address and torch.equal(out, t)


def test_a_save_reads_the_callers_buffer_and_a_restore_writes_into_it(tmp_path, mesh1):
    arr = pattern((256, 1024), np.float32, 1)
    ten = torch.arange(4096, dtype=torch.bfloat16)
    va, vt = mc.Variable(arr, mesh=mesh1), mc.Variable(ten, mesh=mesh1)
    # The variables' shards are the callers' memory, not copies.
    assert va._shard_address(0) == arr.ctypes.data
    assert vt._shard_address(0) == ten.data_ptr()
    ckpt = mc.Checkpoint(mesh1, options=mc.CheckpointOptions(snapshot=False), a=va, t=vt)
    path = ckpt.write(tmp_path / "z")
    # What was saved is what those addresses held; a restore overwrites the same memory.
    saved_a, saved_t = arr.copy(), ten.clone()
    arr[:] = -1
    ten.zero_()
    ckpt.read(path).assert_consumed()
    assert va._shard_address(0) == arr.ctypes.data and vt._shard_address(0) == ten.data_ptr()
    np.testing.assert_array_equal(arr, saved_a)
    assert torch.equal(ten, saved_t)


def test_sharded_views_of_one_torch_tensor_are_shards_without_copies(tmp_path):
    mesh = mc.Mesh([("x", 2)])
    full = torch.arange(24, dtype=torch.float32).reshape(6, 4)
    lay = mc.Layout(["x", "unsharded"], mesh)
    v = mc.Variable.from_shards({0: full[:3], 1: full[3:]}, lay, [6, 4])
    assert v._shard_address(1) == full[3:].data_ptr()
    mc.Checkpoint(mesh, v=v).write(tmp_path / "s")
    out = torch.zeros(6, 4)
    mc.Checkpoint(mc.Mesh([("y", 1)]), v=mc.Variable(out, mesh=mc.Mesh([("y", 1)]))).read(tmp_path / "s").assert_consumed()
    assert torch.equal(out, full)


def test_arrays_that_cannot_be_shards_are_refused_with_a_reason(tmp_path, mesh1):
    with pytest.raises(ValueError, match="C-contiguous"):
        mc.Variable(np.zeros((4, 4), np.float32)[:, ::2], mesh=mesh1)
    with pytest.raises(ValueError, match="contiguous"):
        mc.Variable(torch.zeros(4, 4).t(), mesh=mesh1)
    ro = np.zeros(4, np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        mc.Variable(ro, mesh=mesh1)
    with pytest.raises(ValueError, match="no meshckpt dtype"):
        mc.Variable(np.zeros(4, np.longdouble), mesh=mesh1)
    with pytest.raises(ValueError, match="expected"):
        mc.Variable.from_shards({0: np.zeros(3, np.float32)}, mc.Layout(["x"], mesh1), [4])
    lay = mc.Layout(["x", "unsharded"], mc.Mesh([("x", 2)]))
    with pytest.raises(ValueError, match="from_shards"):
        mc.Variable(np.zeros((4, 4), np.float32), lay)


class _Device:
    def __init__(self, type, index):
        self.type, self.index = type, index

    def __str__(self):
        return f"{self.type}:{self.index}"


class _FakeDeviceTensor:
    """What the binding reads of a torch tensor, on a device this machine may not have."""
    __module__ = "torch.fake"

    def __init__(self, device_type):
        self.device = _Device(device_type, 0)
        self.dtype = torch.float32
        self.shape = (4, 4)

    def is_contiguous(self):
        return True

    def data_ptr(self):
        return 0x1000

    def numel(self):
        return 16


def test_torch_cuda_tensors_need_the_cuda_build_and_a_gpu_other_devices_are_refused(mesh1):
    if torch.cuda.is_available():
        v = mc.Variable(torch.arange(16.0, device="cuda").reshape(4, 4), mesh=mesh1)
        assert v.shape == [4, 4]
    else:
        # Without a GPU the binding must refuse a CUDA tensor (no CUDA build, or no device),
        # never read its pointer as host memory.
        with pytest.raises(mc.errors.UnsupportedError, match="CUDA"):
            mc.Variable(_FakeDeviceTensor("cuda"), mesh=mesh1)
    with pytest.raises(mc.errors.UnsupportedError, match="CPU and CUDA"):
        mc.Variable(_FakeDeviceTensor("mps"), mesh=mesh1)


def test_a_dropped_array_stays_alive_until_its_lazy_save_is_done(tmp_path, mesh1):
    ckpt = mc.Checkpoint(mesh1, options=mc.CheckpointOptions(snapshot=False),
                         v=mc.Variable(pattern((1 << 18,), np.int32, 2), mesh=mesh1))
    expect = ckpt.v.numpy()
    lazy = ckpt.write_lazy(tmp_path / "d")
    del ckpt  # the variable and its array go with it; the save holds the array
    path = lazy.wait_committed(60)
    out = np.zeros_like(expect)
    mc.Checkpoint(mesh1, v=mc.Variable(out, mesh=mesh1)).read(path).assert_consumed()
    np.testing.assert_array_equal(out, expect)
