#!/usr/bin/env bash
# Runs the store's root fault test (three members through kill -9, restart, partition and
# membership changes under load, every history checked for linearizability) N times in a row,
# and says how many passed and how long it took. A failing run's history is kept in
# $DROVER_HISTORY_DIR (default target/histories) and its output in run-K.log there.
#
#   sudo scripts/root-test-loop.sh [N=50]
set -uo pipefail
cd "$(dirname "$0")/.."
n=${1:-50}
export DROVER_HISTORY_DIR=${DROVER_HISTORY_DIR:-$(pwd)/target/histories}
mkdir -p "$DROVER_HISTORY_DIR"
test_bin=$(cargo test -p cli --test store_cluster --no-run --message-format=json 2>/dev/null |
  python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("executable") and m["target"]["name"] == "store_cluster":
        print(m["executable"])')
[ -x "$test_bin" ] || { echo "cannot build the store_cluster test" >&2; exit 1; }
name=root_three_members_stay_linearizable_through_kill_restart_partition_and_membership_changes
passed=0
start=$(date +%s)
for k in $(seq "$n"); do
  t0=$(date +%s)
  if "$test_bin" "$name" --exact --nocapture > "$DROVER_HISTORY_DIR/run-$k.log" 2>&1; then
    passed=$((passed + 1))
    rm -f "$DROVER_HISTORY_DIR/run-$k.log"
    echo "run $k: passed in $(( $(date +%s) - t0 )) s"
  else
    echo "run $k: FAILED in $(( $(date +%s) - t0 )) s (output: $DROVER_HISTORY_DIR/run-$k.log)"
  fi
done
echo "$passed of $n passed in $(( $(date +%s) - start )) s ($(git rev-parse --short HEAD), $(date -u +%F))"
[ "$passed" -eq "$n" ]
