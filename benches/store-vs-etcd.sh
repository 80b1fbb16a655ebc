#!/usr/bin/env bash
# Side-by-side benchmark of Drover's store and etcd 3.4 (Debian's etcd-server), with the same
# load in the same run on the same machine. Prints one JSON line per measurement; the figures
# in BENCHMARKS.md come from this script.
#
#   ./benches/store-vs-etcd.sh            # 30 s per throughput run, 7 failover trials
#   SECS=10 TRIALS=3 ./benches/store-vs-etcd.sh
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v etcd >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq etcd-server >/dev/null
fi
cargo build --release --bin drover --bin store-bench

bench=target/release/store-bench
etcd=$(command -v etcd)
secs=${SECS:-30}
trials=${TRIALS:-7}
out=${OUT:-bench-out}
mkdir -p "$out"

echo "# $(date -u +%FT%TZ) on $(nproc) cores, $(uname -r); $("$etcd" --version | head -1)" | tee "$out/store.jsonl"
# Throughput: durable puts, 256-byte values, 64 concurrent clients; the two systems alternate.
for members in 1 3; do
  for system in drover etcd; do
    "$bench" --system "$system" --etcd "$etcd" throughput --members "$members" --clients 64 --secs "$secs" --value-size 256 | tee -a "$out/store.jsonl"
  done
done
# Failover: kill -9 of the leader of three members to the first acknowledged write.
for system in drover etcd; do
  "$bench" --system "$system" --etcd "$etcd" failover --trials "$trials" | tee -a "$out/store.jsonl"
done
