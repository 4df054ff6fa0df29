"""meshckpt for Python: checkpoints of sharded tensors and the objects that hold them, with the
semantics of TensorFlow's `tf.train.Checkpoint` / DTensorCheckpoint and `CheckpointManager`,
on meshckpt's C++ engine (io_uring, checksums, crash-safe commit, resharding).

Shards are the caller's numpy arrays or torch CPU tensors, used in place: a save reads their
memory, a restore writes into it. The GIL is released while copies, checksums and IO run.
Blocking calls (`save`, `restore`, ...) wait on a `concurrent.futures.Future`; Ctrl-C during
a blocking save stops it cleanly (no new file) and raises KeyboardInterrupt. See docs/PYTHON.md.
"""

import atexit as _atexit
import concurrent.futures as _futures

from . import _meshckpt as _C
from .errors import *  # noqa: F401,F403
from .errors import MeshckptError, InvalidArgumentError

Mesh = _C.Mesh
Layout = _C.Layout
Trackable = _C.Trackable
Bytes = _C.Bytes
Coordinator = _C.Coordinator
UNSHARDED = "unsharded"

__all__ = ["Mesh", "Layout", "Trackable", "Module", "Variable", "Bytes", "Checkpoint", "CheckpointManager",
           "CheckpointOptions", "LoadStatus", "LazySave", "mpi_coordinator", "UNSHARDED"]


def mpi_coordinator():
    """A coordinator over MPI_COMM_WORLD for a checkpoint saved by several processes together
    (every rank calls it). Import mpi4py first: `from mpi4py import MPI`."""
    return _C.mpi_coordinator()


# At exit, let saves still in flight finish (their futures resolve) before the interpreter goes.
_atexit.register(_C._drain)


def _future():
    f = _futures.Future()
    f.set_running_or_notify_cancel()  # the operation, not the Future API, decides its end
    return f


def _run(start, *args, stop=None):
    """Starts an operation that resolves a new future and waits for it. On KeyboardInterrupt
    (Ctrl-C), requests the operation's stop (when it has one), waits for its end (cancelled:
    nothing left behind; or already committed), then re-raises."""
    fut = _future()
    try:
        start(*args, fut)
        return fut.result()
    except KeyboardInterrupt:
        if getattr(fut, "_meshckpt_started", False):
            if stop is not None:
                stop()
            while True:
                try:
                    _futures.wait([fut])
                    break
                except KeyboardInterrupt:  # another Ctrl-C: the stop is requested, keep waiting
                    continue
        raise


def _start_save(impl, *args, lazy=False):
    """(future of the outcome, future of the snapshot or None, stop handle) of a started save."""
    fut, snap, stop = _future(), _future() if lazy else None, _C.StopHandle()
    impl.start_save(*args, fut, snap, stop)
    return fut, snap, stop


def _save(impl, *args):
    """A blocking save: `impl.start_save(*args, future, None, stop)` waited for by `_run`."""
    stop = _C.StopHandle()
    return _run(lambda fut: impl.start_save(*args, fut, None, stop), stop=stop)


class Module(_C.Module):
    """A trackable container: attributes that are trackables (Variables, Modules, Bytes) become
    named children, as in `tf.Module`. A restore pending for that name (the checkpoint had such
    a child when this object was restored) runs when the child is assigned."""

    def __setattr__(self, name, value):
        if isinstance(value, Trackable) and not name.startswith("_"):
            self._track(name, value)
        object.__setattr__(self, name, value)

    def __setitem__(self, name, value):
        """module["name/with.any chars"] = child: tracks a child under any name."""
        if not isinstance(value, Trackable):
            raise InvalidArgumentError(f"child {name!r} is not a trackable object")
        self._track(name, value)
        self.__dict__.setdefault("_items", {})[name] = value

    def __getitem__(self, name):
        return self.__dict__.get("_items", {})[name]


def _variable_args(value, layout, mesh):
    """The checks of Variable(value, layout, mesh=...): (shards, layout, shape) for from_shards."""
    if layout is None:
        if mesh is None:
            raise InvalidArgumentError("Variable(value) needs a layout or a mesh")
        layout = Layout.replicated(len(value.shape), mesh)
    local = layout.mesh.local_device_ids
    if len(local) != 1:
        raise InvalidArgumentError(
            f"Variable(value) is one array for one local device, but this process has {len(local)} devices: "
            "use Variable.from_shards, or Variable.zeros and assign()")
    shape = list(value.shape)
    origin, extent = layout.shard_box(shape, local[0])
    if list(extent) != shape:
        raise InvalidArgumentError(
            f"layout {layout!r} gives device {local[0]} the box {origin}+{extent}, not the whole tensor {shape}: "
            "use Variable.from_shards")
    return {local[0]: value}, layout, shape


