"""PyTorch state dicts with meshckpt: `save(state_dict, path)` and `load(state_dict, path)`.

A state dict is any nesting of dicts, lists and tuples whose leaves are torch CPU tensors or
plain values (int, float, bool, str, None) — a model's `state_dict()`, an optimizer's, an
epoch counter. Tensors are saved from their own memory and loaded into the given tensors in
place (no copies); plain values and the structure (including int keys, as in an optimizer's
"state") are stored as JSON, never pickled, so loading a checkpoint runs no code from it.

Several processes (mpi4py: pass `coordinator=meshckpt.mpi_coordinator()`) save one checkpoint
together: each rank writes its part of each tensor (rows split over the ranks, so every byte
is written once), and rank 0 commits. A load, by any number of processes, gives every rank
the whole state, whatever world size saved it.
"""

import json

import torch as _torch

from . import Bytes, Checkpoint, CheckpointOptions, Layout, Mesh, Module, Variable
from .errors import InvalidArgumentError, MismatchError

_META = "__meshckpt_torch__"
_FORMAT = 1


def _mesh(coordinator):
    rank, world = (coordinator.rank, coordinator.size) if coordinator is not None else (0, 1)
    return Mesh([("ranks", world)], local_device_ids=[rank]), rank, world


def _leaf(value, path):
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "item") and getattr(value, "shape", None) == ():  # numpy scalars
        return value.item()
    raise InvalidArgumentError(f"state dict entry {'/'.join(path) or '<root>'} is a {type(value).__name__}, "
                               "which meshckpt.torch cannot store (tensors and int, float, bool, str, None)")


def _flatten(obj, path, tensors):
    """The JSON skeleton of `obj`; its tensors go to `tensors` as (key, tensor)."""
    if isinstance(obj, _torch.Tensor):
        key = "/".join(path)
        tensors.append((key, obj))
        return {"tensor": key, "dtype": str(obj.dtype).replace("torch.", ""), "shape": list(obj.shape)}
    if isinstance(obj, dict):
        items = []
        for k, v in obj.items():
            if isinstance(k, bool) or not isinstance(k, (str, int)):
                raise InvalidArgumentError(f"state dict key {k!r} at {'/'.join(path) or '<root>'} is not a str or an int")
            items.append(["i" if isinstance(k, int) else "s", k, _flatten(v, path + [str(k)], tensors)])
        return {"dict": items}
    if isinstance(obj, (list, tuple)):
        kind = "list" if isinstance(obj, list) else "tuple"
        return {kind: [_flatten(v, path + [str(i)], tensors) for i, v in enumerate(obj)]}
    return {"value": _leaf(obj, path)}


def _shard(piece, layout, shape, rank, dtype):
    """A variable over `piece`, this rank's part of a tensor of `shape`. A non-contiguous piece
    (a transposed view, a slice, channels_last) is saved from a contiguous copy, and a restore
    copies the values back into it: the caller's own tensor receives them, or the restore
    raises (a CUDA or overlapping one)."""
    if piece.is_contiguous():
        return Variable.from_shards({rank: piece}, layout, shape, dtype=dtype)
    v = Variable.from_shards({rank: piece.contiguous()}, layout, shape, dtype=dtype)
    v._copy_back_to(piece)
    return v


def _variable(t, mesh, rank, world, shard_rows):
    if t.device.type not in ("cpu", "cuda"):
        raise InvalidArgumentError(f"a tensor on {t.device}: meshckpt.torch takes CPU and CUDA tensors")
    shape = list(t.shape)
    if shard_rows and world > 1 and len(shape) >= 1:
        layout = Layout(["ranks"] + ["unsharded"] * (len(shape) - 1), mesh)
        origin, extent = layout.shard_box(shape, rank)
        return _shard(t[origin[0]:origin[0] + extent[0]], layout, shape, rank, str(t.dtype))
    return _shard(t, Layout.replicated(len(shape), mesh), shape, rank, str(t.dtype))


