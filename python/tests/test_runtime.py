"""The GIL is released while a save copies, hashes and writes; Ctrl-C during a blocking save
stops it cleanly; interpreter exit waits for saves in flight."""

import os
import threading
import time

import numpy as np

import meshckpt as mc
from conftest import cli, run_python


def test_a_python_thread_runs_while_a_save_copies_and_writes(tmp_path, mesh1):
    big = np.ones(256 << 20, np.uint8)  # 256 MiB: the snapshot copy and the writes take a while
    ckpt = mc.Checkpoint(mesh1, v=mc.Variable(big, mesh=mesh1))
    ticks, stop = [], threading.Event()

    def ticker():
        while not stop.is_set():
            ticks.append(time.perf_counter())
            time.sleep(0.001)

    t = threading.Thread(target=ticker)
    t.start()
    time.sleep(0.05)
    start = time.perf_counter()
    ckpt.save(tmp_path / "g")
    end = time.perf_counter()
    stop.set()
    t.join()
    during = [x for x in ticks if start <= x <= end]
    gaps = np.diff([start] + during + [end])
    # With the GIL held through the copy or the IO, the ticker would stop for all of it.
    assert len(during) >= 10, f"{len(during)} ticks in a {end - start:.3f} s save"
    assert gaps.max() < max(0.5 * (end - start), 0.05), f"longest pause {gaps.max():.3f} s of {end - start:.3f} s"


CTRL_C = r"""
import os, signal, sys, threading, numpy as np, meshckpt as mc
# Python leaves SIGINT ignored when its parent did (a job started with & by a shell without job
# control): the test needs the KeyboardInterrupt handler whatever it inherits.
signal.signal(signal.SIGINT, signal.default_int_handler)
d = sys.argv[1]
mesh = mc.Mesh([("x", 1)])
for size in (512 << 20, 1 << 30, 2 << 30):
    a = np.ones(size, np.uint8)
    ckpt = mc.Checkpoint(mesh, options=mc.CheckpointOptions(snapshot=False), v=mc.Variable(a, mesh=mesh))
    timer = threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        path = ckpt.save(os.path.join(d, "ckpt"))
    except KeyboardInterrupt:
        print("interrupted", ckpt.save_counter, flush=True)
        break
    timer.cancel()
    timer.join()
    print("committed before the interrupt:", path, flush=True)
    for f in os.listdir(d):
        os.remove(os.path.join(d, f))
else:
    sys.exit("every save finished before the interrupt")
# The next save works and replaces nothing half-written.
print("next", ckpt.save(os.path.join(d, "ckpt")), flush=True)
"""


def test_ctrl_c_during_a_blocking_save_cancels_it_and_leaves_nothing(tmp_path):
    r = run_python(CTRL_C, tmp_path, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "interrupted" in r.stdout, r.stdout
    files = sorted(os.listdir(tmp_path))
    # Only the second save's files: the interrupted one left no data file, no manifest.
    n = int(r.stdout.split("next ")[1].split("ckpt-")[1])
    assert all(f.startswith(f"ckpt-{n}") or f in ("checkpoint", "meshckpt.lock") for f in files), files
    if cli():
        import subprocess
        v = subprocess.run([cli(), "verify", str(tmp_path / f"ckpt-{n}")], capture_output=True, text=True)
        assert v.returncode == 0, v.stdout + v.stderr


EXIT = r"""
import sys, numpy as np, meshckpt as mc
mesh = mc.Mesh([("x", 1)])
ckpt = mc.Checkpoint(mesh, v=mc.Variable(np.ones(64 << 20, np.uint8), mesh=mesh))
f = ckpt.save_async(sys.argv[1] + "/ckpt")
print("started", flush=True)
# The interpreter exits with the save in flight: atexit waits for it.
"""


def test_the_interpreter_exits_after_saves_in_flight_complete(tmp_path):
    r = run_python(EXIT, tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (tmp_path / "ckpt-1.manifest").exists()


REAPER = r"""
import os, sys, time, numpy as np, meshckpt as mc
mesh = mc.Mesh([("x", 1)])
ckpt = mc.Checkpoint(mesh, v=mc.Variable(np.ones(16 << 20, np.uint8), mesh=mesh))
path = ckpt.save(sys.argv[1] + "/ckpt")
ckpt.restore_async(path)
del ckpt  # the restore's completion, on a library thread, drops the last reference to it


def threads():
    return [open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task")]


deadline = time.monotonic() + 30
while "meshckpt-reaper" not in threads():
    if time.monotonic() > deadline:
        sys.exit(f"no reaper thread: {threads()}")
    time.sleep(0.01)
print("reaper running", flush=True)
"""


def test_the_interpreter_exits_while_the_reaper_thread_waits(tmp_path):
    # A checkpoint released inside a completion is deleted on the reaper thread, which then
    # waits for more work for the rest of the process. Exit used to hang in the static
    # destructors, after the interpreter had finalized: glibc's pthread_cond_destroy waited for
    # the reaper to leave the condition variable it waits on.
    r = run_python(REAPER, tmp_path, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "reaper running" in r.stdout
