#!/usr/bin/env bash
# Conversions on s3:// prefixes, against the suite's Ceph RGW (the s3 fixture): import a
# safetensors file, a torch.save file written by torch and a TensorFlow bundle into s3://; export
# from s3:// to TensorFlow, safetensors and torch on s3://; read them back; show, cat and diff
# across s3:// and disk. Conversions stream: importing and exporting a 320 MiB tensor, the peak
# RSS stays under 3/4 of the tensor's size (and is printed beside that of a 32 MiB one).
#   convert_s3_test.sh CLI PYTHON RGW_DIR
set -u
CLI=$1 PY=$2 RGW=$3
. "$(dirname "$0")/cli_support.sh" "$CLI" "$RGW"
# Peak RSS in KiB of one CLI run (its output in $out, its status in $rc).
peak() {
  out=$(/usr/bin/time -f "peak_kib %M" "$CLI" "$@" 2>&1); rc=$?
  kib=$(sed -n 's/^peak_kib //p' <<<"$out" | tail -1)
}

aws=/usr/bin/aws; [[ -x $aws ]] || aws=aws
WORK=$(mktemp -d)
DIR="s3://meshckpt-test/convert-$$-$(date +%s%N)"
trap 'rm -rf "$WORK"' EXIT

# A safetensors file: "big" (float32, a byte pattern), "small" (int64 1 2 3).
make_safetensors() {  # make_safetensors FILE BYTES
  "$PY" - "$1" "$2" <<'PYEOF'
import json, struct, sys
n = int(sys.argv[2]) // 4
hdr = {"big": {"dtype": "F32", "shape": [n], "data_offsets": [0, 4 * n]},
       "small": {"dtype": "I64", "shape": [3], "data_offsets": [4 * n, 4 * n + 24]}}
h = json.dumps(hdr).encode()
with open(sys.argv[1], "wb") as f:
    f.write(struct.pack("<Q", len(h)) + h)
    chunk, left = bytes(range(256)) * 4096, 4 * n
    while left:
        f.write(chunk[:min(left, len(chunk))])
        left -= min(left, len(chunk))
    f.write(struct.pack("<3q", 1, 2, 3))
PYEOF
}

for size in 32 320; do
  make_safetensors "$WORK/t$size.safetensors" $((size << 20))
  peak import "$WORK/t$size.safetensors" --to "$DIR/imp$size"
  check "import ${size} MiB to s3:// exits 0" test $rc -eq 0 || echo "$out"
  import_kib[$size]=$kib
  peak export "$DIR/imp$size" --to tf "$DIR/tf$size"
  check "export ${size} MiB from s3:// to TensorFlow on s3:// exits 0" test $rc -eq 0 || echo "$out"
  export_kib[$size]=$kib
  peak import "$DIR/tf$size" --to "$DIR/back$size"
  check "import ${size} MiB of TensorFlow from s3:// exits 0" test $rc -eq 0 || echo "$out"
  reimport_kib[$size]=$kib
  run diff "$DIR/imp$size" "$DIR/back$size"
  check "the ${size} MiB round trip through TensorFlow on s3:// is identical" has "0 tensor(s) differ, 2 identical"
  rm -f "$WORK/t$size.safetensors"
  "$aws" --endpoint-url "$AWS_ENDPOINT_URL" s3 rm --recursive --quiet "$DIR/" >/dev/null 2>&1  # the memory store is small
done
echo "peak RSS (KiB) 32 MiB / 320 MiB: import ${import_kib[32]} / ${import_kib[320]}," \
  "export ${export_kib[32]} / ${export_kib[320]}, import from s3 ${reimport_kib[32]} / ${reimport_kib[320]}"
for what in import export reimport; do
  declare -n k=${what}_kib
  check "$what of a 320 MiB tensor streams (peak RSS ${k[320]} KiB)" test "${k[320]}" -lt $((320 * 3 / 4 << 10))
done

# Every format out of s3:// and back.
make_safetensors "$WORK/s.safetensors" 4096
run import "$WORK/s.safetensors" --to "$WORK/local";   check "import to disk" test $rc -eq 0 || echo "$out"
run import "$WORK/s.safetensors" --to "$DIR/s";        check "import to s3://" test $rc -eq 0 || echo "$out"
run export "$DIR/s" --to safetensors "$DIR/s.safetensors"; check "export to safetensors on s3://" test $rc -eq 0 || echo "$out"
run export "$DIR/s" --to torch "$DIR/s.pt";            check "export to torch on s3://" test $rc -eq 0 || echo "$out"
for f in s.safetensors s.pt; do
  run import "$DIR/$f" --to "$WORK/from-$f";           check "import $f from s3://" test $rc -eq 0 || echo "$out"
done
run diff "$WORK/from-s.safetensors" "$WORK/local"
check "safetensors through s3:// is identical" has "0 tensor(s) differ, 2 identical" || echo "$out"
run diff "$WORK/from-s.pt" "$WORK/local"  # the same tensors; the torch file's own record besides
check "torch through s3:// is identical" has "1 tensor(s) differ, 2 identical" && has "__meshckpt_torch__" || echo "$out"
run diff "$DIR/s" "$WORK/local";                       check "diff across s3:// and disk" has "0 tensor(s) differ, 2 identical"
run cat "$DIR/s" small;                                check "cat on s3://" has "[1, 2, 3]" || echo "$out"
run show "$DIR/s" big;                                 check "show on s3://" test $rc -eq 0 || echo "$out"

# A file torch wrote, imported into s3:// (its pickle read, never run).
if "$PY" -c "import torch" 2>/dev/null; then
  "$PY" -c "import torch, sys; torch.save({'w': torch.arange(6, dtype=torch.int64)}, sys.argv[1])" "$WORK/w.pt"
  run import "$WORK/w.pt" --to "$DIR/pt";              check "import a torch.save file to s3://" test $rc -eq 0 || echo "$out"
  run cat "$DIR/pt" w;                                 check "its values" has "[0, 1, 2, 3, 4, 5]" || echo "$out"
else
  echo "SKIP: torch is not importable by $PY"
fi

# Remove what this test wrote: the cluster's memory store is small.
"$aws" --endpoint-url "$AWS_ENDPOINT_URL" s3 rm --recursive --quiet "$DIR/" >/dev/null 2>&1 || true

echo "convert_s3: $passes passed, $fails failed"
[[ $fails -eq 0 ]]
