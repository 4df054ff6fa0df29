"""Runs WORLD ranks (torch.multiprocessing, gloo on 127.0.0.1) that save or load with
meshckpt.torch over torch.distributed. Usage: python3 gloo_ranks.py MODE DIR WORLD PORT
  save: each rank holds the same replicated state (as under DDP) and a per-rank entry, and saves
        it with mt.save and with a Checkpointer (async_save of two steps);
  load: each rank loads both and checks every value;
  sharded-save: ShardedTensors (chunked by rows and by columns over the ranks, as FSDP's
        SHARDED_STATE_DICT makes them) beside a replicated tensor, saved with mt.save and a
        Checkpointer; a ShardedTensor whose placements are not in rank order is refused;
  sharded-load: loads them into ShardedTensors chunked over this world size, and whole."""

import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def state(step):
    return {"model": {"w": torch.arange(40, dtype=torch.float32).reshape(8, 5) + step, "b": torch.full((3,), float(step))},
            "step": step, "tag": "run"}


EMB, PROJ = (17, 3), (3, 10)  # chunked by rows and by columns; uneven over 2 and 4 ranks


def whole(shape, step):
    return torch.arange(shape[0] * shape[1], dtype=torch.float32).reshape(shape) + step


def sharded(shape, dim, world, step, order=None):
    """A ShardedTensor of `whole(shape, step)` chunked along `dim` over `world` ranks."""
    from torch_dcp import import_dcp
    _, st, spec_cls = import_dcp()
    ranks = order or list(range(world))
    t = st.zeros(spec_cls(dim=dim, placements=[f"rank:{r}/cpu" for r in ranks]), *shape)
    for shard in t.local_shards():
        box = tuple(slice(o, o + n) for o, n in zip(shard.metadata.shard_offsets, shard.metadata.shard_sizes))
        shard.tensor.copy_(whole(shape, step)[box])
    return t


def check_sharded(t, shape, step):
    assert list(t.size()) == list(shape), t.size()
    for shard in t.local_shards():
        box = tuple(slice(o, o + n) for o, n in zip(shard.metadata.shard_offsets, shard.metadata.shard_sizes))
        assert torch.equal(shard.tensor, whole(shape, step)[box]), (shard.metadata, shard.tensor)


def sharded_state(world, step):
    return {"emb": sharded(EMB, 0, world, step), "proj": sharded(PROJ, 1, world, step), "bias": torch.arange(4.0) + step,
            "step": step}


def sharded_main(rank, world, mode, d, coord):
    import meshckpt as mc
    import meshckpt.torch as mt
    if mode == "sharded-save":
        mt.save(sharded_state(world, 1), os.path.join(d, "sharded"), coordinator=coord)
        with mt.Checkpointer(os.path.join(d, "shardrun"), coordinator=coord) as c:
            c.async_save(sharded_state(world, 7), 7).result()
        if world > 1:
            try:
                mt.save({"x": sharded(EMB, 0, world, 0, order=list(reversed(range(world))))}, os.path.join(d, "refused"),
                        coordinator=coord)
                raise AssertionError("a ShardedTensor placed out of rank order was saved")
            except mc.InvalidArgumentError as e:
                assert "ChunkShardingSpec" in str(e) and "rank 0" in str(e), e
        return
    # Into ShardedTensors chunked over this world size (resharded), and whole.
    s = {"emb": sharded(EMB, 0, world, -100), "proj": sharded(PROJ, 1, world, -100)}
    mt.load(s, os.path.join(d, "sharded"), coordinator=coord)
    check_sharded(s["emb"], EMB, 1)
    check_sharded(s["proj"], PROJ, 1)
    assert torch.equal(s["bias"], torch.arange(4.0) + 1) and s["step"] == 1
    out = mt.load({}, os.path.join(d, "sharded"), coordinator=coord)
    assert torch.equal(out["emb"], whole(EMB, 1)) and torch.equal(out["proj"], whole(PROJ, 1))
    with mt.Checkpointer(os.path.join(d, "shardrun"), coordinator=coord) as c:
        s = {"emb": sharded(EMB, 0, world, -100), "proj": sharded(PROJ, 1, world, -100)}
        c.load(s)
        check_sharded(s["emb"], EMB, 7)
        check_sharded(s["proj"], PROJ, 7)


def rank_main(rank, world, mode, d, port):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    import meshckpt.torch as mt
    coord = mt.distributed_coordinator()
    assert (coord.rank, coord.size) == (rank, world)
    if mode.startswith("sharded"):
        sharded_main(rank, world, mode, d, coord)
    elif mode == "save":
        mt.save(state(1), os.path.join(d, "one"), coordinator=coord)
        with mt.Checkpointer(os.path.join(d, "run"), max_to_keep=2, coordinator=coord) as c:
            for step in (10, 20):
                c.async_save(state(step), step).result()
    else:
        out = mt.load({}, os.path.join(d, "one"), coordinator=coord)
        assert torch.equal(out["model"]["w"], state(1)["model"]["w"]) and out["step"] == 1, out
        with mt.Checkpointer(os.path.join(d, "run"), max_to_keep=2, coordinator=coord) as c:
            s = {"model": {"w": torch.zeros(8, 5), "b": torch.zeros(3)}}
            c.load(s)
            assert torch.equal(s["model"]["w"], state(20)["model"]["w"]) and s["step"] == 20
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    mode, d, world, port = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    mp.spawn(rank_main, args=(world, mode, d, port), nprocs=world, join=True)
