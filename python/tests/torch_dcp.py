"""torch 1.13's distributed checkpoint (DCP), importable under Python 3.11 for the tests: its
dataclasses give a dataclass instance as a field default, which Python 3.11 refuses unless the
instance's class is hashable. While the modules import, such classes are made hashable (a
test-only aid, so that torch's own code writes the DCP files the tests read)."""

import dataclasses


def import_dcp():
    """Returns (torch.distributed._shard.checkpoint, torch.distributed._shard.sharded_tensor,
    ChunkShardingSpec)."""
    orig = dataclasses._get_field

    def patched(cls, a_name, a_type, *rest):
        default = cls.__dict__.get(a_name, dataclasses.MISSING)
        if isinstance(default, dataclasses.Field):
            default = default.default
        if dataclasses.is_dataclass(type(default)) and type(default).__hash__ is None:
            type(default).__hash__ = object.__hash__
        return orig(cls, a_name, a_type, *rest)

    dataclasses._get_field = patched
    try:
        import torch.distributed._shard.checkpoint as dcp
        import torch.distributed._shard.sharded_tensor as sharded_tensor
        from torch.distributed._shard.sharding_spec import ChunkShardingSpec
    finally:
        dataclasses._get_field = orig
    return dcp, sharded_tensor, ChunkShardingSpec
