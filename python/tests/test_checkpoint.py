"""Checkpoint, load status, deferred restoration, the manager, resharding: the semantics of
tf.train.Checkpoint / CheckpointManager through the Python API."""

import os
import subprocess

import numpy as np
import pytest

import meshckpt as mc
from conftest import cli, pattern


def model_on(mesh, seed=0):
    root = mc.Module()
    root.dense = mc.Module()
    root.dense.kernel = mc.Variable(pattern((8, 4), np.float32, seed), mesh=mesh)
    root.dense.bias = mc.Variable(pattern((4,), np.float32, seed + 1), mesh=mesh)
    root.step = mc.Variable(np.array(seed, dtype=np.int64), mesh=mesh)
    return root


def test_save_numbers_prefixes_and_restore_brings_values_back(tmp_path, mesh1):
    m = model_on(mesh1, 1)
    ckpt = mc.Checkpoint(mesh1, model=m)
    assert ckpt.save_counter == 0
    p1 = ckpt.save(tmp_path / "ckpt")
    p2 = ckpt.save(tmp_path / "ckpt")
    assert (p1, p2) == (str(tmp_path / "ckpt-1"), str(tmp_path / "ckpt-2"))
    assert ckpt.save_counter == 2
    assert (tmp_path / "checkpoint").exists()

    m2 = model_on(mesh1, 7)
    ckpt2 = mc.Checkpoint(mesh1, model=m2)
    status = ckpt2.restore(p1)
    status.assert_consumed().assert_existing_objects_matched().assert_nontrivial_match()
    assert ckpt2.save_counter == 1
    for a, b in [(m.dense.kernel, m2.dense.kernel), (m.dense.bias, m2.dense.bias), (m.step, m2.step)]:
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_write_and_read_leave_the_counter_alone(tmp_path, mesh1):
    ckpt = mc.Checkpoint(mesh1, model=model_on(mesh1))
    assert ckpt.write(tmp_path / "w") == str(tmp_path / "w")
    assert not (tmp_path / "checkpoint").exists()
    other = mc.Checkpoint(mesh1, model=model_on(mesh1, 3))
    other.read(tmp_path / "w").assert_consumed()
    assert other.save_counter == 0


def test_restore_none_gives_an_initialization_status(mesh1):
    status = mc.Checkpoint(mesh1, model=model_on(mesh1)).restore(None)
    with pytest.raises(AssertionError, match="no checkpoint specified"):
        status.assert_consumed()


def test_assertions_name_what_did_not_match(tmp_path, mesh1):
    m = model_on(mesh1)
    mc.Checkpoint(mesh1, model=m).write(tmp_path / "w")
    partial = mc.Module()
    partial.dense = mc.Module()
    partial.dense.kernel = mc.Variable(np.zeros((8, 4), np.float32), mesh=mesh1)
    status = mc.Checkpoint(mesh1, model=partial).read(tmp_path / "w")
    status.assert_existing_objects_matched()
    with pytest.raises(AssertionError):
        status.assert_consumed()
    assert any("bias" in k for k in status.unused_keys)
    status.expect_partial()

    extra = model_on(mesh1)
    extra.more = mc.Variable(np.zeros(3, np.float32), mesh=mesh1)
    status = mc.Checkpoint(mesh1, model=extra).read(tmp_path / "w")
    with pytest.raises(AssertionError):
        status.assert_existing_objects_matched()
    assert any("more" in o for o in status.unrestored_objects)
    status.expect_partial()


def test_deferred_restoration_fills_a_child_tracked_after_the_restore(tmp_path, mesh1):
    m = model_on(mesh1, 5)
    mc.Checkpoint(mesh1, model=m).write(tmp_path / "w")
    late = mc.Module()
    late.dense = mc.Module()
    status = mc.Checkpoint(mesh1, model=late).read(tmp_path / "w")
    kernel = np.zeros((8, 4), np.float32)
    late.dense.kernel = mc.Variable(kernel, mesh=mesh1)  # restored now, in place
    np.testing.assert_array_equal(kernel, m.dense.kernel.numpy())
    status.expect_partial()


def test_children_must_be_trackable_and_attributes_reach_them(mesh1):
    with pytest.raises(ValueError, match="child 'x' is not a trackable object"):
        mc.Checkpoint(mesh1, x=np.zeros(3))
    m = model_on(mesh1)
    assert mc.Checkpoint(mesh1, model=m).model is m


