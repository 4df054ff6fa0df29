"""meshckpt.torch: nested state dicts (model, optimizer, plain values) saved and loaded in
place, by one process and by several under mpirun, onto a different world size."""

import os
import subprocess
import sys

import pytest
import torch

import meshckpt as mc
import meshckpt.torch as mt
from conftest import mpirun

HERE = os.path.dirname(os.path.abspath(__file__))


def trained(seed, dtype=torch.float32):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4)).to(dtype)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(2):
        opt.zero_grad()
        model(torch.randn(5, 8).to(dtype)).square().mean().backward()
        opt.step()
    return model, opt


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)  # torch has no CPU float16 matmul
def test_model_and_optimizer_resume_exactly(tmp_path, dtype):
    model, opt = trained(1, dtype)
    sd = {"model": model.state_dict(), "optim": opt.state_dict(), "epoch": 7, "note": "warmup done",
          "history": [0.5, 0.25, None], "flags": (True, 3)}
    assert mt.save(sd, tmp_path / "t") == str(tmp_path / "t")

    model2, opt2 = trained(2, dtype)
    params = {k: v.data_ptr() for k, v in model2.state_dict().items()}
    target = {"model": model2.state_dict(), "optim": opt2.state_dict()}
    mt.load(target, tmp_path / "t")
    opt2.load_state_dict(target["optim"])
    # Model tensors were loaded in place: the model itself now holds the saved weights.
    for k, v in model2.state_dict().items():
        assert v.data_ptr() == params[k]
        assert torch.equal(v, model.state_dict()[k])
    for i, s in opt.state_dict()["state"].items():
        for k, v in s.items():
            assert torch.equal(opt2.state_dict()["state"][i][k], v)
    assert target["optim"]["param_groups"][0]["lr"] == 1e-3
    assert (target["epoch"], target["note"], target["history"], target["flags"]) == (7, "warmup done", [0.5, 0.25, None], (True, 3))
    # Training continues identically from the two.
    x = torch.randn(3, 8).to(dtype)
    assert torch.equal(model(x), model2(x))


def test_load_fills_entries_the_target_lacks_and_refuses_mismatches(tmp_path):
    sd = {"w": torch.arange(6.0).reshape(2, 3), "state": {0: {"step": torch.tensor(3)}}}
    mt.save(sd, tmp_path / "t")
    empty = {}
    mt.load(empty, tmp_path / "t")
    assert torch.equal(empty["w"], sd["w"]) and torch.equal(empty["state"][0]["step"], sd["state"][0]["step"])
    with pytest.raises(mc.MismatchError, match="w: saved float32"):
        mt.load({"w": torch.zeros(3, 2)}, tmp_path / "t")


def test_values_are_json_never_pickle(tmp_path):
    with pytest.raises(ValueError, match="cannot store"):
        mt.save({"f": lambda: 0}, tmp_path / "t")
    with pytest.raises(ValueError, match="CPU"):
        mt.save({"t": torch.zeros(2, device="meta")}, tmp_path / "m")
    mt.save({"a": 1}, tmp_path / "ok")
    # A checkpoint written without meshckpt.torch is refused with a reason.
    mesh = mc.Mesh([("x", 1)])
    mc.Checkpoint(mesh, v=mc.Variable(torch.zeros(2), mesh=mesh)).write(tmp_path / "plain")
    with pytest.raises(ValueError, match="not written by meshckpt.torch"):
        mt.load({}, tmp_path / "plain")


def run_mpi(n, mode, path):
    cmd = mpirun() + ["-np", str(n), sys.executable, os.path.join(HERE, "mpi_torch.py"), mode, str(path)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=dict(os.environ))
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count(f"{mode} ok") == n, r.stdout


