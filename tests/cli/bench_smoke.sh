#!/usr/bin/env bash
# Smoke test of `meshckpt bench` (not a measurement): the small and convert workloads once, JSON
# fields present and sane. Timings are never asserted.
set -u
CLI=$1 WORK=$2
rm -rf "$WORK"
out=$("$CLI" bench --dir "$WORK" --workload small --reps 1 --json) || { echo "FAIL: bench exited $?"; exit 1; }
python3 - "$out" <<'PY' || exit 1
import json, sys
d = json.loads(sys.argv[1])
assert len(d) == 1, d
f = d[0]
for k in ["workload", "bytes", "tensors", "save_MiBps", "restore_MiBps", "fio_write_MiBps", "fio_read_MiBps", "save_vs_fio",
          "restore_vs_fio", "stall_s", "memcpy_s", "lazy_stall_s", "compute_ratio", "restore_one_device_MiBps", "restore_one_device_vs_fio",
          "peak_rss_bytes", "rss_before_bytes", "snapshot_bytes"]:
    assert k in f, k
assert f["workload"] == "small" and f["tensors"] == 20000 and f["bytes"] == 20000 * 4096
assert f["save_MiBps"] > 0 and f["restore_MiBps"] > 0 and f["peak_rss_bytes"] > 0
PY
# The convert workload, small: every conversion measured, the outputs removed.
out=$("$CLI" bench --dir "$WORK" --workload convert --reps 1 --size 16 --json) || { echo "FAIL: bench convert exited $?"; exit 1; }
python3 - "$out" <<'PY' || exit 1
import json, sys
d = json.loads(sys.argv[1])
assert len(d) == 1 and d[0]["workload"] == "convert", d
f = d[0]
assert f["bytes"] == 16 << 20 and f["tensors"] == 1
for k in ["import_MiBps", "import_tf_MiBps", "export_MiBps", "export_tf_MiBps", "restore_MiBps", "import_vs_restore", "import_tf_vs_restore"]:
    assert f[k] > 0, k
for k in ["fio_write_MiBps", "import_vs_fio", "import_tf_vs_fio", "export_vs_fio", "export_tf_vs_fio", "cold_cache"]:
    assert k in f, k
PY
left=$(ls "$WORK" | grep -v '^meshckpt.lock$')
[ -z "$left" ] || { echo "FAIL: bench convert left files: $left"; exit 1; }
"$CLI" bench --dir "$WORK" --workload nope >/dev/null 2>&1; [ $? -eq 2 ] || { echo "FAIL: unknown workload accepted"; exit 1; }
"$CLI" bench >/dev/null 2>&1; [ $? -eq 2 ] || { echo "FAIL: missing --dir accepted"; exit 1; }
rm -rf "$WORK"
echo "4 passed, 0 failed"
