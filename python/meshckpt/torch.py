"""PyTorch state dicts with meshckpt: `save(state_dict, path)`, `load(state_dict, path)`, and
`Checkpointer(directory)` for a trainer that saves the same state again and again.

A state dict is any nesting of dicts, lists and tuples whose leaves are torch CPU or CUDA
tensors or plain values (int, float, bool, str, None) — a model's `state_dict()`, an
optimizer's, an epoch counter. Tensors are saved from their own memory and loaded into the
given tensors in place (no copies); plain values and the structure (including int keys, as in
an optimizer's "state") are stored as JSON, never pickled, so loading a checkpoint runs no code
from it. The walk of the state dict, the grouping of tensors that share a storage and the
binding of every tensor happen in C++ in one call (`_meshckpt.TorchState`); a Checkpointer keeps
them, and its checkpoint, while the structure and the tensors' memory stay the same.

Several processes (torchrun: pass `coordinator=meshckpt.torch.distributed_coordinator()`; mpi4py:
`coordinator=meshckpt.mpi_coordinator()`) save one checkpoint
together: each rank writes its part of each tensor (rows split over the ranks, so every byte
is written once; a ShardedTensor's local shard, as the box of its global tensor), and rank 0
commits. A load, by any number of processes, gives every rank
the whole state, whatever world size saved it.
"""

import torch as _torch  # noqa: F401  (the tensors this module handles are torch's)

from . import _C, Checkpoint, CheckpointManager, CheckpointOptions, Mesh
from .errors import InvalidArgumentError, NotFoundError

_META = "__meshckpt_torch__"


_coordinators = 0


def distributed_coordinator():
    """A coordinator over torch.distributed's default process group (as torchrun and
    `init_process_group("gloo")` set it up): every rank calls it, in the same order as its other
    coordinators. It talks through the group's key-value store, not its collectives, so that a
    rank that is late or dead makes a save fail everywhere after the timeout instead of hanging
    it; the commit protocol is the same as with MPI: one checkpoint committed by all ranks, or none."""
    import torch.distributed as dist
    if not dist.is_available() or not dist.is_initialized():
        raise InvalidArgumentError("distributed_coordinator() needs torch.distributed initialized (init_process_group)")
    global _coordinators
    _coordinators += 1
    store = dist.distributed_c10d._get_default_store()
    return _C.store_coordinator(store, dist.get_rank(), dist.get_world_size(), f"meshckpt/{_coordinators}")


def _mesh(coordinator):
    rank, world = (coordinator.rank, coordinator.size) if coordinator is not None else (0, 1)
    return Mesh([("ranks", world)], local_device_ids=[rank]), rank, world


def _state(coordinator):
    """(a new TorchState for this process, its mesh)."""
    mesh, rank, world = _mesh(coordinator)
    return _C.TorchState(mesh, rank, world), mesh


class StateModule(_C.TorchState):
    """A state dict as a trackable tree, for `Checkpoint` and `CheckpointManager` (numbered
    saves, retention, lazy saves): `update(state_dict)` (re)binds its tensors, in place, and
    records its plain values. Checkpoints it writes load with `load`. Entries may be added from
    one update to the next, not removed (use a new StateModule, or a `Checkpointer`, which
    handles it)."""

    def __init__(self, coordinator=None):
        self.mesh, rank, world = _mesh(coordinator)
        super().__init__(self.mesh, rank, world)
        self.coordinator = coordinator

    def update(self, state_dict):
        if super().update(state_dict, True, None) == "stale":
            raise InvalidArgumentError("the state dict lost entries this StateModule tracks: use a new StateModule "
                                       "(or meshckpt.torch.Checkpointer, which does so itself)")
        return self

    def checkpoint(self):
        """A Checkpoint of this tree (with the coordinator of the processes saving together)."""
        return Checkpoint(self.mesh, self, options=CheckpointOptions(coordinator=self.coordinator))


def save(state_dict, path, *, coordinator=None):
    """Writes `state_dict` to the checkpoint `path` (no numbering); returns the path. Every
    rank of `coordinator` calls it with a state dict of the same structure."""
    tree, mesh = _state(coordinator)
    tree.update(state_dict, True)
    # The call waits for the commit: the tensors are written from where they are, no copy first.
    options = CheckpointOptions(snapshot=False, coordinator=coordinator)
    return Checkpoint(mesh, tree, options=options).write(str(path))


def save_lazy(state_dict, path, *, coordinator=None):
    """`save` that returns at once: a LazySave whose `snapshot` future says when the tensors
    may be modified again (the forward and backward passes may read them meanwhile) and whose
    `committed` future gives the path."""
    tree, mesh = _state(coordinator)
    tree.update(state_dict, True)
    ckpt = Checkpoint(mesh, tree, options=CheckpointOptions(coordinator=coordinator))
    lazy = ckpt.write_lazy(str(path))
    lazy._checkpoint = ckpt  # kept until the caller drops the LazySave
    return lazy


