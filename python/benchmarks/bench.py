"""The Python benchmark: meshckpt from Python (its Checkpoint API and meshckpt.torch) against
the C++ calls that `meshckpt bench` times and Python's usual checkpointers (torch.save,
numpy.savez, h5py, PyTorch DCP where it imports), on the large and small workloads of
BENCHMARKS.md, in one run. Every save is durable (fsync), every restore cold (page
cache dropped, as root) and complete (every byte in memory). Medians of --reps repetitions.

The C++ baseline runs in this process, on the same variables: `write_tensors` and
`read_tensors`, called through the extension with the GIL released and no Python in between.
It alternates with the Python API's save and restore inside each repetition (first one, then
the other, swapped every repetition), so their ratio is what the binding costs, not how this
machine's disk drifts between minutes or processes. fio (when installed) measures the disk in
each repetition of the large workload, as `meshckpt bench` does.

    python3 python/benchmarks/bench.py --dir /var/tmp/bench [--reps 3] [--json]
    python3 python/benchmarks/bench.py --dir /tmp/x --smoke     # tiny sizes
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

import h5py
import numpy as np
import torch

import meshckpt as mc
import meshckpt.torch as mt

LAYOUTS = [["x", "y"], ["y", "x"], ["x", "unsharded"], ["unsharded", "unsharded"]]


def drop_caches():
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def fsync_path(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    dfd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def workload(name, smoke):
    """(global arrays by key, layout spec by key) of BENCHMARKS.md's workload."""
    rng = np.random.default_rng(0)
    arrays, specs = {}, {}
    if name == "large":
        n, side = (32, 256) if smoke else (32, 4096)
        for i in range(n):
            arrays[f"layer{i}/w"] = rng.standard_normal((side, side), dtype=np.float32)
            specs[f"layer{i}/w"] = LAYOUTS[i % 4]
    else:
        n = 500 if smoke else 20000
        block = rng.standard_normal((n, 1024), dtype=np.float32)
        for i in range(n):
            arrays[f"t{i}"] = block[i]
            specs[f"t{i}"] = ["y"] if i % 10 == 0 else ["unsharded"]
    return arrays, specs


def timed(f):
    t0 = time.perf_counter()
    f()
    return time.perf_counter() - t0


class MeshckptPeer:
    name = "meshckpt (Python)"

    def __init__(self, arrays, specs):
        self.mesh = mc.Mesh([("x", 2), ("y", 4)])
        self.root = mc.Module()
        self.vars = {}
        for k, a in arrays.items():
            v = mc.Variable.zeros(a.shape, "float32", mc.Layout(specs[k], self.mesh))
            v.assign(a)
            self.root[k] = v
            self.vars[k] = v
        # The same operation as the C++ bench's (a durable write of the tensors as they are), so
        # the ratio is the binding's cost: no snapshot copy first (the default mode's extra).
        self.ckpt = mc.Checkpoint(self.mesh, self.root, options=mc.CheckpointOptions(snapshot=False))

    def save(self, path):
        self.ckpt.write(path)

    def load(self, path):
        self.ckpt.read(path).assert_consumed()

    def cpp_save(self, path):
        mc._C._cpp_write_tensors(path, list(self.vars.items()))

    def cpp_load(self, path):
        mc._C._cpp_read_tensors(path, list(self.vars.items()))

    def remove(self, path):
        d, base = os.path.split(path)
        for f in os.listdir(d):
            if f.startswith(base + "."):
                os.remove(os.path.join(d, f))


class TorchPeer:
    name = "torch.save"

    def __init__(self, arrays, specs):
        self.sd = {k: torch.from_numpy(a) for k, a in arrays.items()}

    def save(self, path):
        with open(path, "wb") as f:
            torch.save(self.sd, f)
            f.flush()
            os.fsync(f.fileno())
        fsync_path(path)

    def load(self, path):
        torch.load(path)

    def remove(self, path):
        os.remove(path)


def remove_prefix(path):
    d, base = os.path.split(path)
    for f in os.listdir(d):
        if f.startswith(base + "."):
            os.remove(os.path.join(d, f))


class TorchDoorPeer:
    """meshckpt.torch.save / load, as a new user calls them: a new state dict each load (as
    torch.load makes), nothing reused between calls."""
    name = "meshckpt.torch save/load"

    def __init__(self, arrays, specs):
        self.sd = {k: torch.from_numpy(a) for k, a in arrays.items()}

    def save(self, path):
        mt.save(self.sd, path)

    def load(self, path):
        mt.load({}, path)

    remove = staticmethod(remove_prefix)