@pytest.mark.skipif(mpirun() is None, reason="needs mpirun")
def test_four_ranks_save_one_checkpoint_that_two_ranks_and_one_process_load(tmp_path):
    path = tmp_path / "ranks4"
    run_mpi(4, "save", path)
    data_files = [f for f in os.listdir(tmp_path) if f.startswith("ranks4.data-")]
    assert len(data_files) == 4, data_files  # every rank wrote its part
    run_mpi(2, "load", path)
    # One process, no MPI: the whole state.
    got = {}
    mt.load(got, path)
    assert got["epoch"] == 1 and got["emb"].dtype == torch.bfloat16


@pytest.mark.skipif(mpirun() is None, reason="needs mpirun")
def test_two_ranks_save_and_four_load(tmp_path):
    run_mpi(2, "save", tmp_path / "ranks2")
    run_mpi(4, "load", tmp_path / "ranks2")


def test_the_example_trainer_resumes_exactly_where_it_stopped(tmp_path):
    trainer = os.path.join(HERE, "..", "..", "examples", "python", "trainer.py")

    def train(d, steps):
        r = subprocess.run([sys.executable, trainer, "--dir", str(d), "--steps", str(steps)], capture_output=True,
                           text=True, timeout=300, env=dict(os.environ))
        assert r.returncode == 0, r.stdout + r.stderr
        return r.stdout

    train(tmp_path / "straight", 100)
    train(tmp_path / "resumed", 60)
    assert "resumed from" in train(tmp_path / "resumed", 100)
    a, b = {}, {}
    mt.load(a, tmp_path / "straight" / "ckpt-100")
    mt.load(b, tmp_path / "resumed" / "ckpt-100")
    assert a["step"] == b["step"] == 100
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    assert sorted(os.listdir(tmp_path / "resumed")).count("ckpt-100.manifest") == 1


def test_the_torchrun_trainer_starts_from_a_pt_and_resumes_on_another_world_size(tmp_path):
    """examples/python/torchrun_trainer.py under torchrun (gloo): 2 ranks from a .pt for 60
    steps, resumed on 4 ranks to 100, equals 2 ranks straight to 100."""
    trainer = os.path.join(HERE, "..", "..", "examples", "python", "torchrun_trainer.py")
    torch.manual_seed(1)
    init = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.Tanh(), torch.nn.Linear(64, 1))
    torch.save(init.state_dict(), tmp_path / "init.pt")

    def torchrun(world, d, steps, *extra):
        # What torchrun gives each rank (its own launcher fails under Python 3.11 with torch 1.13).
        import random
        port = str(random.randint(20000, 40000))
        procs = [subprocess.Popen([sys.executable, trainer, "--dir", str(d), "--steps", str(steps), *extra],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  env=dict(os.environ, OMP_NUM_THREADS="1", RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(world),
                                           MASTER_ADDR="127.0.0.1", MASTER_PORT=port))
                 for r in range(world)]
        outs = [p.communicate(timeout=300) for p in procs]
        for p, (out, err) in zip(procs, outs):
            assert p.returncode == 0, out[-2000:] + err[-4000:]
        return outs[0][0]

    assert "started from" in torchrun(2, tmp_path / "resumed", 60, "--init", str(tmp_path / "init.pt"))
    assert "resumed from" in torchrun(4, tmp_path / "resumed", 100)
    torchrun(2, tmp_path / "straight", 100, "--init", str(tmp_path / "init.pt"))
    a, b = {}, {}
    mt.load(a, tmp_path / "straight" / "ckpt-100")
    mt.load(b, tmp_path / "resumed" / "ckpt-100")
    assert a["step"] == b["step"] == 100
    for k, v in a["model"].items():
        assert torch.allclose(v, b["model"][k], atol=1e-5), k  # 2 and 4 ranks sum the gradients in other orders
    # The .pt was the start: a run from the trainer's own seed ends elsewhere.
    torchrun(2, tmp_path / "seed", 100)
    c = {}
    mt.load(c, tmp_path / "seed" / "ckpt-100")
    assert not torch.allclose(c["model"]["0.weight"], a["model"]["0.weight"], atol=1e-3)
