#!/usr/bin/env bash
# The cluster registry and `drover deploy` (issue 19): deploy → first 200, push and pull
# throughput of a large blob against Debian's docker-registry, and a push to three servers
# against one. Installs docker-registry when missing, builds Drover and the examples in
# release mode, runs target/release/registry-bench and prints its JSON lines.
#
#   benches/registry.sh [--deploys 20] [--mib 1024] [--rounds 3] [--only deploy,throughput,three]
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v docker-registry >/dev/null 2>&1; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-registry >/dev/null
  rm -f /usr/sbin/policy-rc.d
fi
rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
cargo build --manifest-path examples/Cargo.toml --target-dir examples/target --target wasm32-wasip2 --release --locked
cargo build --release --locked --bin drover --bin registry-bench
target/release/registry-bench "$@"
