"""Shared fixtures of the Python suite (run by ctest as test_python, with the package from the
build tree on PYTHONPATH)."""

import faulthandler
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import meshckpt as mc


def pytest_sessionfinish(session, exitstatus):
    """The interpreter must exit soon after the last test. If it hangs in Python (a thread
    joined at shutdown, the exit drain `_C._drain`), every thread's Python stack is printed
    after 120 s and the process exits with a failure. A hang after the interpreter has
    finalized (in C++ static destructors, as the reaper's condition variable once did: see
    test_runtime.py) is past this watchdog: ctest's timeout ends it."""
    faulthandler.dump_traceback_later(120, exit=True)


@pytest.fixture
def mesh1():
    return mc.Mesh([("x", 1)])


@pytest.fixture
def mesh_x2y2():
    return mc.Mesh([("x", 2), ("y", 2)])


def pattern(shape, dtype, seed=0):
    """Deterministic data of any numpy dtype."""
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape)) if shape else 1
    dt = np.dtype(dtype)
    if dt == np.bool_:
        return (rng.integers(0, 2, n) == 1).reshape(shape)
    raw = rng.integers(0, 256, n * dt.itemsize, dtype=np.uint8)
    a = raw.view(dt).reshape(shape).copy()
    if dt.kind == "f":
        a[~np.isfinite(a)] = 1.5  # NaN payloads compare unequal
    return a


def run_python(code, *args, timeout=120, env_extra=None):
    """Runs `code` in a fresh Debian python3 with the package importable; returns the process."""
    env = dict(os.environ)
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env)


def mpirun():
    """The mpirun command prefix, or None when MPI's launcher is missing."""
    exe = os.environ.get("MPIEXEC") or shutil.which("mpirun")
    if not exe:
        return None
    cmd = [exe, "--oversubscribe", "--mca", "mpi_yield_when_idle", "1"]
    if os.geteuid() == 0:
        cmd.append("--allow-run-as-root")
    return cmd


def cli():
    return os.environ.get("MESHCKPT_CLI")
