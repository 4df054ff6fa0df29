#!/usr/bin/env bash
# A trainer killed (SIGKILL) mid-run and restarted on the same directory ends with exactly the
# state of a run that was never interrupted — for the coroutine and the blocking trainer.
set -u
CORO=$1 BLOCKING=$2 WORK=$3
fails=0 passes=0
check() { local name=$1; shift; if "$@"; then passes=$((passes + 1)); else echo "FAIL: $name"; fails=$((fails + 1)); fi; }
digest() { grep -o 'state digest [0-9a-f]*' <<<"$1" | awk '{print $3}'; }

rm -rf "$WORK" && mkdir -p "$WORK"
for trainer in "$CORO" "$BLOCKING"; do
  name=$(basename "$trainer")
  straight=$("$trainer" --dir "$WORK/$name-straight" --until 23 --every 5 --quiet)
  check "$name uninterrupted run" test $? -eq 0
  "$trainer" --dir "$WORK/$name-killed" --until 23 --every 5 --kill-at 13 --quiet >/dev/null 2>&1
  rc=$?
  check "$name was killed" test $rc -eq 137
  resumed=$("$trainer" --dir "$WORK/$name-killed" --until 23 --every 5 --quiet)
  check "$name resumed run" test $? -eq 0
  check "$name resumed from a committed checkpoint (step 5 or 10)" grep -Eq "resumed from .*ckpt-(1 at step 5|2 at step 10)" <<<"$resumed"
  check "$name identical final state" test "$(digest "$straight")" = "$(digest "$resumed")"
  check "$name digest present" test -n "$(digest "$straight")"
done
echo "$passes passed, $fails failed"
[ $fails -eq 0 ]
