#!/usr/bin/env bash
# End-to-end test of the meshckpt CLI on a checkpoint written by the demo: inspect (text and
# JSON), verify (prefix, directory, damaged, empty, leftovers), usage errors and exit codes.
set -u
CLI=$1 DEMO=$2 TRAINER=$3 WORK=$4 FIXTURES=${5:-}
fails=0 passes=0
check() {  # check NAME CONDITION-COMMAND...
  local name=$1; shift
  if "$@"; then passes=$((passes + 1)); else echo "FAIL: $name"; fails=$((fails + 1)); fi
}
run() { out=$("$CLI" "$@" 2>&1); rc=$?; }
has() { grep -qF -- "$1" <<<"$out"; }

rm -rf "$WORK" && mkdir -p "$WORK/ck" "$WORK/empty"
"$DEMO" --dir "$WORK/ck" >/dev/null || { echo "FAIL: demo"; exit 1; }

run --help;                       check "help exits 0" test $rc -eq 0; check "help lists verify" has "verify PATH"
run --version;                    check "version" has "meshckpt 0."
run;                              check "no command is a usage error" test $rc -eq 2
run frobnicate x;                 check "unknown command" test $rc -eq 2; check "names it" has 'unknown command "frobnicate"'
run inspect;                      check "missing PATH" test $rc -eq 2
run inspect a b;                  check "extra PATH" test $rc -eq 2
run inspect x --bogus;            check "unknown option" test $rc -eq 2

run inspect "$WORK/ck/model"
check "inspect exits 0" test $rc -eq 0
check "inspect shows a sharded tensor" has "model/embedding/table    float32   [4096, 512]   [x, y]          x=2,y=4  8"
check "inspect shows an uneven tensor" has "model/layer_norm/scale   float16   [1022]        [y]"
check "inspect shows the blob" has "rng/state                blob      [64]          [unsharded]"
check "inspect summary" has "8 tensors, 25 slices, 1 data file"
run inspect "$WORK/ck/model.manifest"; check "inspect accepts NAME.manifest" test $rc -eq 0

run inspect "$WORK/ck/model" --json
check "inspect --json exits 0" test $rc -eq 0
if command -v python3 >/dev/null; then
  python3 - "$out" <<'PY'
import json, sys
d = json.loads(sys.argv[1])
assert set(d) >= {"prefix", "format", "writer", "created_unix_ms", "chunk_bytes", "stored_bytes", "files", "tensors"}, d.keys()
assert d["format"]["major"] == 1
assert len(d["tensors"]) == 8
for t in d["tensors"]:
    assert set(t) == {"key", "dtype", "shape", "layout", "mesh", "slices", "bytes"}, t.keys()
    assert len(t["shape"]) == len(t["layout"])
    assert [x["name"] for x in t["mesh"]["dims"]] == ["x", "y"]
    assert len(t["mesh"]["device_ids"]) == 8
assert sum(t["bytes"] for t in d["tensors"]) == d["stored_bytes"]
assert all(set(f) == {"name", "size"} for f in d["files"])
PY
  check "inspect --json schema" test $? -eq 0
fi

run inspect "$WORK/ck/nope";      check "inspect missing exits 1" test $rc -eq 1; check "says not found" has "not found"
run inspect "$WORK/ck";           check "inspect of a directory exits 1" test $rc -eq 1; check "lists checkpoints there" has "$WORK/ck/model"

run verify "$WORK/ck/model";      check "verify prefix exits 0" test $rc -eq 0; check "verify says ok" has "ok        $WORK/ck/model"
run verify "$WORK/ck";            check "verify dir exits 0" test $rc -eq 0
run verify "$WORK/empty";         check "verify empty dir exits 1" test $rc -eq 1; check "no checkpoint found" has "no checkpoint found in $WORK/empty"

touch "$WORK/ck/model.manifest.tmp-0123456789abcdef"
run verify "$WORK/ck";            check "leftovers do not fail verify" test $rc -eq 0; check "leftover reported" has "leftover  $WORK/ck/model.manifest.tmp-0123456789abcdef"
cp -r "$WORK/ck" "$WORK/onlyleft" && rm "$WORK/onlyleft/model.manifest"
run verify "$WORK/onlyleft";      check "only leftovers is no checkpoint" test $rc -eq 1; check "mentions leftovers" has "only leftovers"

data=$(ls "$WORK/ck"/model.data-*)
printf '\xff' | dd of="$data" bs=1 seek=100 conv=notrunc status=none
run verify "$WORK/ck/model";      check "damaged verify exits 1" test $rc -eq 1
check "names the damage" has "DAMAGED   $WORK/ck/model"
check "checksum mismatch in a tensor" has 'checksum mismatch in tensor "model/'
check "names the file" has "$(basename "$data")"
run verify "$WORK/ck" --json;     check "damaged --json exits 1" test $rc -eq 1; check "json ok false" has '"ok":false'

