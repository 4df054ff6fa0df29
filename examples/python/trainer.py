"""A small PyTorch trainer that checkpoints asynchronously with meshckpt and resumes.

    PYTHONPATH=build/python python3 examples/python/trainer.py --dir /tmp/run --steps 120
    PYTHONPATH=build/python python3 examples/python/trainer.py --dir /tmp/run --steps 240   # resumes at 120

Every --every steps it starts a lazy save through a CheckpointManager (numbered, keeps the
newest 3): the call returns at once; the next forward and backward passes run while meshckpt
copies the weights and optimizer state, and only the optimizer step, which writes them,
waits for the snapshot. The write to disk overlaps the training that follows. A run that is
killed mid-save resumes from the last committed checkpoint.
"""

import argparse

import torch

import meshckpt as mc
import meshckpt.torch as mt


def batch(step):
    g = torch.Generator().manual_seed(step)
    x = torch.randn(64, 32, generator=g)
    return x, x.sin().sum(dim=1, keepdim=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--every", type=int, default=20)
    args = ap.parse_args()

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 256), torch.nn.GELU(), torch.nn.Linear(256, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    state = {"model": model.state_dict(), "optim": opt.state_dict(), "step": 0}

    tree = mt.StateModule()
    manager = mc.CheckpointManager(tree.checkpoint(), args.dir, max_to_keep=3)
    if manager.latest_checkpoint:
        mt.load(state, manager.latest_checkpoint)  # model weights in place; optimizer state rebuilt
        opt.load_state_dict(state["optim"])
        print(f"resumed from {manager.latest_checkpoint} at step {state['step']}")
    step = state["step"]

    pending = None
    while step < args.steps:
        x, y = batch(step)
        loss = torch.nn.functional.mse_loss(model(x), y)  # may overlap a snapshot: reads only
        opt.zero_grad()
        loss.backward()
        if pending is not None:
            pending.wait_snapshot()  # the step below writes the weights and optimizer state
            pending = None
        opt.step()
        step += 1
        if step % args.every == 0:
            tree.update({"model": model.state_dict(), "optim": opt.state_dict(), "step": step})
            pending = manager.save_lazy(checkpoint_number=step)
            pending.committed.add_done_callback(
                lambda f, s=step, l=loss.item(): print(f"step {s}: loss {l:.4f}, saved {f.result()}"))
    manager.checkpoint.sync()  # every save committed before exit
    print(f"done at step {step}; checkpoints: {[c.rsplit('/', 1)[1] for c in manager.checkpoints]}")


if __name__ == "__main__":
    main()
