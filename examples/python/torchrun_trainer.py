"""A data-parallel PyTorch trainer under torchrun (gloo, CPU) that checkpoints with meshckpt.

    # start from a torch.save file, 2 ranks, 60 steps
    torchrun --standalone --nproc_per_node=2 examples/python/torchrun_trainer.py \
        --dir /tmp/run --init model.pt --steps 60
    # resume on another world size and go on to 100
    torchrun --standalone --nproc_per_node=4 examples/python/torchrun_trainer.py --dir /tmp/run --steps 100

(`python3 -m torch.distributed.run` where the `torchrun` script is not installed; any launcher that
sets RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT, as torchrun does, works too — torch 1.13's
torchrun stops before starting the script under Python 3.11, Debian 12's pair, on its
`--redirects` parsing, so the tests launch the ranks that way.) The job needs
no MPI: `meshckpt.torch.distributed_coordinator()` talks through the process group torchrun sets
up. Every --every steps each rank calls `Checkpointer.async_save`, which returns once the
tensors are copied: training goes on while the checkpoint is written, each rank writing its
rows of every tensor, and rank 0 commits it once every rank's part is durable. On start, the
latest checkpoint in --dir is loaded (on any world size: every rank gets the whole state);
without one, the weights come from --init, a torch.save file read without running its pickle.
The global batch is the same whatever the world size (each rank takes its share), so a run
resumed on 4 ranks continues the one started on 2.
"""

import argparse
import os

import torch
import torch.distributed as dist

import meshckpt.torch as mt

GLOBAL_BATCH = 48


def model_and_optimizer():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.Tanh(), torch.nn.Linear(64, 1))
    return model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)


def batch(step, rank, world):
    g = torch.Generator().manual_seed(step)
    x = torch.randn(GLOBAL_BATCH, 16, generator=g)
    share = GLOBAL_BATCH // world
    x = x[rank * share:(rank + 1) * share]
    return x, x.cos().sum(dim=1, keepdim=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    ap.add_argument("--init", help="a torch.save file of the model's state dict, for a fresh run")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--every", type=int, default=20)
    args = ap.parse_args()

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    if GLOBAL_BATCH % world:
        raise SystemExit(f"the world size must divide {GLOBAL_BATCH}")
    model, opt = model_and_optimizer()
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    state = {"model": model.state_dict(), "optim": opt.state_dict(), "step": 0}

    ckpt = mt.Checkpointer(args.dir, max_to_keep=3, coordinator=mt.distributed_coordinator())
    if ckpt.latest_checkpoint:
        ckpt.load(state)  # weights in place, on any world size
        opt.load_state_dict(state["optim"])
        if rank == 0:
            print(f"resumed from {ckpt.latest_checkpoint} at step {state['step']} on {world} ranks", flush=True)
    elif args.init:
        mt.load(state["model"], args.init)  # a .pt, its pickle read, never run
        if rank == 0:
            print(f"started from {args.init} on {world} ranks", flush=True)

    pending = None
    for step in range(state["step"] + 1, args.steps + 1):
        x, y = batch(step, rank, world)
        loss = torch.nn.functional.mse_loss(ddp(x), y)
        opt.zero_grad()
        loss.backward()  # DDP averages the gradients over the ranks
        opt.step()
        if step % args.every == 0 or step == args.steps:
            if pending is not None:
                pending.result()  # the previous checkpoint committed long ago; its errors surface here
            state.update(optim=opt.state_dict(), step=step)
            pending = ckpt.async_save(state, step)  # returns once the tensors are copied
            if rank == 0:
                print(f"step {step}: loss {loss.item():.5f}, checkpoint started", flush=True)
    if pending is not None:
        pending.result()
    ckpt.close()  # waits for the last save
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
