#!/usr/bin/env bash
# Smoke test of `meshckpt bench` (not a measurement): the small workload once, JSON fields
# present and sane. Timings are never asserted.
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
"$CLI" bench --dir "$WORK" --workload nope >/dev/null 2>&1; [ $? -eq 2 ] || { echo "FAIL: unknown workload accepted"; exit 1; }
"$CLI" bench >/dev/null 2>&1; [ $? -eq 2 ] || { echo "FAIL: missing --dir accepted"; exit 1; }
rm -rf "$WORK"
echo "3 passed, 0 failed"