class CheckpointerPeer:
    """meshckpt.torch.Checkpointer, as a trainer uses it: one handle, numbered saves of the same
    state dict, loads into the trainer's tensors in place."""
    name = "meshckpt.torch.Checkpointer"

    def __init__(self, arrays, specs):
        self.sd = {k: torch.from_numpy(a) for k, a in arrays.items()}
        self.c = None
        self.step = 0

    def save(self, path):
        if self.c is None:
            self.c = mt.Checkpointer(os.path.dirname(path) + "/checkpointer", max_to_keep=None)
        self.step += 1
        self.path = self.c.save(self.sd, self.step)

    def load(self, path):
        self.c.load(self.sd, self.path)

    def remove(self, path):
        remove_prefix(self.path)

    def close(self):
        if self.c is not None:
            self.c.close()
            shutil.rmtree(self.c.directory, ignore_errors=True)


class DcpPeer:
    """PyTorch distributed checkpoint (torch 1.13: torch.distributed._shard.checkpoint), one
    process, FileSystemWriter/Reader; the files fsync'd as torch.save's are."""
    name = "torch DCP"

    def __init__(self, arrays, specs):
        # torch 1.13's DCP does not import under Python 3.11 (Debian 12's pair) without the
        # tests' aid, which makes its dataclasses' defaults hashable while it imports.
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
        from torch_dcp import import_dcp
        self.dcp = import_dcp()[0]
        self.sd = {k.replace("/", "."): torch.from_numpy(a) for k, a in arrays.items()}

    def save(self, path):
        os.makedirs(path, exist_ok=True)
        self.dcp.save_state_dict(self.sd, self.dcp.FileSystemWriter(path), no_dist=True)
        for f in os.listdir(path):
            fsync_path(os.path.join(path, f))

    def load(self, path):
        out = {k: torch.empty_like(v) for k, v in self.sd.items()}
        self.dcp.load_state_dict(out, self.dcp.FileSystemReader(path), no_dist=True)

    def remove(self, path):
        shutil.rmtree(path, ignore_errors=True)


def dcp_peer(arrays, specs):
    """A DcpPeer, or the reason there is none."""
    try:
        return DcpPeer(arrays, specs), None
    except Exception as e:  # noqa: BLE001  (any import failure is the reason)
        return None, f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"


class NumpyPeer:
    name = "numpy.savez"

    def __init__(self, arrays, specs):
        self.arrays = {k.replace("/", "."): a for k, a in arrays.items()}

    def save(self, path):
        with open(path, "wb") as f:
            np.savez(f, **self.arrays)
            f.flush()
            os.fsync(f.fileno())
        fsync_path(path)

    def load(self, path):
        with np.load(path) as z:
            for k in z.files:
                z[k]

    def remove(self, path):
        os.remove(path)


class H5Peer:
    name = "h5py"

    def __init__(self, arrays, specs):
        self.arrays = arrays

    def save(self, path):
        with h5py.File(path, "w") as f:
            for k, a in self.arrays.items():
                f.create_dataset(k, data=a)
            f.flush()
        fsync_path(path)

    def load(self, path):
        with h5py.File(path, "r") as f:
            for k in self.arrays:
                f[k][()]

    def remove(self, path):
        os.remove(path)


def fio_write(d, nbytes):
    """fio's sequential write of `nbytes` in MiB/s, configured as `meshckpt bench` runs it, or
    None without fio."""
    if not shutil.which("fio"):
        return None
    f = os.path.join(d, "fio.bench")
    r = subprocess.run(["fio", "--name=meshckpt", f"--filename={f}", "--rw=write", "--bs=1M",
                        f"--size={nbytes >> 20}M", "--ioengine=io_uring", "--iodepth=16", "--direct=1",
                        "--end_fsync=1", "--output-format=json"], capture_output=True, text=True)
    if os.path.exists(f):
        os.remove(f)
    if r.returncode != 0:
        return None
    return json.loads(r.stdout)["jobs"][0]["write"]["bw_bytes"] / (1 << 20)