# meshckpt variables (sharded tensors): Variable(value, layout=None, *, mesh=None),
# Variable.from_shards(shards, layout, global_shape, dtype=None), Variable.zeros(shape, dtype,
# layout); with dtype, shape, layout, shard(device), assign(array), numpy(), read_into(out).
Variable = _C.Variable


class LoadStatus:
    """The outcome of `restore`/`read` (TensorFlow's CheckpointLoadStatus). Its assertions
    raise AssertionError naming what did not match, and return the status for chaining. It
    keeps its Checkpoint (and so the restored objects) alive: assertions look at them, and
    deferred restorations can still fire."""

    def __init__(self, status, checkpoint):
        self._status = status  # destroyed first: its warning walks the checkpoint's graph
        self._checkpoint = checkpoint

    def assert_consumed(self):
        """Every live object was restored, every checkpoint value used."""
        self._status.assert_consumed()
        return self

    def assert_existing_objects_matched(self):
        """Every live object holding a value was restored (extra checkpoint values are fine)."""
        self._status.assert_existing_objects_matched()
        return self

    def assert_nontrivial_match(self):
        """Something besides the root and the save counter was matched."""
        self._status.assert_nontrivial_match()
        return self

    def expect_partial(self):
        """Silences the warning about values not used when the status is released."""
        self._status.expect_partial()
        return self

    @property
    def unused_keys(self):
        return self._status.unused_keys

    @property
    def unrestored_objects(self):
        return self._status.unrestored_objects

    @property
    def deferred_errors(self):
        return self._status.deferred_errors

    @property
    def path(self):
        return self._status.path


class CheckpointOptions:
    """How a Checkpoint writes and reads.

    snapshot: copy the tensors when a save starts, so they may change as soon as the call
      returns (True); otherwise the save reads them until it completes.
    snapshot_budget_bytes: most snapshot memory kept (0: no limit).
    coordinator: the processes saving together (`mpi_coordinator()`), or None.
    restore_names: live object path -> checkpoint key, for name-based restores.
    verify_checksums: check every byte read (True).
    chunk_bytes: checksum chunk size (0: the default).
    """

    def __init__(self, snapshot=True, snapshot_budget_bytes=0, coordinator=None, restore_names=None,
                 verify_checksums=True, chunk_bytes=0):
        self.snapshot = snapshot
        self.snapshot_budget_bytes = snapshot_budget_bytes
        self.coordinator = coordinator
        self.restore_names = dict(restore_names or {})
        self.verify_checksums = verify_checksums
        self.chunk_bytes = chunk_bytes


class LazySave:
    """A save in flight: `snapshot` (a Future) completes when the tensors may be modified,
    `committed` (a Future) with the path once the checkpoint is durable."""

    def __init__(self, committed, snapshot, stop):
        self.committed = committed
        self.snapshot = snapshot
        self._stop = stop

    def stop(self):
        """Requests the save's stop: before its commit it ends with CancelledError, no file left."""
        self._stop()

    def wait_snapshot(self, timeout=None):
        return self.snapshot.result(timeout)

    def wait_committed(self, timeout=None):
        return self.committed.result(timeout)

    def __await__(self):
        import asyncio
        return asyncio.wrap_future(self.committed).__await__()


