#!/usr/bin/env bash
# The kubectl compatibility test (cli/tests/kubectl_compat.rs) with every kubectl version the
# machine has or can install: 1.27 … 1.36. CI runs a slice (1.27, 1.32, 1.36); this runs all
# and writes the per-version figures to bench-out/kubectl-matrix.txt (quoted in BENCHMARKS.md).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/client-tools.sh >/dev/null
mkdir -p bench-out
report=$PWD/bench-out/kubectl-matrix.txt
echo "# $(date -u +%FT%TZ) $(git rev-parse --short HEAD)" > "$report.head"
DROVER_KUBECTL_VERSIONS=all DROVER_KUBECTL_REPORT="$report.body" \
  cargo nextest run -p cli --test kubectl_compat --no-fail-fast || status=$?
cat "$report.head" "$report.body" > "$report" 2>/dev/null || true
rm -f "$report.head" "$report.body"
cat "$report"
exit "${status:-0}"