def run(args):
    os.makedirs(args.dir, exist_ok=True)
    results = []
    cold = True
    for wname in ("large", "small"):
        arrays, specs = workload(wname, args.smoke)
        mib = sum(a.nbytes for a in arrays.values()) / (1 << 20)
        print(f"bench {wname}: {len(arrays)} tensors, {mib:.0f} MiB, {args.reps} repetitions", file=sys.stderr)
        peers = [MeshckptPeer(arrays, specs), TorchPeer(arrays, specs), TorchDoorPeer(arrays, specs),
                 CheckpointerPeer(arrays, specs), NumpyPeer(arrays, specs), H5Peer(arrays, specs)]
        dcp, dcp_missing = dcp_peer(arrays, specs)
        if dcp is not None:
            peers.append(dcp)
        times = {p.name: ([], []) for p in peers}
        cpp, fio = ([], []), []
        ours = peers[0]
        for rep in range(args.reps):
            written = []  # removed at the end of the repetition: the filesystem frees a
            # deleted file's extents in the background, which would slow the next timed save
            if wname == "large" and not args.smoke:
                fw = fio_write(args.dir, int(mib) << 20)
                if fw:
                    fio.append(fw)
            # The C++ baseline and the Python API take turns going first.
            pair = [(cpp, ours.cpp_save, ours.cpp_load, "cpp"), (times[ours.name], ours.save, ours.load, "py")]
            if rep % 2:
                pair.reverse()
            for dest, save, load, tag in pair:
                path = os.path.join(args.dir, f"{wname}-{tag}-{rep}")
                dest[0].append(timed(lambda: save(path)))
                cold = drop_caches() and cold
                dest[1].append(timed(lambda: load(path)))
                written.append((ours, path))
            for p in peers[1:]:
                path = os.path.join(args.dir, f"{wname}-{type(p).__name__}-{rep}")
                times[p.name][0].append(timed(lambda: p.save(path)))
                cold = drop_caches() and cold
                times[p.name][1].append(timed(lambda: p.load(path)))
                written.append((p, path))
            for p, path in written:
                p.remove(path)
            os.sync()
            time.sleep(2)
        for p in peers:
            if hasattr(p, "close"):
                p.close()
        row = {"workload": wname, "MiB": round(mib, 1), "tensors": len(arrays), "cold": cold,
               "fio_write_MiBps": statistics.median(fio) if fio else None, "dcp_missing": dcp_missing}
        for name, (s, l) in times.items():
            row[name] = {"save_MiBps": mib / statistics.median(s), "load_MiBps": mib / statistics.median(l)}
        row["meshckpt (C++)"] = {"save_MiBps": mib / statistics.median(cpp[0]), "load_MiBps": mib / statistics.median(cpp[1])}
        py = row["meshckpt (Python)"]
        base = row["meshckpt (C++)"]
        # Per repetition, then the median: each pair ran back to back on the same disk.
        row["python_vs_cpp"] = {"save": statistics.median(c / p for c, p in zip(cpp[0], times[ours.name][0])),
                                "load": statistics.median(c / p for c, p in zip(cpp[1], times[ours.name][1]))}
        row["vs_torch"] = {"save": py["save_MiBps"] / row["torch.save"]["save_MiBps"],
                           "load": py["load_MiBps"] / row["torch.save"]["load_MiBps"]}
        # meshckpt.torch against torch.save/torch.load and the C++ calls, from the medians.
        for name in ("meshckpt.torch save/load", "meshckpt.torch.Checkpointer"):
            r = row[name]
            row[name + " ratios"] = {
                "save_vs_torch": r["save_MiBps"] / row["torch.save"]["save_MiBps"],
                "load_vs_torch": r["load_MiBps"] / row["torch.save"]["load_MiBps"],
                "save_vs_cpp": r["save_MiBps"] / base["save_MiBps"],
                "load_vs_cpp": r["load_MiBps"] / base["load_MiBps"]}
            if "torch DCP" in row:
                row[name + " ratios"]["save_vs_dcp"] = r["save_MiBps"] / row["torch DCP"]["save_MiBps"]
                row[name + " ratios"]["load_vs_dcp"] = r["load_MiBps"] / row["torch DCP"]["load_MiBps"]
        results.append(row)
        del peers
    return results


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", required=True, help="a directory on the disk to measure (emptied afterwards)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--smoke", action="store_true", help="tiny workloads, no fio (for tests)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    results = run(args)
    if args.json:
        print(json.dumps(results, indent=1))
        return
    for row in results:
        print(f"\n{row['workload']}: {row['tensors']} tensors, {row['MiB']} MiB (durable saves, "
              f"{'cold' if row['cold'] else 'WARM'} restores), MiB/s"
              + (f"; fio write {row['fio_write_MiBps']:.0f} MiB/s" if row["fio_write_MiBps"] else ""))
        print(f"  {'peer':28} {'save':>9} {'load':>9}")
        for name in ("meshckpt (Python)", "meshckpt (C++)", "meshckpt.torch save/load", "meshckpt.torch.Checkpointer",
                     "torch.save", "torch DCP", "numpy.savez", "h5py"):
            if name in row:
                print(f"  {name:28} {row[name]['save_MiBps']:9.0f} {row[name]['load_MiBps']:9.0f}")
        if row.get("dcp_missing"):
            print(f"  torch DCP: not measured ({row['dcp_missing']})")
        for name in ("meshckpt.torch save/load", "meshckpt.torch.Checkpointer"):
            r = row[name + " ratios"]
            print(f"  {name} / torch.save: save {r['save_vs_torch']:.1f}x, load {r['load_vs_torch']:.1f}x; "
                  f"/ C++: save {r['save_vs_cpp']:.2f}x, load {r['load_vs_cpp']:.2f}x"
                  + (f"; / DCP: save {r['save_vs_dcp']:.1f}x, load {r['load_vs_dcp']:.1f}x" if "save_vs_dcp" in r else ""))
        if "python_vs_cpp" in row:
            print(f"  Python / C++ (median of per-repetition ratios): save {row['python_vs_cpp']['save']:.2f}x, load {row['python_vs_cpp']['load']:.2f}x")
        print(f"  meshckpt / torch.save: save {row['vs_torch']['save']:.1f}x, load {row['vs_torch']['load']:.1f}x")


if __name__ == "__main__":
    main()
