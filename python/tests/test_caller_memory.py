"""Every restore lands in the caller's own memory, or raises: never a hidden copy that leaves the
caller's tensor as it was (a transposed view, a slice, channels_last, a read-only or
non-contiguous numpy array, views sharing one storage)."""

import numpy as np
import pytest
import torch

import meshckpt as mc
import meshckpt.torch as mt


def saved(tmp_path, sd):
    mt.save(sd, tmp_path / "t")
    return tmp_path / "t"


@pytest.mark.parametrize("make", [
    lambda: torch.zeros(3, 4).t(),                                   # transposed view
    lambda: torch.zeros(4, 6)[:, 1:5],                               # column slice
    lambda: torch.zeros(4, 4)[::2],                                  # strided rows
    lambda: torch.zeros(2, 3, 4, 5).to(memory_format=torch.channels_last),
], ids=["transposed", "column-slice", "strided-rows", "channels-last"])
def test_load_fills_a_non_contiguous_tensor_in_place(tmp_path, make):
    target = make()
    assert not target.is_contiguous()
    want = torch.arange(target.numel(), dtype=torch.float32).reshape(target.shape) + 1
    path = saved(tmp_path, {"w": want})
    ptr = target.data_ptr()
    sd = {"w": target}
    mt.load(sd, path)
    assert sd["w"] is target and target.data_ptr() == ptr
    assert torch.equal(target, want)


def test_load_into_a_view_fills_the_base_tensor(tmp_path):
    base = torch.zeros(4, 6)
    view = base[1:3, 2:5]  # non-contiguous window of `base`
    want = torch.full((2, 3), 7.0)
    mt.load({"w": view}, saved(tmp_path, {"w": want}))
    assert torch.equal(base[1:3, 2:5], want)
    assert base.sum().item() == 6 * 7.0  # nothing outside the window


def test_tied_weights_stay_one_storage_after_load(tmp_path):
    emb = torch.arange(12.0).reshape(4, 3)
    path = saved(tmp_path, {"embed": emb, "head": emb, "head_t": emb.t()})
    shared = torch.zeros(4, 3)
    sd = {"embed": shared, "head": shared, "head_t": shared.t()}
    mt.load(sd, path)
    assert sd["embed"] is shared and sd["head"] is shared
    assert sd["head_t"].data_ptr() == shared.data_ptr()
    assert torch.equal(shared, emb)


def test_load_into_an_expanded_tensor_raises_and_changes_nothing(tmp_path):
    path = saved(tmp_path, {"w": torch.ones(3, 4)})
    row = torch.zeros(1, 4)
    target = row.expand(3, 4)  # three rows sharing one memory row
    with pytest.raises(mc.InvalidArgumentError, match="share memory"):
        mt.load({"w": target}, path)
    assert torch.equal(row, torch.zeros(1, 4))


def test_a_state_module_restores_into_non_contiguous_tensors(tmp_path):
    src = {"w": torch.arange(12.0).reshape(3, 4)}
    module = mt.StateModule().update(src)
    module.checkpoint().write(str(tmp_path / "sm"))
    target = torch.zeros(4, 3).t()
    back = mt.StateModule().update({"w": target})
    back.checkpoint().read(str(tmp_path / "sm")).assert_existing_objects_matched()
    assert torch.equal(target, src["w"])


def test_numpy_arrays_that_cannot_receive_a_restore_are_refused(tmp_path):
    mesh = mc.Mesh([("x", 1)])
    layout = mc.Layout.replicated(2, mesh)
    ro = np.zeros((2, 3), dtype=np.float32)
    ro.setflags(write=False)
    strided = np.zeros((3, 4), dtype=np.float32)[:, ::2]
    fortran = np.asfortranarray(np.zeros((2, 3), dtype=np.float32))
    for bad in (ro, strided, fortran):
        with pytest.raises(mc.InvalidArgumentError):
            mc.Variable.from_shards({0: bad}, layout, bad.shape)
    v = mc.Variable.from_shards({0: np.arange(6, dtype=np.float32).reshape(2, 3)}, layout, (2, 3))
    for bad in (ro, np.zeros((3, 2), dtype=np.float32).T):
        with pytest.raises(mc.InvalidArgumentError):
            v.read_into(bad)
    out = np.zeros((2, 3), dtype=np.float32)
    v.read_into(out)
    assert (out == np.arange(6).reshape(2, 3)).all()


def test_variable_from_a_non_contiguous_torch_tensor_is_refused():
    mesh = mc.Mesh([("x", 1)])
    with pytest.raises(mc.InvalidArgumentError, match="not contiguous"):
        mc.Variable.from_shards({0: torch.zeros(3, 4).t()}, mc.Layout.replicated(2, mesh), (4, 3))


def test_variable_restore_fills_the_callers_array(tmp_path):
    mesh = mc.Mesh([("x", 1)])
    src = mc.Module()
    src["w"] = mc.Variable(np.arange(6, dtype=np.float32).reshape(2, 3), mesh=mesh)
    mc.Checkpoint(mesh, src).write(str(tmp_path / "v"))
    mine = np.zeros((2, 3), dtype=np.float32)
    dst = mc.Module()
    dst["w"] = mc.Variable(mine, mesh=mesh)
    mc.Checkpoint(mesh, dst).read(str(tmp_path / "v")).assert_consumed()
    assert (mine == np.arange(6).reshape(2, 3)).all()