# show: the sharding picture (golden lines), replicas with the writer marked, scalars, errors.
run show "$WORK/ck/model" model/embedding/table
check "show exits 0" test $rc -eq 0
check "show header" has "model/embedding/table  float32 [4096, 512]  layout [x, y] on mesh x=2,y=4"
check "show counts slices" has "8 distinct slices, each held by 1 device (* wrote it)"
check "show grid row 0" has "|   d0*   |   d1*   |   d2*   |   d3*   |  rows 0:2048"
check "show grid row 1" has "|   d4*   |   d5*   |   d6*   |   d7*   |  rows 2048:4096"
check "show column ranges" has "   0:128    128:256   256:384   384:512  (columns)"
run show "$WORK/ck/model" model/head/kernel
check "show replicas" has "| d0,d1*,d2,d3 |  rows 0:512"
run show "$WORK/ck/model" model/layer_norm/scale
check "show uneven 1-D" has "   0:256     256:512    512:768    768:1022"
run show "$WORK/ck/model" optimizer/step
check "show scalar" has "  []  d0,d1*,d2,d3,d4,d5,d6,d7"
run show "$WORK/ck/model" nope;   check "show unknown key fails" test $rc -eq 1; check "names the key" has 'no tensor "nope"'
run show "$WORK/ck/model";        check "show without KEY" test $rc -eq 2
run show "$WORK/ck/model" k --json; check "show --json is a usage error" test $rc -eq 2

# safetensors: export, an independent minimal reader (Python's struct + json), import, export
# again: bit-exact; hostile files refused by import.
mkdir -p "$WORK/st"
"$DEMO" --dir "$WORK/st-src" >/dev/null || echo "FAIL: demo for export"
# What safetensors cannot hold is never skipped silently: refused, naming it, or left out with
# --skip-unsupported, listed on stderr and in the metadata.
run export "$WORK/st-src/model" --to safetensors "$WORK/st/a.safetensors"
check "export of a blob fails" test $rc -eq 1; check "names the blob" has '"rng/state" (an opaque blob)'
check "and the way out" has "--skip-unsupported"; check "no file of a refused export" test ! -e "$WORK/st/a.safetensors"
run export "$WORK/st-src/model" --to safetensors "$WORK/st/a.safetensors" --skip-unsupported
check "export exits 0" test $rc -eq 0; check "export lists the skipped blob" has 'skipped 1 tensor(s) that safetensors cannot hold: "rng/state"'
run export "$WORK/st-src/model" --to tf "$WORK/st/x" --skip-unsupported; check "--skip-unsupported is for safetensors" test $rc -eq 2
# Opaque values go to TensorFlow as DT_STRING scalars and come back as the same blobs: the round
# trip meshckpt -> TF -> meshckpt shows no difference.
run export "$WORK/st-src/model" --to tf "$WORK/st/tf"; check "export of a blob to tf exits 0" test $rc -eq 0
check "says it wrote the opaque value" has "1 opaque value as DT_STRING"
run inspect "$WORK/st/tf"; check "the blob is a string scalar in the bundle" has "rng/state"
run verify "$WORK/st/tf"; check "the bundle verifies" test $rc -eq 0
run import "$WORK/st/tf" --to "$WORK/st/tf-back"; check "import of it exits 0" test $rc -eq 0
run diff "$WORK/st-src/model" "$WORK/st/tf-back"; check "the round trip shows no difference" test $rc -eq 0
check "not even the blob" test "$(grep -c removed <<<"$out")" -eq 0
run import "$WORK/st/a.safetensors" --to "$WORK/st/b"; check "import exits 0" test $rc -eq 0
run verify "$WORK/st/b";          check "imported checkpoint verifies" test $rc -eq 0
run export "$WORK/st/b" --to safetensors "$WORK/st/b.safetensors"; check "re-export exits 0" test $rc -eq 0
if command -v python3 >/dev/null; then
  python3 - "$WORK/st" <<'PY'
