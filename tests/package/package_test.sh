#!/usr/bin/env bash
# The installable package: `cmake --install` of this (static) build, a consumer project built
# with find_package(meshckpt) and another with pkg-config; then a shared build of the same
# sources installed and consumed the same way, whose dynamic symbols must be namespace meshckpt
# only. Each consumer saves, restores into another layout and verifies (tests/package/).
set -u
SRC=$1 BUILD=$2 WORK=$3
JOBS=${JOBS:-$(nproc)}
fails=0 passes=0
check() {  # check NAME COMMAND...
  local name=$1; shift
  if "$@"; then passes=$((passes + 1)); else echo "FAIL: $name"; fails=$((fails + 1)); fi
}
quiet() { "$@" > "$WORK/last.log" 2>&1 || { tail -30 "$WORK/last.log"; return 1; }; }
rm -rf "$WORK" && mkdir -p "$WORK"

consume() {  # consume NAME PREFIX: find_package and pkg-config consumers against PREFIX
  local name=$1 prefix=$2
  check "$name: cmake consumer configures" quiet cmake -S "$SRC/tests/package" -B "$WORK/$name-consumer" -G Ninja -DCMAKE_PREFIX_PATH="$prefix"
  check "$name: cmake consumer builds" quiet cmake --build "$WORK/$name-consumer"
  mkdir -p "$WORK/$name-run1" "$WORK/$name-run2"
  check "$name: cmake consumer runs" quiet "$WORK/$name-consumer/consumer" "$WORK/$name-run1"
  check "$name: pkg-config consumer builds" quiet bash -c "g++ -o '$WORK/$name-pc' '$SRC/tests/package/consumer.cpp' \
    \$(PKG_CONFIG_PATH='$prefix/lib/pkgconfig' pkg-config --cflags --libs meshckpt) -Wl,-rpath,'$prefix/lib'"
  check "$name: pkg-config consumer runs" quiet "$WORK/$name-pc" "$WORK/$name-run2"
}

# Static: the build this test belongs to.
check "static: cmake --install" quiet cmake --install "$BUILD" --prefix "$WORK/static"
check "static: headers installed" test -f "$WORK/static/include/meshckpt/api/checkpoint.hpp" -a -f "$WORK/static/include/meshckpt/backends/uring.hpp"
check "static: package config installed" test -f "$WORK/static/lib/cmake/meshckpt/meshckptConfig.cmake"
check "static: CLI installed" quiet "$WORK/static/bin/meshckpt" --version
consume static "$WORK/static"
# The Python package, when this build has it: installed where Debian's python3 looks under the
# prefix, importable from there, and working (a save and a restore).
pkg=$(ls -d "$WORK"/static/lib/python3*/dist-packages/meshckpt 2>/dev/null | head -1)
if [ -d "$BUILD/python/meshckpt" ]; then
  check "static: Python package installed" test -n "$pkg"
  check "static: installed Python package saves and restores" quiet env PYTHONPATH="$(dirname "$pkg")" /usr/bin/python3 -c "
import sys, numpy as np, meshckpt as mc
assert mc.__file__.startswith('$WORK/static'), mc.__file__
m = mc.Mesh([('x', 1)]); a = np.arange(10.0); b = np.zeros(10)
mc.Checkpoint(m, v=mc.Variable(a, mesh=m)).write('$WORK/py-ckpt')
mc.Checkpoint(m, v=mc.Variable(b, mesh=m)).read('$WORK/py-ckpt').assert_consumed()
assert (a == b).all()"
fi

# Shared: the library alone, from the same sources.
check "shared: configure" quiet cmake -S "$SRC" -B "$WORK/shared-build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON \
  -DMESHCKPT_BUILD_TESTS=OFF -DMESHCKPT_BUILD_EXAMPLES=OFF -DMESHCKPT_PYTHON=OFF -DMESHCKPT_CUDA=OFF
check "shared: build" quiet cmake --build "$WORK/shared-build" -j "$JOBS" --target meshckpt meshckpt_cli
check "shared: install" quiet cmake --install "$WORK/shared-build" --prefix "$WORK/shared"
so=$(ls "$WORK"/shared/lib/libmeshckpt.so.* 2>/dev/null | head -1)
check "shared: libmeshckpt.so installed" test -n "$so"
check "shared: no static libraries installed" test -z "$(ls "$WORK"/shared/lib/*.a 2>/dev/null)"
if [ -n "$so" ]; then
  nm -D --defined-only "$so" | c++filt > "$WORK/symbols.txt"
  check "shared: exports the API" grep -qF "meshckpt::write_tensors(" "$WORK/symbols.txt"
  check "shared: exports the Checkpoint class" grep -qF "meshckpt::checkpoint::create(" "$WORK/symbols.txt"
  foreign=$(awk '{ $1 = ""; $2 = ""; print }' "$WORK/symbols.txt" | sed 's/^ *//' | grep -v "meshckpt::" | grep -vE '^(_init|_fini|MESHCKPT_|_edata|_end|__bss_start)' | head -5)
  check "shared: exports nothing outside namespace meshckpt (e.g. Asio, xxHash): ${foreign:-none}" test -z "$foreign"
  check "shared: exports no Boost symbols" test -z "$(grep -E ' boost::' "$WORK/symbols.txt" | grep -v 'meshckpt::' | head -1)"
fi
consume shared "$WORK/shared"
check "shared: the consumer uses libmeshckpt.so" bash -c "ldd '$WORK/shared-consumer/consumer' | grep -q libmeshckpt.so"

echo "$passes passed, $fails failed"
[ $fails -eq 0 ]