def test_resharding_from_one_layout_to_another_and_to_one_device(tmp_path):
    saved_mesh = mc.Mesh([("x", 2), ("y", 2)])
    whole = pattern((6, 10), np.float64, 9)
    v = mc.Variable.zeros(whole.shape, "float64", mc.Layout(["x", "y"], saved_mesh))
    v.assign(whole)
    mc.Checkpoint(saved_mesh, v=v).write(tmp_path / "s")

    for mesh, specs in [(mc.Mesh([("a", 4)]), ["unsharded", "a"]), (mc.Mesh([("a", 3)]), ["a", "unsharded"]),
                        (mc.Mesh([("one", 1)]), ["unsharded", "unsharded"])]:
        target = mc.Variable.zeros(whole.shape, "float64", mc.Layout(specs, mesh))
        mc.Checkpoint(mesh, v=target).read(tmp_path / "s").assert_consumed()
        np.testing.assert_array_equal(target.numpy(), whole)


def test_shards_from_caller_arrays_and_whole_array_helpers(mesh_x2y2):
    lay = mc.Layout(["x", "unsharded"], mesh_x2y2)
    shards = {d: np.full((2, 3), d, np.int32) for d in mesh_x2y2.device_ids}
    v = mc.Variable.from_shards(shards, lay, [4, 3])
    assert v.shard(2) is shards[2]
    np.testing.assert_array_equal(v.numpy(), np.repeat([[0], [2]], [2, 2], axis=0).repeat(3, axis=1))
    whole = np.arange(12, dtype=np.int32).reshape(4, 3)
    v.assign(whole)
    np.testing.assert_array_equal(shards[1], whole[:2])
    np.testing.assert_array_equal(shards[3], whole[2:])
    out = np.empty_like(whole)
    v.read_into(out)
    np.testing.assert_array_equal(out, whole)
    with pytest.raises(ValueError, match="shape"):
        v.assign(np.zeros((3, 3), np.int32))


def test_manager_keeps_the_newest_and_restores_or_initializes(tmp_path, mesh1):
    m = model_on(mesh1)
    ckpt = mc.Checkpoint(mesh1, model=m)
    inits = []
    mgr = mc.CheckpointManager(ckpt, tmp_path / "run", max_to_keep=2, init_fn=lambda: inits.append(1))
    assert mgr.restore_or_initialize() is None and inits == [1]
    paths = [mgr.save() for _ in range(4)]
    assert mgr.checkpoints == paths[2:]
    assert mgr.latest_checkpoint == paths[3]
    assert not os.path.exists(paths[0] + ".manifest")
    del mgr

    fresh = mc.Checkpoint(mesh1, model=model_on(mesh1, 3))
    mgr2 = mc.CheckpointManager(fresh, tmp_path / "run", max_to_keep=2)
    assert mgr2.restore_or_initialize() == paths[3]
    assert fresh.save_counter == 4


def test_manager_interval_skips_steps(tmp_path, mesh1):
    step = [0]
    ckpt = mc.Checkpoint(mesh1, model=model_on(mesh1))
    mgr = mc.CheckpointManager(ckpt, tmp_path / "i", step_counter=lambda: step[0], checkpoint_interval=10)
    saved = []
    for s in range(0, 35, 5):
        step[0] = s
        saved.append(mgr.save() is not None)
    assert saved == [True, False, True, False, True, False, True]
    assert mgr.save(check_interval=False) is None  # the step has not advanced: saved once
    step[0] = 31
    assert mgr.save(check_interval=False) is not None


def test_errors_are_python_exceptions_with_the_library_message(tmp_path, mesh1):
    with pytest.raises(ValueError, match="unsharded"):
        mc.Mesh([("unsharded", 2)])
    with pytest.raises(mc.InvalidArgumentError):
        mc.Layout(["nope"], mesh1)
    ckpt = mc.Checkpoint(mesh1, model=model_on(mesh1))
    with pytest.raises(FileNotFoundError) as e:
        ckpt.restore(tmp_path / "missing-1")
    assert isinstance(e.value, mc.NotFoundError) and "not found" in str(e.value)

    ckpt.write(tmp_path / "w")
    wrong = mc.Module()
    wrong.dense = mc.Module()
    wrong.dense.kernel = mc.Variable(np.zeros((4, 8), np.float32), mesh=mesh1)
    with pytest.raises(mc.MismatchError, match="shape"):
        mc.Checkpoint(mesh1, model=wrong).read(tmp_path / "w")

    data = [f for f in os.listdir(tmp_path) if ".data-" in f][0]
    with open(tmp_path / data, "r+b") as f:
        b = f.read(1)
        f.seek(0)
        f.write(bytes([b[0] ^ 0xFF]))
    with pytest.raises(mc.ChecksumMismatchError, match="checksum"):
        mc.Checkpoint(mesh1, model=model_on(mesh1)).read(tmp_path / "w")


