# Shared by the s3 CLI scripts (sourced): the cluster's environment, and check/run/has.
#   . cli_support.sh CLI RGW_DIR
CLI=$1
set -a; . "$2/env"; set +a
fails=0 passes=0
check() {  # check NAME CONDITION-COMMAND...
  local name=$1; shift
  if "$@"; then passes=$((passes + 1)); else echo "FAIL: $name"; fails=$((fails + 1)); return 1; fi
}
run() { out=$("$CLI" "$@" 2>&1); rc=$?; }
has() { grep -qF -- "$1" <<<"$out"; }
