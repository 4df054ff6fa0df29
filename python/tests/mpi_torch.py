"""Run under mpirun by test_torch.py: `mpi_torch.py save|load DIR`. Every rank builds the same
deterministic training state; `save` writes it as one checkpoint from all ranks, `load` reads
it into a differently initialised state on each rank and checks every value."""

import sys

from mpi4py import MPI  # initializes MPI (thread level MULTIPLE) before meshckpt uses it
import torch

import meshckpt
import meshckpt.torch as mt


def state(seed):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(16, 33), torch.nn.Tanh(), torch.nn.Linear(33, 5))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(4, 16)).sum().backward()
    opt.step()
    return {"model": model.state_dict(), "optim": opt.state_dict(), "epoch": seed,
            "emb": torch.randn(7, 3).to(torch.bfloat16)}


def main():
    mode, path = sys.argv[1], sys.argv[2]
    comm = MPI.COMM_WORLD
    coord = meshckpt.mpi_coordinator()
    assert (coord.rank, coord.size) == (comm.Get_rank(), comm.Get_size())
    expect = state(1)
    if mode == "save":
        mt.save(expect, path, coordinator=coord)
    else:
        got = state(2 + coord.rank)
        mt.load(got, path, coordinator=coord)
        assert got["epoch"] == 1
        for part in ("model", "emb"):
            a, b = expect[part], got[part]
            for k in (a if isinstance(a, dict) else [None]):
                x, y = (a[k], b[k]) if k is not None else (a, b)
                assert torch.equal(x, y), f"rank {coord.rank}: {part} {k} differs"
        assert torch.equal(expect["optim"]["state"][0]["momentum_buffer"], got["optim"]["state"][0]["momentum_buffer"])
    comm.Barrier()
    print(f"rank {coord.rank} of {coord.size}: {mode} ok", flush=True)


main()