def test_async_saves_are_futures_and_awaitable(tmp_path, mesh1):
    import asyncio
    import concurrent.futures

    ckpt = mc.Checkpoint(mesh1, model=model_on(mesh1))
    f = ckpt.save_async(tmp_path / "a")
    assert isinstance(f, concurrent.futures.Future)
    assert f.result(timeout=60) == str(tmp_path / "a-1")

    async def main():
        p = await asyncio.wrap_future(ckpt.save_async(tmp_path / "a"))
        lazy = ckpt.save_lazy(tmp_path / "a")
        await asyncio.wrap_future(lazy.snapshot)
        q = await lazy
        status = await asyncio.wrap_future(ckpt.restore_async(q))
        return p, q, status

    p, q, status = asyncio.run(main())
    assert (p, q) == (str(tmp_path / "a-2"), str(tmp_path / "a-3"))
    status.assert_consumed()


def test_a_lazy_save_lets_the_caller_change_tensors_after_the_snapshot(tmp_path, mesh1):
    big = pattern((1 << 20,), np.float32, 4)
    keep = big.copy()
    ckpt = mc.Checkpoint(mesh1, v=mc.Variable(big, mesh=mesh1))
    lazy = ckpt.save_lazy(tmp_path / "l")
    lazy.wait_snapshot(60)
    big[:] = 0  # the save wrote (or will write) the snapshot, not this
    path = lazy.wait_committed(60)
    out = np.empty_like(keep)
    mc.Checkpoint(mesh1, v=mc.Variable(out, mesh=mesh1)).restore(path).assert_consumed()
    np.testing.assert_array_equal(out, keep)


def test_a_failed_async_save_raises_from_its_future(tmp_path, mesh1):
    (tmp_path / "file").write_text("not a directory")
    ckpt = mc.Checkpoint(mesh1, model=model_on(mesh1))
    with pytest.raises(mc.MeshckptError):
        ckpt.save_async(tmp_path / "file" / "ckpt").result(60)


@pytest.mark.skipif(not cli(), reason="needs the meshckpt CLI")
def test_the_cli_verifies_and_lists_what_python_saved(tmp_path, mesh1):
    path = mc.Checkpoint(mesh1, model=model_on(mesh1)).save(tmp_path / "c")
    r = subprocess.run([cli(), "verify", path], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run([cli(), "inspect", path], capture_output=True, text=True)
    assert "dense" in r.stdout and "kernel" in r.stdout


def test_an_exception_in_a_python_callback_reaches_the_caller(tmp_path, mesh1):
    def boom():
        raise RuntimeError("no step counter today")

    ckpt = mc.Checkpoint(mesh1, model=model_on(mesh1))
    mgr = mc.CheckpointManager(ckpt, tmp_path / "a", step_counter=boom, checkpoint_interval=5)
    with pytest.raises(RuntimeError, match="no step counter today"):
        mgr.save()
    with pytest.raises(RuntimeError, match="no step counter today"):
        mgr.save_async()
    init = mc.CheckpointManager(ckpt, tmp_path / "b", init_fn=boom)
    with pytest.raises(RuntimeError, match="no step counter today"):
        init.restore_or_initialize()
    # Nothing was written, and the checkpoint still saves.
    assert not any(f.endswith(".manifest") for f in os.listdir(tmp_path / "a"))
    assert init.save() == str(tmp_path / "b" / "ckpt-1")


def test_variables_are_the_type_they_say(mesh1, mesh_x2y2):
    """mc.Variable is the type of every variable, whichever constructor made it."""
    made = [
        mc.Variable(np.zeros((2, 3), np.float32), mesh=mesh1),
        mc.Variable.zeros([4, 4], "float32", mc.Layout(["x", "y"], mesh_x2y2)),
        mc.Variable.from_shards({0: np.ones((2, 2), np.float64)}, mc.Layout.replicated(2, mesh1), (2, 2)),
    ]
    for v in made:
        assert type(v) is mc.Variable
        assert isinstance(v, mc.Variable) and isinstance(v, mc.Trackable)
    assert mc.Variable.__module__ == "meshckpt" and repr(made[0]).startswith("<meshckpt.Variable ")
    with pytest.raises(mc.InvalidArgumentError, match="needs a layout or a mesh"):
        mc.Variable(np.zeros(3, np.float32))
