"""The Python benchmark runs end to end (tiny workloads; figures belong to the real run)."""

import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def test_the_python_benchmark_runs_and_reports_every_peer(tmp_path):
    bench = os.path.join(HERE, "..", "benchmarks", "bench.py")
    r = subprocess.run([sys.executable, bench, "--dir", str(tmp_path), "--smoke", "--reps", "1", "--json"],
                       capture_output=True, text=True, timeout=300, env=dict(os.environ))
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert [row["workload"] for row in rows] == ["large", "small"]
    for row in rows:
        for peer in ("meshckpt (Python)", "meshckpt.torch save/load", "meshckpt.torch.Checkpointer", "torch.save",
                     "numpy.savez", "h5py"):
            assert row[peer]["save_MiBps"] > 0 and row[peer]["load_MiBps"] > 0
        assert row["meshckpt.torch.Checkpointer ratios"]["save_vs_torch"] > 0
        assert ("torch DCP" in row) != bool(row["dcp_missing"])  # measured, or the reason it is not
    assert os.listdir(tmp_path) in ([], ["meshckpt.lock"])  # every checkpoint it wrote is gone