import json, struct, sys, os
d = sys.argv[1]
def read(p):
    raw = open(p, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    assert n % 8 == 0 and n <= len(raw) - 8
    h = json.loads(raw[8:8 + n])
    meta = h.pop("__metadata__")
    assert all(isinstance(v, str) for v in meta.values())
    data = raw[8 + n:]
    size = {"F32": 4, "F64": 8, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
    spans = sorted((v["data_offsets"][0], v["data_offsets"][1], k) for k, v in h.items())
    at = 0
    for b, e, k in spans:
        assert b == at, (k, b, at)
        n_el = 1
        for x in h[k]["shape"]:
            n_el *= x
        assert e - b == n_el * size[h[k]["dtype"]], k
        at = e
    assert at == len(data)
    return meta, {k: (v["dtype"], v["shape"], data[v["data_offsets"][0]:v["data_offsets"][1]]) for k, v in h.items()}
ma, a = read(os.path.join(d, "a.safetensors"))
mb, b = read(os.path.join(d, "b.safetensors"))
assert a == b, "round trip changed a tensor"
assert a["model/embedding/table"][0:2] == ("F32", [4096, 512])
assert a["model/head/kernel"][0] == "BF16" and a["optimizer/step"][1] == []
assert json.loads(ma["meshckpt.skipped"]) == ["rng/state"], ma
assert ma == mb, ("__metadata__ did not survive import and export", ma, mb)
# Hostile files for import.
good = open(os.path.join(d, "a.safetensors"), "rb").read()
def write(name, blob):
    open(os.path.join(d, name), "wb").write(blob)
def with_header(h, data=b"\0" * 8):
    j = json.dumps(h).encode()
    return struct.pack("<Q", len(j)) + j + data
write("huge.safetensors", struct.pack("<Q", 10**9) + b"{}")
write("past.safetensors", struct.pack("<Q", 100) + b"{}")
write("gap.safetensors", with_header({"x": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}))
write("dtype.safetensors", with_header({"x": {"dtype": "F33", "shape": [2], "data_offsets": [0, 8]}}))
write("size.safetensors", with_header({"x": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}))
write("trailing.safetensors", with_header({"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}))
write("notjson.safetensors", struct.pack("<Q", 8) + b"{not js}")
write("truncated.safetensors", good[:len(good) - 100])
write("ok.safetensors", with_header({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "__metadata__": {"a": "b"}}))
PY
  check "safetensors independent reader and round trip" test $? -eq 0
  for bad in huge past gap dtype size trailing notjson truncated; do
    run import "$WORK/st/$bad.safetensors" --to "$WORK/st/bad-$bad"
    check "import refuses $bad" test $rc -eq 1
    check "no checkpoint from $bad" test ! -e "$WORK/st/bad-$bad.manifest"
  done
  run import "$WORK/st/huge.safetensors" --to "$WORK/st/x"; check "names the header cap" has "exceeds the cap of 100 MB"
  run import "$WORK/st/gap.safetensors" --to "$WORK/st/x";  check "names the gap" has "not contiguous"
  run import "$WORK/st/dtype.safetensors" --to "$WORK/st/x"; check "names the dtype" has 'unknown dtype "F33"'
  run import "$WORK/st/ok.safetensors" --to "$WORK/st/ok"; check "a minimal valid file imports" test $rc -eq 0
fi
run export "$WORK/st-src/model" "$WORK/st/c.safetensors"; check "export without --to" test $rc -eq 2
run export "$WORK/ck/model" --to safetensors "$WORK/st/d.safetensors" --skip-unsupported; check "export of a damaged checkpoint fails" test $rc -eq 1
check "and says why" has "checksum mismatch"; check "leaves no file" test ! -e "$WORK/st/d.safetensors"
check "and no temp file" test -z "$(ls "$WORK/st" | grep "\.tmp-")"
run import "$WORK/st/a.safetensors";                  check "import without --to" test $rc -eq 2

# Hostile TensorFlow files (issue "Right at the doors"): keys that are not UTF-8, dtypes
# meshckpt lacks, quantized types, missing files.
if [ -n "$FIXTURES" ]; then
  mkdir -p "$WORK/tfx"
  "$FIXTURES" "$WORK/tfx" || echo "FAIL: make_tf_fixtures"
  run inspect "$WORK/tfx/utf8" --json; check "inspect --json of a non-UTF-8 key exits 0" test $rc -eq 0
  if command -v python3 >/dev/null; then
    printf '%s' "$out" | python3 -c '
import json, sys
raw = sys.stdin.buffer.read()
raw.decode("utf-8")  # valid UTF-8, or this raises
d = json.loads(raw)
keys = [e["key"] for e in d["tensors"]]
assert any(k.encode("utf-8", "surrogateescape") == b"emb\xff\xfe" for k in keys), keys
'
    check "inspect --json is valid UTF-8 JSON that escapes the key" test $? -eq 0
  fi
  run export "$WORK/tfx/utf8" --to safetensors "$WORK/tfx/u.safetensors"
  check "export of a non-UTF-8 key fails" test $rc -eq 1; check "names the key, escaped" has '"emb\xff\xfe"'
  check "says how to rename it" has "--rename 'emb\xff\xfe=NEW'"; check "no file" test ! -e "$WORK/tfx/u.safetensors"
  run export "$WORK/tfx/utf8" --to safetensors "$WORK/tfx/u.safetensors" --rename 'emb\xff\xfe=emb'
  check "export with --rename exits 0" test $rc -eq 0
  printf 'emb\\xff\\xfe=embedding\n# comment\n' > "$WORK/tfx/map"
  run export "$WORK/tfx/utf8" --to safetensors "$WORK/tfx/m.safetensors" --rename-file "$WORK/tfx/map"
  check "export with --rename-file exits 0" test $rc -eq 0
  run import "$WORK/tfx/m.safetensors" --to "$WORK/tfx/m"; check "the renamed file imports" test $rc -eq 0
  run inspect "$WORK/tfx/m"; check "under its new name" has "embedding"
  run export "$WORK/tfx/utf8" --to safetensors "$WORK/tfx/n.safetensors" --rename 'nope=x'
  check "a rename of a missing tensor fails" test $rc -eq 1; check "naming it" has 'has no tensor "nope"'

  run verify "$WORK/tfx/odd"; check "verify of odd dtypes passes" test $rc -eq 0
  run inspect "$WORK/tfx/odd"; check "an unknown dtype is named as unknown" has "unknown TensorFlow dtype 999"
  check "a quantized tensor is its integer storage" has "int8"
  run export "$WORK/tfx/odd" --to safetensors "$WORK/tfx/o.safetensors"
  check "export with unsupported entries fails" test $rc -eq 1
  check "names the string" has '"s" (DT_STRING)'; check "names the unknown dtype" has '"u" (unknown TensorFlow dtype 999)'
  run export "$WORK/tfx/odd" --to safetensors "$WORK/tfx/o.safetensors" --skip-unsupported
  check "with --skip-unsupported it exits 0" test $rc -eq 0; check "and lists what it skipped" has "skipped 2 tensor(s)"
  if command -v python3 >/dev/null; then
    python3 - "$WORK/tfx/o.safetensors" <<'PY'
import json, struct, sys
raw = open(sys.argv[1], "rb").read()
(n,) = struct.unpack("<Q", raw[:8])
h = json.loads(raw[8:8 + n])
assert json.loads(h["__metadata__"]["meshckpt.skipped"]) == ["s", "u"], h["__metadata__"]
assert h["q"]["dtype"] == "I8" and h["ok"]["dtype"] == "F32", h
assert raw[8 + n + h["q"]["data_offsets"][0]:8 + n + h["q"]["data_offsets"][1]] == b"\x01\xfe\x03\x04"
PY
    check "the skipped entries are in the metadata, the quantized one as I8" test $? -eq 0
  fi
  # A quantized tensor keeps its TensorFlow dtype through import and export --to tf.
  run import "$WORK/tfx/odd" --to "$WORK/tfx/oi"; check "import of odd dtypes exits 0" test $rc -eq 0
  check "import names what it left out" has 'left out 1 entry of a dtype meshckpt cannot hold: "u" (unknown TensorFlow dtype 999)'
  run export "$WORK/tfx/oi" --to tf "$WORK/tfx/back"; check "export back to tf exits 0" test $rc -eq 0
  run inspect "$WORK/tfx/back"; check "DT_QINT8 again" has "DT_QINT8"
  # A damaged entry fails the export even when it would be skipped.
  cp "$WORK/tfx/odd.index" "$WORK/tfx/dmg.index"; cp "$WORK/tfx/odd.data-00000-of-00001" "$WORK/tfx/dmg.data-00000-of-00001"
  printf 'X' | dd of="$WORK/tfx/dmg.data-00000-of-00001" bs=1 seek=20 conv=notrunc 2>/dev/null
  run export "$WORK/tfx/dmg" --to safetensors "$WORK/tfx/d.safetensors" --skip-unsupported
  check "a damaged skipped entry fails the export" test $rc -eq 1; check "no file from it" test ! -e "$WORK/tfx/d.safetensors"
fi
# Nothing there: every command says what it looked for.
run inspect "$WORK/here"; check "inspect of nothing fails" test $rc -eq 1
check "names the manifest" has "here.manifest"; check "names the TF index" has "here.index"; check "names the SavedModel" has "variables/variables.index"
run verify /no/such/path;         check "verify of nothing fails" test $rc -eq 1; check "says not found" has "NOT FOUND"
check "not DAMAGED" test "$(grep -c DAMAGED <<<"$out")" -eq 0
echo "just some text, not a checkpoint" > "$WORK/text.txt"
run import "$WORK/text.txt" --to "$WORK/from-text"; check "import of a text file fails" test $rc -eq 1
check "says it is none of the formats" has "none of the formats import reads"; check "names safetensors" has "safetensors file"
check "names TensorFlow" has "TensorFlow checkpoint"; check "not a header cap" test "$(grep -c "exceeds the cap" <<<"$out")" -eq 0

# A directory written by a CheckpointManager: the state file is checked too.
"$TRAINER" --dir "$WORK/managed" --steps 12 --every 4 --keep 2 --quiet >/dev/null || echo "FAIL: trainer"
run verify "$WORK/managed";       check "managed dir verifies" test $rc -eq 0; check "verifies ckpt-3" has "ok        $WORK/managed/ckpt-3"
run verify "$WORK/managed" --json; check "json state file present" has '"state_file":{"present":true,"problems":[]}'
rm "$WORK/managed/ckpt-2.manifest"
run verify "$WORK/managed";       check "missing listed checkpoint fails" test $rc -eq 1
check "names the missing checkpoint" has "lists ckpt-2, which is missing"
# ls: the managed directory, with leftovers of an interrupted save, as text and JSON.
"$TRAINER" --dir "$WORK/listed" --steps 12 --every 4 --keep 2 --quiet >/dev/null || echo "FAIL: trainer"
touch "$WORK/listed/ckpt-9.data-0123456789abcdef-0" "$WORK/listed/notes.txt"
run ls "$WORK/listed";            check "ls exits 0" test $rc -eq 0
check "ls summary" has "$WORK/listed: 2 checkpoints, latest ckpt-3 (from the state file)"
check "ls header" has "NAME    NUMBER  CREATED                     SIZE  TENSORS  FILES  STATUS"
check "ls latest row" has "committed, latest"
check "ls incomplete row" has "incomplete (files of an interrupted save"
check "ls ignores foreign files" bash -c '! grep -q notes.txt <<<"$1"' _ "$out"
run ls "$WORK/listed" --json;     check "ls --json exits 0" test $rc -eq 0
if command -v python3 >/dev/null; then
  python3 - "$out" <<'PY'
import json, sys
d = json.loads(sys.argv[1])
assert set(d) == {"directory", "state_file", "checkpoints"}, d.keys()
assert d["state_file"] == {"present": True, "latest": "ckpt-3", "problem": None}, d["state_file"]
names = [c["name"] for c in d["checkpoints"]]
assert names == ["ckpt-2", "ckpt-3", "ckpt-9"], names
for c in d["checkpoints"]:
    assert set(c) == {"name", "number", "created_unix_ms", "bytes", "tensors", "files", "status", "latest"}, c
assert d["checkpoints"][1]["latest"] is True and d["checkpoints"][1]["status"] == "committed"
assert d["checkpoints"][2]["status"] == "incomplete" and d["checkpoints"][2]["tensors"] is None
PY
  check "ls --json schema" test $? -eq 0
fi
run ls "$WORK/nowhere";           check "ls of a missing directory fails" test $rc -eq 1; check "says so" has "is not a directory"
run ls "$WORK/empty";             check "ls of an empty directory" test $rc -eq 0; check "counts none" has "0 checkpoints"

echo 'garbage' > "$WORK/managed/checkpoint"
run verify "$WORK/managed";       check "corrupt state file fails" test $rc -eq 1; check "names the state file line" has "checkpoint state file line 1"

# Every subcommand: --help (exit 0, its own usage), clear usage errors.
for c in inspect verify ls show cat diff export import; do
  run $c --help; check "$c --help exits 0" test $rc -eq 0; check "$c --help shows its usage" has "usage: meshckpt $c "
done
run cat "$WORK/ck/model" k --to x; check "an option a command lacks is a usage error" test $rc -eq 2; check "says which" has "cat: has no --to"
run diff "$WORK/ck/model";        check "diff needs two operands" test $rc -eq 2; check "says how many" has "takes 2 operand(s), got 1"

# inspect: the object graph a Checkpoint recorded (trainer_coro writes one).
"$TRAINER" --dir "$WORK/graph" >/dev/null 2>&1 || echo "FAIL: trainer for the object graph"
gck=$(ls "$WORK"/graph/ckpt-*.manifest | head -1); gck=${gck%.manifest}
run inspect "$gck";               check "inspect shows the object graph" has "object graph (13 objects):"
check "graph tree lines" has "|   |-- kernel  = model/hidden/kernel"
check "graph leaf" has "\`-- save_counter  = save_counter"
run inspect "$gck" --json
if command -v python3 >/dev/null; then
  python3 -c '
import json, sys
d = json.loads(sys.argv[1])
g = d["object_graph"]
assert len(g) == 13 and g[0]["id"] == 0 and g[0]["value"] is None
names = {c["name"] for c in g[0]["children"]}
assert {"model", "step", "save_counter"} <= names, names
assert all(set(n) == {"id", "value", "children"} for n in g)
' "$out"; check "inspect --json object_graph schema" test $? -eq 0
fi

# cat: values against an independent reader of the exported safetensors file.
run cat "$WORK/st-src/model" optimizer/step; check "cat scalar" test $rc -eq 0; check "cat scalar header" has "optimizer/step: int64[]"
run cat "$WORK/st-src/model" model/embedding/table --slice 1:3,0:4; check "cat slice exits 0" test $rc -eq 0
check "cat slice header" has "model/embedding/table: float32[4096, 512] [1:3,0:4]"
cat_text=$out
run cat "$WORK/st-src/model" model/embedding/table; check "cat summarizes a large tensor" has ", ...,"
check "cat summarized rows" has " ...,"
run cat "$WORK/st-src/model" model/embedding/table --slice 1:3,0:4 --json; cat_json=$out
run cat "$WORK/st-src/model" rng/state; check "cat of a blob fails" test $rc -eq 1; check "says it is opaque" has "opaque blob"
run cat "$WORK/st-src/model" model/embedding/table --slice 9999; check "cat index out of range" test $rc -eq 2; check "names the part" has "--slice part 1"
run cat "$WORK/st-src/model" nope; check "cat unknown key" test $rc -eq 1
if command -v python3 >/dev/null; then
  python3 - "$WORK/st/a.safetensors" "$cat_json" "$cat_text" <<'PY'
import json, struct, sys
raw = open(sys.argv[1], "rb").read()
(n,) = struct.unpack("<Q", raw[:8]); h = json.loads(raw[8:8 + n]); data = raw[8 + n:]
t = h["model/embedding/table"]; b = t["data_offsets"][0]
def f32(r, c): return struct.unpack_from("<f", data, b + 4 * (r * 512 + c))[0]
want = [[f32(r, c) for c in range(4)] for r in (1, 2)]
j = json.loads(sys.argv[2])
assert j["dtype"] == "float32" and j["shape"] == [4096, 512] and j["selected_shape"] == [2, 4], j
assert j["values"] == want, (j["values"], want)
# The text form: numpy's look, 8 significant digits, right-aligned columns.
cells = [["%.8g" % v for v in row] for row in want]
w = max(len(x) for row in cells for x in row)
lines = ["[[" + ", ".join(x.rjust(w) for x in cells[0]) + "],", " [" + ", ".join(x.rjust(w) for x in cells[1]) + "]]"]
text = sys.argv[3].splitlines()[1:]
assert text == lines, (text, lines)
PY
  check "cat values match an independent reader (text and JSON)" test $? -eq 0
fi

# diff: identical by checksum, identical by value (another slicing), changed values, added and
# removed tensors, with the JSON schema.
run diff "$WORK/ck/model" "$WORK/st-src/model"; check "diff of equal checkpoints exits 0" test $rc -eq 0
check "compared by checksum" has "0 tensor(s) differ, 8 identical; 8 compared by checksum, 0 read and compared"
run diff "$WORK/st-src/model" "$WORK/st/b"; check "diff across slicings: only the blob (not exported) differs" test $rc -eq 1
check "the blob is removed" has "removed  rng/state  blob[64]"; check "the rest equal by value" has "1 tensor(s) differ, 7 identical"
if command -v python3 >/dev/null; then
  python3 - "$WORK/st" <<'PY'
import json, struct, sys, os
d = sys.argv[1]
raw = open(os.path.join(d, "a.safetensors"), "rb").read()
(n,) = struct.unpack("<Q", raw[:8]); h = json.loads(raw[8:8 + n]); data = bytearray(raw[8 + n:])
# c: one element of the embedding table changed by +0.5.
b = h["model/embedding/table"]["data_offsets"][0] + 4 * 77
(v,) = struct.unpack_from("<f", data, b); struct.pack_into("<f", data, b, v + 0.5)
def write(path, header, body):
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * (-len(hb) % 8)
    open(path, "wb").write(struct.pack("<Q", len(hb)) + hb + bytes(body))
write(os.path.join(d, "c.safetensors"), h, data)
# e: optimizer/step removed, extra/flag added (a shape and dtype of its own).
h2 = {k: v for k, v in h.items() if k not in ("optimizer/step", "__metadata__")}
body = bytearray(); out = {}
for k, v in sorted(h2.items(), key=lambda kv: kv[1]["data_offsets"][0]):
    s, e = v["data_offsets"]; out[k] = dict(v, data_offsets=[len(body), len(body) + e - s]); body += raw[8 + n + s:8 + n + e]
out["extra/flag"] = {"dtype": "U8", "shape": [3], "data_offsets": [len(body), len(body) + 3]}; body += b"\x01\x02\x03"
write(os.path.join(d, "e.safetensors"), out, body)
PY
  run import "$WORK/st/c.safetensors" --to "$WORK/st/c"; check "import c" test $rc -eq 0
  run import "$WORK/st/e.safetensors" --to "$WORK/st/e"; check "import e" test $rc -eq 0
  run diff "$WORK/st/b" "$WORK/st/c"; check "diff of changed values exits 1" test $rc -eq 1
  check "names the changed tensor" has "values   model/embedding/table  1 element(s) differ, max abs difference 0.50000003"
  check "the rest identical by checksum" has "1 tensor(s) differ, 6 identical; 6 compared by checksum, 1 read and compared"
  run diff "$WORK/st/b" "$WORK/st/e"; check "diff of added/removed exits 1" test $rc -eq 1
  check "removed" has "removed  optimizer/step  int64[]"; check "added" has "added    extra/flag  uint8[3]"
  run diff "$WORK/st/b" "$WORK/st/c" --json
  python3 -c '
import json, sys
d = json.loads(sys.argv[1])
assert set(d) == {"a", "b", "identical", "unchanged", "compared_by_checksum", "compared_by_value", "changes"}, d
assert d["identical"] is False and d["unchanged"] == 6 and len(d["changes"]) == 1
c = d["changes"][0]
assert c["key"] == "model/embedding/table" and c["kind"] == "values" and c["differing"] == 1 and abs(c["max_abs_difference"] - 0.5) < 1e-6, c
' "$out"; check "diff --json schema" test $? -eq 0
fi

# Sharded export: N files of about equal size plus the index Hugging Face tools read; read back
# by an independent reader and imported through the index.
run export "$WORK/st-src/model" --to safetensors "$WORK/shards" --shards 3 --skip-unsupported; check "sharded export exits 0" test $rc -eq 0
check "sharded export names the files" has "to 3 safetensors shards"
check "three shard files" test -f "$WORK/shards/model-00001-of-00003.safetensors" -a -f "$WORK/shards/model-00003-of-00003.safetensors"
if command -v python3 >/dev/null; then
  python3 - "$WORK/shards" "$WORK/st/a.safetensors" <<'PY'
import json, struct, sys, os
d = sys.argv[1]
def read(p):
    raw = open(p, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8]); h = json.loads(raw[8:8 + n]); h.pop("__metadata__", None); data = raw[8 + n:]
    return {k: (v["dtype"], v["shape"], data[v["data_offsets"][0]:v["data_offsets"][1]]) for k, v in h.items()}
idx = json.load(open(os.path.join(d, "model.safetensors.index.json")))
assert set(idx) == {"metadata", "weight_map"} and isinstance(idx["metadata"]["total_size"], int)
files = sorted(set(idx["weight_map"].values()))
assert files == ["model-%05d-of-00003.safetensors" % i for i in (1, 2, 3)], files
got = {}
for f in files:
    part = read(os.path.join(d, f))
    assert all(idx["weight_map"][k] == f for k in part), f
    got.update(part)
assert got == read(sys.argv[2]), "the shards hold other tensors than the single file"
assert idx["metadata"]["total_size"] == sum(len(v[2]) for v in got.values())
PY
  check "shards + index read by an independent reader equal the single file" test $? -eq 0
fi
run import "$WORK/shards/model.safetensors.index.json" --to "$WORK/st/from-shards"; check "import of a sharded model" test $rc -eq 0
run diff "$WORK/st/b" "$WORK/st/from-shards"; check "sharded round trip is bit-exact" test $rc -eq 0
run export "$WORK/st-src/model" --to safetensors "$WORK/per-process" --shards processes --skip-unsupported; check "export --shards processes" test $rc -eq 0
check "one process wrote it: one shard" test -f "$WORK/per-process/model-00001-of-00001.safetensors"
run export "$WORK/st-src/model" --to safetensors "$WORK/x" --shards 0; check "--shards 0 is a usage error" test $rc -eq 2
run inspect "$WORK/st-src/model" --shards 2; check "--shards only for export" test $rc -eq 2

# verify's progress bar: drawn on stderr when asked (a terminal, or MESHCKPT_PROGRESS), never
# when piped, and erased at the end.
err=$(MESHCKPT_PROGRESS=1 "$CLI" verify "$WORK/ck/model" 2>&1 >/dev/null); check "progress ends at 100%" grep -qF "100%" <<<"$err"
check "progress shows the total" grep -qF "/ " <<<"$err"
err=$("$CLI" verify "$WORK/ck/model" 2>&1 >/dev/null); check "no progress when piped" test -z "$err"
err=$(MESHCKPT_PROGRESS=1 "$CLI" verify --no-progress "$WORK/ck/model" 2>&1 >/dev/null); check "--no-progress" test -z "$err"

# TensorFlow checkpoints (tests/data/tf, written by TensorFlow): inspect says what they are and
# lists their tensors; import says so instead of misreading the .index file as a safetensors
# file; a damaged index names the damage.
TF=$(cd "$(dirname "$0")/../data/tf" && pwd)
run inspect "$TF/t2t_transformer_tf1_ckpt/model.ckpt-1"
check "inspect of a TF1 checkpoint exits 0" test $rc -eq 0
check "calls it TF1 name-based" has "TF1 name-based"
check "its two data files" has "2 data files"
check "lists a TF1 tensor" has "global_step"
check "TF summary line" has "250 entries, 0 partitioned"
run inspect "$TF/bert_lite_tf2_ckpt/bert_lite_tf2.ckpt.index"
check "inspect accepts PREFIX.index" test $rc -eq 0; check "calls it TF2 object-based" has "TF2 object-based"
check "shows the object graph's dtype by TF's name" has "DT_STRING"
run inspect "$TF/half_plus_two_tf2_savedmodel/variables/variables" --json
check "inspect --json of a TF bundle exits 0" test $rc -eq 0
python3 - "$out" <<'PY'
import json, sys
d = json.loads(sys.argv[1])
assert d["format"] == "tensorflow" and d["num_shards"] == 1, d
keys = {t["key"]: t for t in d["tensors"]}
assert set(keys) == {"_CHECKPOINTABLE_OBJECT_GRAPH", "a/.ATTRIBUTES/VARIABLE_VALUE", "b/.ATTRIBUTES/VARIABLE_VALUE", "c/.ATTRIBUTES/VARIABLE_VALUE"}, keys
assert keys["a/.ATTRIBUTES/VARIABLE_VALUE"]["dtype"] == "float32" and keys["a/.ATTRIBUTES/VARIABLE_VALUE"]["bytes"] == 4
PY
check "TF --json schema" test $? -eq 0
# import and export: TensorFlow keys verbatim, values checked; the SavedModel by its directory.
run import "$TF/t2t_transformer_tf1_ckpt/model.ckpt-1.index" --to "$WORK/tf-import"
check "import of a TF index exits 0" test $rc -eq 0; check "says what it imported" has "imported 250 tensors from the TensorFlow checkpoint"
run cat "$WORK/tf-import" global_step
check "the imported TF1 tensor keeps its name" test $rc -eq 0; check "global_step is 1" has "1"
run import "$TF/half_plus_two_tf2_savedmodel" --to "$WORK/hp"
check "import of a SavedModel directory exits 0" test $rc -eq 0
run cat "$WORK/hp" "b/.ATTRIBUTES/VARIABLE_VALUE"
check "b of half_plus_two is 2" has "float32[]"; check "its value" has "2."
run inspect "$WORK/hp"
check "the imported object graph is the checkpoint's" has "object graph (" ; check "with TF's child names" has "|-- a  = a/.ATTRIBUTES/VARIABLE_VALUE"
run export "$WORK/hp" --to tf "$WORK/hp-tf" --shards 2
check "export --to tf exits 0" test $rc -eq 0; check "says it kept the object graph" has "with its object graph"
check "two data files" test -f "$WORK/hp-tf.data-00001-of-00002"
run verify "$WORK/hp-tf"
check "the exported bundle verifies" test $rc -eq 0
run inspect "$WORK/hp-tf"
check "inspect calls the export TF2" has "TF2 object-based"
run diff "$WORK/hp-tf" "$TF/half_plus_two_tf2_savedmodel"
check "export and original hold the same values" test $rc -eq 0; check "3 identical" has "3 identical"
run export "$WORK/ck/ckpt-3" --to tf "$WORK/demo-tf" --shards 0
check "--shards 0 is refused" test $rc -eq 2
run export "$WORK/ck/ckpt-3" --to onnx "$WORK/x"
check "an unknown --to is refused" test $rc -eq 2; check "names the formats" has "--to safetensors, --to tf or --to torch"
# cat, show and diff read TensorFlow checkpoints in place; --format forces the kind.
run cat "$TF/half_plus_two_tf2_savedmodel" "a/.ATTRIBUTES/VARIABLE_VALUE"
check "cat of a SavedModel" test $rc -eq 0; check "a is 0.5" has "0.5"
run cat "$TF/t2t_transformer_tf1_ckpt/model.ckpt-1" global_step --format tf
check "cat --format tf" test $rc -eq 0
run cat "$TF/t2t_transformer_tf1_ckpt/model.ckpt-1" global_step --format meshckpt
check "--format meshckpt does not read TF" test $rc -eq 1; check "says the manifest is missing" has "model.ckpt-1.manifest"
run show "$TF/bert_lite_tf2_ckpt/bert_lite_tf2.ckpt" "save_counter/.ATTRIBUTES/VARIABLE_VALUE"
check "show of a TF tensor" test $rc -eq 0
run diff "$TF/t2t_transformer_tf1_ckpt/model.ckpt-1" "$WORK/tf-import"
check "a TF checkpoint and its import are identical" test $rc -eq 0; check "250 identical" has "250 identical"
run inspect "$TF/half_plus_two_tf2_savedmodel" --format tf
check "inspect of a SavedModel directory" test $rc -eq 0
run inspect "$WORK/ck/ckpt-3" --format tf
check "--format tf on a meshckpt checkpoint is refused" test $rc -eq 1; check "says it is not TF" has "is not a TensorFlow checkpoint"
run ls "$WORK/ck" --format tf
check "ls has no --format" test $rc -eq 2
mkdir -p "$WORK/tf-bad"
cp "$TF/bert_lite_tf2_ckpt/bert_lite_tf2.ckpt.index" "$WORK/tf-bad/x.index"
python3 -c "import sys; p=sys.argv[1]; b=bytearray(open(p,'rb').read()); b[100]^=1; open(p,'wb').write(bytes(b))" "$WORK/tf-bad/x.index"
run inspect "$WORK/tf-bad/x"
check "a damaged TF index exits 1" test $rc -eq 1; check "names the block checksum" has "CRC-32C"; check "names the file" has "x.index"

run verify "$TF/t2t_transformer_tf1_ckpt/model.ckpt-1"
check "verify of a TF checkpoint exits 0" test $rc -eq 0; check "reports its tensors" has "(250 tensors, 250 slices, 2 data files"
run verify "$TF/half_plus_two_tf2_savedmodel/variables/variables.index" --json
check "verify --json of a TF checkpoint" test $rc -eq 0; check "is ok" has '"ok":true'
mkdir -p "$WORK/tf-data"
cp "$TF/t2t_transformer_tf1_ckpt/"model.ckpt-1.* "$WORK/tf-data/"
python3 -c "import sys; p=sys.argv[1]; b=bytearray(open(p,'rb').read()); b[800000]^=1; open(p,'wb').write(bytes(b))" "$WORK/tf-data/model.ckpt-1.data-00001-of-00002"
run verify "$WORK/tf-data/model.ckpt-1"
check "a damaged TF data file exits 1" test $rc -eq 1; check "says DAMAGED" has "DAMAGED"
check "names the CRC, the file and the bytes" has "CRC-32C mismatch in tensor"; check "... and the byte range" has "model.ckpt-1.data-00001-of-00002 at bytes ["
rm "$WORK/tf-data/model.ckpt-1.data-00000-of-00002"
run verify "$WORK/tf-data/model.ckpt-1"
check "a missing TF data file exits 1" test $rc -eq 1; check "names the missing file" has "data file model.ckpt-1.data-00000-of-00002"

# A URL of a scheme without a backend is refused, never made a local directory named "gs:".
(cd "$WORK" && "$CLI" ls gs://bucket/run >"$WORK/url.out" 2>&1; echo $? >"$WORK/url.rc")
out=$(cat "$WORK/url.out"); rc=$(cat "$WORK/url.rc")
check "ls gs:// exits 1" test "$rc" -eq 1; check "names the scheme" has 'gs://bucket/run: a URL with scheme "gs"'
(cd "$WORK" && "$TRAINER" --dir gs://bucket/run --steps 2 --every 1 --quiet >"$WORK/url.out" 2>&1; echo $? >"$WORK/url.rc")
out=$(cat "$WORK/url.out"); rc=$(cat "$WORK/url.rc")
check "trainer --dir gs:// fails" test "$rc" -ne 0; check "trainer names the scheme" has 'a URL with scheme "gs"'
check "no local gs: directory" test ! -e "$WORK/gs:"
echo "$passes passed, $fails failed"
[ $fails -eq 0 ]