def load(state_dict, path, *, coordinator=None):
    """Loads the checkpoint `path` — or a torch.save file, read without running its pickle —
    into `state_dict`, in place: its tensors receive the saved
    values (same dtype and shape, else MismatchError), entries it lacks are added (new tensors,
    plain values), containers are updated. Keys saved as one tensor (tied weights) or as views
    of one storage share it again after the load. Returns `state_dict`. With `coordinator`,
    every rank gets the whole state."""
    if not isinstance(state_dict, dict):
        raise InvalidArgumentError("load() fills a dict (the state dict to restore into)")
    mesh, rank, _ = _mesh(coordinator)
    tree = _C.TorchState(mesh, rank, 1)  # every rank reads the whole of every tensor
    _, copies, _ = tree.bind_load(str(path), state_dict)
    # Every tensor the skeleton names, read by its key with the manifest bind_load read (a
    # missing one is NotFoundError); a save counter (a manager's save) is not part of the state.
    tree.read_bound(str(path))
    for dst, src in copies:  # views of a shared storage, onto tensors the caller gave
        dst.copy_(src)
    return state_dict


class Checkpointer:
    """A trainer's handle on a directory of numbered checkpoints of one state dict:
    `save(state_dict, step)`, `async_save(state_dict, step)` (a concurrent.futures.Future of
    the path, like DCP's async_save: the tensors may change once it returns), `load(state_dict,
    path=None)` (the latest by default), with CheckpointManager's retention (`max_to_keep`,
    `keep_checkpoint_every_n_hours`) and directory lock. The walk and binding of the state dict
    and the checkpoint are kept from one save to the next while the structure and the tensors'
    memory stay the same. With `coordinator`, every rank of a job calls each method."""

    def __init__(self, directory, *, max_to_keep=5, keep_checkpoint_every_n_hours=None, checkpoint_name="ckpt",
                 coordinator=None, lock_timeout=0.0):
        self._coordinator = coordinator
        self._options = dict(max_to_keep=max_to_keep, keep_checkpoint_every_n_hours=keep_checkpoint_every_n_hours,
                             checkpoint_name=checkpoint_name, lock_timeout=lock_timeout)
        self._directory = str(directory)
        self._open(_state(coordinator), counter=None)

    def _open(self, state, counter):
        self._tree, mesh = state
        self._ckpt = Checkpoint(mesh, self._tree, options=CheckpointOptions(coordinator=self._coordinator))
        if counter is not None:
            self._ckpt.save_counter = counter
        self._manager = CheckpointManager(self._ckpt, self._directory, **self._options)

    def _bind(self, state_dict):
        if self._manager is None:
            raise InvalidArgumentError(f"this Checkpointer of {self._directory} is closed")
        if self._tree.update(state_dict, True, self._ckpt.sync) != "stale":
            return
        # Entries went away: a new tree, checkpoint and manager (the old one's lock released first).
        counter = self._ckpt.save_counter
        self.close()
        state = _state(self._coordinator)
        state[0].update(state_dict, True)
        self._open(state, counter)

    @property
    def directory(self):
        return self._directory

    @property
    def latest_checkpoint(self):
        return self._manager.latest_checkpoint

    @property
    def checkpoints(self):
        return self._manager.checkpoints

    def save(self, state_dict, step=None):
        """Saves DIR/NAME-STEP (or the next number); returns its path once it is durable. The
        tensors are written from where they are (the call waits: no copy)."""
        self._bind(state_dict)
        self._ckpt._impl.set_snapshot(False)
        return self._manager.save(checkpoint_number=step, check_interval=False)

    def async_save(self, state_dict, step=None):
        """Copies the state's tensors and returns: a Future of the path, done once the save is
        durable. Saves queue one behind the other."""
        self._bind(state_dict)
        self._ckpt._impl.set_snapshot(True)
        return self._manager.save_async(checkpoint_number=step, check_interval=False)

    def save_lazy(self, state_dict, step=None):
        """Returns at once: a LazySave (`snapshot`: the tensors may change; `committed`: the path)."""
        self._bind(state_dict)
        self._ckpt._impl.set_snapshot(True)
        return self._manager.save_lazy(checkpoint_number=step, check_interval=False)

    def load(self, state_dict, path=None):
        """Loads `path` (default: the latest checkpoint) into `state_dict`, in place; returns it."""
        path = path if path is not None else self.latest_checkpoint
        if path is None:
            raise NotFoundError(f"no checkpoint in {self._directory} to load")
        return load(state_dict, path, coordinator=self._coordinator)

    def wait(self):
        """Waits for every save started so far; raises the error of the last one, if it failed."""
        self._ckpt.sync()

    def close(self):
        """Waits for the saves in flight and releases the directory."""
        if self._manager is not None:
            self._ckpt.sync()
            self._manager = None
            self._ckpt = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

