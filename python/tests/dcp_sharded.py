"""Writes a DCP checkpoint from WORLD ranks (torch.multiprocessing, gloo on 127.0.0.1) with
torch 1.13's own code: a ShardedTensor split by rows over the ranks, and a plain tensor every
rank holds (which DCP writes once). Usage: python3 dcp_sharded.py OUT WORLD PORT"""

import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from torch_dcp import import_dcp


def rank_main(rank, world, out, port):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    dcp, st, spec_cls = import_dcp()
    spec = spec_cls(dim=0, placements=[f"rank:{r}/cpu" for r in range(world)])
    rows = 4 * world + 1  # uneven: the last rank's chunk is shorter
    sharded = st.empty(spec, rows, 3)
    for shard in sharded.local_shards():
        r0 = shard.metadata.shard_offsets[0]
        n = shard.tensor.shape[0]
        shard.tensor.copy_(torch.arange(r0 * 3, (r0 + n) * 3, dtype=torch.float32).reshape(n, 3))
    state = {"emb": sharded, "bias": torch.arange(5.0), "step": 9}
    dcp.save_state_dict(state, dcp.FileSystemWriter(out))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    out, world, port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    mp.spawn(rank_main, args=(world, out, port), nprocs=world, join=True)