class StateModule(Module):
    """A state dict as a trackable tree, for `Checkpoint` and `CheckpointManager` (numbered
    saves, retention, lazy saves): `update(state_dict)` (re)tracks its tensors, in place, and
    its plain values. Checkpoints it writes load with `load`. Keep the structure stable from
    one update to the next (entries that disappear stay tracked)."""

    def __init__(self, coordinator=None):
        super().__init__()
        self.mesh, self._rank, self._world = _mesh(coordinator)
        self.coordinator = coordinator

    def update(self, state_dict):
        tensors = []
        skeleton = _flatten(state_dict, [], tensors)
        for key, t in tensors:
            self[key] = _variable(t, self.mesh, self._rank, self._world, shard_rows=True)
        self[_META] = Bytes(json.dumps({"format": _FORMAT, "state": skeleton}).encode())
        return self

    def checkpoint(self):
        """A Checkpoint of this tree (with the coordinator of the processes saving together)."""
        return Checkpoint(self.mesh, self, options=CheckpointOptions(coordinator=self.coordinator))


def save(state_dict, path, *, coordinator=None):
    """Writes `state_dict` to the checkpoint `path` (no numbering); returns the path. Every
    rank of `coordinator` calls it with a state dict of the same structure."""
    return StateModule(coordinator).update(state_dict).checkpoint().write(str(path))


def save_lazy(state_dict, path, *, coordinator=None):
    """`save` that returns at once: a LazySave whose `snapshot` future says when the tensors
    may be modified again (the forward and backward passes may read them meanwhile) and whose
    `committed` future gives the path."""
    ckpt = StateModule(coordinator).update(state_dict).checkpoint()
    lazy = ckpt.write_lazy(str(path))
    lazy._checkpoint = ckpt  # kept until the caller drops the LazySave
    return lazy


def _rebuild(skel, target, tensors):
    """The value the skeleton describes, reusing `target`'s containers and tensors in place."""
    if "tensor" in skel:
        dtype = getattr(_torch, skel["dtype"])
        if isinstance(target, _torch.Tensor):
            if list(target.shape) != skel["shape"] or target.dtype != dtype:
                raise MismatchError(f"{skel['tensor']}: saved {skel['dtype']}{skel['shape']}, "
                                    f"the given tensor is {str(target.dtype).replace('torch.', '')}{list(target.shape)}")
            t = target
        else:
            t = _torch.empty(skel["shape"], dtype=dtype)
        tensors.append((skel["tensor"], t))
        return t
    if "dict" in skel:
        out = target if isinstance(target, dict) else {}
        for kind, k, v in skel["dict"]:
            k = int(k) if kind == "i" else k
            out[k] = _rebuild(v, out.get(k), tensors)
        return out
    for kind in ("list", "tuple"):
        if kind in skel:
            old = target if isinstance(target, (list, tuple)) else ()
            items = [_rebuild(v, old[i] if i < len(old) else None, tensors) for i, v in enumerate(skel[kind])]
            if kind == "list" and isinstance(target, list):
                target[:] = items
                return target
            return items if kind == "list" else tuple(items)
    return skel["value"]


def load(state_dict, path, *, coordinator=None):
    """Loads the checkpoint `path` into `state_dict`, in place: its tensors receive the saved
    values (same dtype and shape, else MismatchError), entries it lacks are added (new tensors,
    plain values), containers are updated. Returns `state_dict`. With `coordinator`, every
    rank gets the whole state."""
    mesh, rank, _ = _mesh(coordinator)
    meta = Bytes()
    Checkpoint(mesh, _MetaOnly(meta)).read(str(path)).expect_partial()
    if not meta.value:
        raise InvalidArgumentError(f"{path} was not written by meshckpt.torch.save (it has no {_META} entry)")
    doc = json.loads(meta.value.decode())
    if doc.get("format") != _FORMAT:
        raise InvalidArgumentError(f"{path}: meshckpt.torch format {doc.get('format')} is not supported")
    tensors = []
    if not isinstance(state_dict, dict):
        raise InvalidArgumentError("load() fills a dict (the state dict to restore into)")
    _rebuild(doc["state"], state_dict, tensors)
    root = Module()
    for key, t in tensors:
        root[key] = _variable(t, mesh, rank, 1, shard_rows=False)  # every rank reads the whole tensor
    root[_META] = Bytes()
    # Every tensor the skeleton names was restored; a save counter (a manager's save) may be unused.
    Checkpoint(mesh, root).read(str(path)).assert_existing_objects_matched().expect_partial()
    return state_dict


class _MetaOnly(Module):
    def __init__(self, meta):
        super().__init__()
        self[_META] = meta
