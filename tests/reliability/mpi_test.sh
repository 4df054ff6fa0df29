#!/usr/bin/env bash
# Multi-process checkpoints over MPI (ctest: mpi_multi_process).
#   mpi_test.sh MPIRUN MULTI_PROCESS MPI_FAULTS WORKDIR [MESHCKPT_CLI]
# 1. examples/multi_process saves from 4 ranks and restores onto 2 and 1 (other mesh, other
#    layouts); then the same checkpoint is restored by separate jobs of 2 and 1 processes.
# 2. Fault scenarios with 4 ranks (tests/reliability/mpi_faults.cpp): one rank's IO fails (a non-root and
#    the root), one rank is late, one rank is killed (a non-root and the root). Each must end
#    well within its time limit (0 hangs); every rank that hears the outcome must report the
#    same error; afterwards the previous checkpoint restores exactly (0 partial commits) and the
#    next save leaves no leftover.
set -euo pipefail
MPIRUN=$1 MULTI=$2 FAULTS=$3 WORK=$4 CLI=${5:-}
rm -rf "$WORK"
mkdir -p "$WORK"
flags=(--oversubscribe)
[[ $(id -u) -eq 0 ]] && flags+=(--allow-run-as-root)
# Idle ranks would otherwise spin in MPI calls and starve the busy ones on a 2-core machine.
flags+=(--mca mpi_yield_when_idle 1)

fail() { echo "FAIL: $*" >&2; exit 1; }

echo "== example: save from 4 ranks, restore onto 2 and 1"
"$MPIRUN" "${flags[@]}" -np 4 "$MULTI" --dir "$WORK/example" --timeout-ms 60000
echo "== example: restore by a job of 2 processes, then of 1"
"$MPIRUN" "${flags[@]}" -np 2 "$MULTI" --dir "$WORK/example" --restore-only
"$MPIRUN" "${flags[@]}" -np 1 "$MULTI" --dir "$WORK/example" --restore-only

if [[ -n $CLI ]]; then
  echo "== meshckpt export --shards processes: one safetensors shard per writing process"
  "$CLI" export "$WORK/example/ckpt" --to safetensors "$WORK/per-process" --shards processes
  n=$(ls "$WORK"/per-process/model-*-of-00004.safetensors | wc -l)
  [[ $n -eq 4 ]] || fail "expected 4 per-process shards, found $n"
  "$CLI" import "$WORK/per-process/model.safetensors.index.json" --to "$WORK/per-process-import"
  "$CLI" diff "$WORK/example/ckpt" "$WORK/per-process-import" > "$WORK/per-process-diff.txt" || true
  grep -q "^0 tensor(s) differ" "$WORK/per-process-diff.txt" ||
    fail "the per-process export does not round-trip: $(cat "$WORK/per-process-diff.txt")"
fi

timeout_ms=1500
limit=120  # seconds; a scenario that takes longer counts as a hang
scenarios=0 hangs=0 partial=0
for s in "io 2" "io 0" "delay 3" "kill 1" "kill 0"; do
  set -- $s
  fault=$1 victim=$2
  dir="$WORK/fault-$fault-$victim"
  mkdir -p "$dir"
  echo "== fault: $fault on rank $victim (coordination timeout ${timeout_ms} ms)"
  start=$(date +%s%N)
  set +e
  timeout $limit "$MPIRUN" "${flags[@]}" -np 4 "$FAULTS" --dir "$dir" --fault "$fault" --victim "$victim" --timeout-ms $timeout_ms \
    > "$dir/mpirun.log" 2>&1
  rc=$?
  set -e
  took=$(( ($(date +%s%N) - start) / 1000000 ))
  grep '^rank' "$dir/mpirun.log" || true
  echo "   mpirun exit $rc after $took ms"
  scenarios=$((scenarios + 1))
  if [[ $rc -eq 124 ]]; then hangs=$((hangs + 1)); fail "$fault on rank $victim: mpirun still running after ${limit}s"; fi
  # Same outcome on every rank that reported one.
  results=$(cat "$dir"/result-* 2>/dev/null | sort -u || true)
  n_files=$(find "$dir" -maxdepth 1 -name "result-*" | wc -l)
  case $fault in
    io|delay)
      [[ $rc -eq 0 ]] || fail "$fault: mpirun exit $rc"
      [[ $n_files -eq 4 ]] || fail "$fault: $n_files of 4 ranks reported an outcome"
      [[ $(printf '%s\n' "$results" | wc -l) -eq 1 ]] || fail "$fault: ranks disagree: $results"
      [[ $results == error* ]] || fail "$fault: the save did not fail: $results"
      [[ $results == *"process $victim"* || $results == *"rank(s) $victim"* ]] || fail "$fault: the error does not name rank $victim: $results"
      ;;
    kill)
      [[ $rc -ne 0 ]] || fail "kill: mpirun reported success"
      if [[ $n_files -gt 0 ]]; then
        [[ $(printf '%s\n' "$results" | wc -l) -eq 1 ]] || fail "kill: the surviving ranks disagree: $results"
        [[ $results == error* ]] || fail "kill: a surviving rank reports success: $results"
      fi
      echo "   $n_files surviving rank(s) reported before mpirun ended the job"
      ;;
  esac
  # The previous checkpoint (seed 1) is what a restore sees: no partial commit.
  if ! "$FAULTS" --dir "$dir" --check 1; then partial=$((partial + 1)); fail "$fault on rank $victim: the previous checkpoint is not intact"; fi
done
echo "MPI faults: $scenarios scenarios, $partial partial commits, $hangs hangs, the same error on every rank that heard the outcome"
