"""Runs WORLD ranks (torch.multiprocessing, gloo on 127.0.0.1) that save or load with
meshckpt.torch over torch.distributed. Usage: python3 gloo_ranks.py MODE DIR WORLD PORT
  save: each rank holds the same replicated state (as under DDP) and a per-rank entry, and saves
        it with mt.save and with a Checkpointer (async_save of two steps);
  load: each rank loads both and checks every value."""

import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def state(step):
    return {"model": {"w": torch.arange(40, dtype=torch.float32).reshape(8, 5) + step, "b": torch.full((3,), float(step))},
            "step": step, "tag": "run"}


def rank_main(rank, world, mode, d, port):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    import meshckpt.torch as mt
    coord = mt.distributed_coordinator()
    assert (coord.rank, coord.size) == (rank, world)
    if mode == "save":
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
