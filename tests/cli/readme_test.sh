#!/usr/bin/env bash
# The README's C++ code blocks compile: each ```cpp block is a whole translation unit, compiled
# (syntax and semantics, no link) against the public headers as a user of the package would.
set -u
SRC=$1 CXX=$2 WORK=$3
rm -rf "$WORK" && mkdir -p "$WORK"
python3 - "$SRC/README.md" "$WORK" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
blocks = re.findall(r"```cpp\n(.*?)```", text, re.S)
for i, b in enumerate(blocks):
    open(f"{sys.argv[2]}/block{i}.cpp", "w").write(b)
print(len(blocks), "blocks")
PY
fails=0 n=0
for f in "$WORK"/block*.cpp; do
  n=$((n + 1))
  if ! "$CXX" -std=c++20 -fsyntax-only -I"$SRC/include" -I"$SRC/io_backends/posix/include" -I"$SRC/io_backends/uring/include" "$f" 2> "$f.err"; then
    echo "FAIL: $(basename "$f") does not compile:"; head -20 "$f.err"; fails=$((fails + 1))
  fi
done
echo "$((n - fails)) of $n README blocks compile"
[ $n -gt 0 ] && [ $fails -eq 0 ]
