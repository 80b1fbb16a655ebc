#!/usr/bin/env bash
# The chaos soak of issue 15, long: three and five members, each for DURATION (default 10
# minutes), under the store and Kubernetes API load with kill -9, partitions and member
# replacement (benches/src/chaos_soak.rs). One JSON line per soak; the figures in
# BENCHMARKS.md come from this script. Needs root (nftables).
#
#   sudo ./benches/chaos-soak.sh                 # 10 minutes each
#   sudo DURATION=3m SEED=7 ./benches/chaos-soak.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin drover --bin chaos-soak
bin=${CARGO_TARGET_DIR:-target}/release
duration=${DURATION:-10m}
seed=${SEED:-$(date +%s)}
out=${OUT:-bench-out}
mkdir -p "$out"
echo "# $(date -u +%FT%TZ) $(git rev-parse --short HEAD) on $(nproc) cores; seed $seed" | tee -a "$out/soak.jsonl"
for members in 3 5; do
  "$bin/chaos-soak" --drover "$bin/drover" --members "$members" \
    --duration "$duration" --seed "$seed" | tee -a "$out/soak.jsonl"
done