class Checkpoint:
    """`tf.train.Checkpoint` on a mesh: Checkpoint(mesh, root=None, **children).

    Node 0 of the saved graph is `root` when given (children become extra edges of it), else
    the checkpoint itself with the children in sorted name order; the save counter is an edge
    "save_counter" of node 0. Objects are matched structurally on restore, never by name.
    """

    def __init__(self, mesh, root=None, *, options=None, **children):
        for k, v in children.items():
            if not isinstance(v, Trackable):
                raise InvalidArgumentError(f"child '{k}' is not a trackable object")
        if root is not None and not isinstance(root, Trackable):
            raise InvalidArgumentError("root is not a trackable object")
        o = options or CheckpointOptions()
        self._root = root
        self._children = dict(children)
        self._impl = _C.Checkpoint(mesh, root, sorted(children.items()), o.snapshot, o.snapshot_budget_bytes,
                                   o.coordinator, o.restore_names, o.verify_checksums, o.chunk_bytes)
        self.mesh = mesh

    def __getattr__(self, name):
        children = self.__dict__.get("_children", {})
        if name in children:
            return children[name]
        raise AttributeError(name)

    @property
    def root(self):
        return self._root

    @property
    def save_counter(self):
        """How many times `save` has run (restored by `restore`); created at 0 on first use."""
        return self._impl.save_counter

    @save_counter.setter
    def save_counter(self, v):
        self._impl.save_counter = v

    def save(self, file_prefix):
        """Increments the save counter, writes `file_prefix-N` and updates the directory's
        `checkpoint` state file. Returns the path."""
        return _save(self._impl, str(file_prefix), True)

    def write(self, file_prefix):
        """Writes exactly `file_prefix` (no numbering, no state file). Returns it."""
        return _save(self._impl, str(file_prefix), False)

    def save_async(self, file_prefix):
        """`save` as a concurrent.futures.Future of the path (`await asyncio.wrap_future(f)`)."""
        return _start_save(self._impl, str(file_prefix), True)[0]

    def write_async(self, file_prefix):
        return _start_save(self._impl, str(file_prefix), False)[0]

    def save_lazy(self, file_prefix):
        """Returns at once: a LazySave with `snapshot` and `committed` futures."""
        return LazySave(*_start_save(self._impl, str(file_prefix), True, lazy=True))

    def write_lazy(self, file_prefix):
        return LazySave(*_start_save(self._impl, str(file_prefix), False, lazy=True))

    def read(self, save_path):
        """Restores a checkpoint written by `write` (the save counter is left alone)."""
        return LoadStatus(_run(self._impl.start_restore, str(save_path), False), self)

    def restore(self, save_path):
        """Restores a checkpoint written by `save` (or None: an initialization-only status);
        the save counter takes the saved value. Returns a LoadStatus."""
        return LoadStatus(_run(self._impl.start_restore, None if save_path is None else str(save_path), True), self)

    def read_async(self, save_path):
        """`read` as a concurrent.futures.Future of the LoadStatus."""
        return self._restore_async(str(save_path), False)

    def restore_async(self, save_path):
        """`restore` as a concurrent.futures.Future of the LoadStatus."""
        return self._restore_async(None if save_path is None else str(save_path), True)

    def _restore_async(self, path, is_restore):
        inner, outer = _future(), _futures.Future()
        outer.set_running_or_notify_cancel()

        def done(f):
            e = f.exception()
            if e is None:
                outer.set_result(LoadStatus(f.result(), self))
            else:
                outer.set_exception(e)

        inner.add_done_callback(done)
        self._impl.start_restore(path, is_restore, inner)
        return outer

    def sync(self):
        """Waits for every save queued so far; raises the error of the last one, if it failed."""
        self._impl.sync()


class CheckpointManager:
    """`tf.train.CheckpointManager`: numbered saves into a directory, its `checkpoint` state
    file, retention, step intervals and restore-or-initialize."""

    def __init__(self, checkpoint, directory, max_to_keep=5, keep_checkpoint_every_n_hours=None,
                 checkpoint_name="ckpt", step_counter=None, checkpoint_interval=None, init_fn=None,
                 lock_timeout=0.0):
        if step_counter is not None and not callable(step_counter):
            counter = step_counter
            step_counter = lambda: int(counter() if callable(counter) else counter)  # noqa: E731
        self._checkpoint = checkpoint
        self._impl = _C.CheckpointManager(checkpoint._impl, str(directory), max_to_keep, keep_checkpoint_every_n_hours,
                                          checkpoint_name, step_counter, checkpoint_interval, init_fn, lock_timeout)

    @property
    def checkpoint(self):
        return self._checkpoint

    @property
    def directory(self):
        return self._impl.directory

    @property
    def latest_checkpoint(self):
        return self._impl.latest_checkpoint

    @property
    def checkpoints(self):
        return self._impl.checkpoints

    def save(self, checkpoint_number=None, check_interval=True):
        """Saves DIR/NAME-N; returns its path, or None when the interval (or the same step)
        skipped it."""
        return _save(self._impl, checkpoint_number, check_interval)

    def save_async(self, checkpoint_number=None, check_interval=True):
        return _start_save(self._impl, checkpoint_number, check_interval)[0]

    def save_lazy(self, checkpoint_number=None, check_interval=True):
        return LazySave(*_start_save(self._impl, checkpoint_number, check_interval, lazy=True))

    def restore_or_initialize(self):
        return self._impl.restore_or_initialize()
