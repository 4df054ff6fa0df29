#!/usr/bin/env bash
# Multi-process saves on s3:// (ctest: mpi_s3), against the suite's Ceph RGW: examples/multi_process
# saves from 4 ranks, each uploading its own data object, with one manifest; restores onto 2
# and 1 process in the same job, then in separate jobs of 2 and 1; `meshckpt verify` passes.
#   mpi_s3_test.sh MPIRUN MULTI_PROCESS CLI RGW_DIR
set -euo pipefail
MPIRUN=$1 MULTI=$2 CLI=$3 RGW=$4
set -a; . "$RGW/env"; set +a
flags=(--oversubscribe --mca mpi_yield_when_idle 1)
[[ $(id -u) -eq 0 ]] && flags+=(--allow-run-as-root)
fail() { echo "FAIL: $*" >&2; exit 1; }
DIR="s3://meshckpt-test/mpi-$$-$(date +%s%N)"

out=$("$MPIRUN" "${flags[@]}" -np 4 "$MULTI" --dir "$DIR" --timeout-ms 60000 2>&1) || fail "save from 4 ranks: $out"
echo "$out"
grep -q "saved $DIR/ckpt.manifest from 4 processes" <<<"$out" || fail "no commit by 4 processes"
grep -q "4 data files" <<<"$out" || fail "expected one data object per rank"
for n in 2 1; do
  out=$("$MPIRUN" "${flags[@]}" -np $n "$MULTI" --dir "$DIR" --restore-only 2>&1) || fail "restore by $n: $out"
  grep -q "every value on every process matches" <<<"$out" || fail "restore by $n: $out"
done
out=$("$CLI" verify "$DIR" 2>&1) || fail "verify: $out"
echo "$out"
grep -q "^ok .*$DIR/ckpt .*4 data files" <<<"$out" || fail "verify: $out"
echo "mpi_s3: passed"
