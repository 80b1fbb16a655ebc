#!/usr/bin/env bash
# Runs every test of the workspace, installing first what the tests need. Idempotent; safe
# on a fresh Debian 12 machine with the Rust toolchain (and cargo-nextest) as the only givens.
# Some tests need root (nftables partitions); CI runs as root.
set -euo pipefail
cd "$(dirname "$0")/.."

# --- what the tests need -------------------------------------------------------------
missing=()
command -v nft >/dev/null 2>&1 || missing+=(nftables)
# Pod networking (`ip`, also for the tests' own network namespaces) and the tests' HTTP client.
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v curl >/dev/null 2>&1 || missing+=(curl)
# A real OCI registry for the image-pull tests (Docker's distribution, packaged by Debian).
command -v docker-registry >/dev/null 2>&1 || missing+=(docker-registry)
# A real registry client for the cluster registry's tests (push and pull through the cluster CA).
command -v skopeo >/dev/null 2>&1 || missing+=(skopeo)
# nslookup inside pods' network namespaces (cluster DNS tests); nsenter and ip are in Debian's base.
# (and the Debian busybox-static binary is what the container tests' image is made of).
command -v busybox >/dev/null 2>&1 || missing+=(busybox-static)
# libcontainer links libseccomp (the default seccomp profile of Linux containers).
[ -e /usr/include/seccomp.h ] || missing+=(libseccomp-dev)
# The clock-step test runs a member under libfaketime (its wall clock stepped, monotonic kept).
[ -e /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 ] || missing+=(libfaketime)
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # The packaged registry would start a system service on :5000; tests start their own.
  policy_added=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && policy_added=1
  fi
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
  if [ "$policy_added" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
fi
# oras-py, an ORAS client (PyPI), pushes and pulls artifacts in the cluster registry's tests.
if ! python3 -c 'import oras.client' >/dev/null 2>&1; then
  echo "installing: oras-py (PyPI)"
  python3 -m pip install --quiet --disable-pip-version-check oras
fi
# The Python `kubernetes` client is the API's second acceptance client.
if ! python3 -c 'import kubernetes' >/dev/null 2>&1; then
  echo "installing: the Python kubernetes client (PyPI)"
  python3 -m pip install --quiet --disable-pip-version-check kubernetes
fi
command -v kubectl >/dev/null 2>&1 || { echo "kubectl (v1.32) is expected on this machine and is missing" >&2; exit 1; }
if ! cargo nextest --version >/dev/null 2>&1; then
  cargo install cargo-nextest --locked
fi
# The example workloads are WebAssembly programs built for wasm32-wasip2.
rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2

# --- checks ----------------------------------------------------------------------------
# No incremental caches: a one-off build does not reuse them, and with a dozen test binaries
# linking wasmtime they cost tens of GB of disk (the CI machine ran out of space once).
export CARGO_INCREMENTAL=0
# Crates depend only on crates above them in ARCHITECTURE.md's code map.
python3 scripts/check-layers.py
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo build --manifest-path examples/Cargo.toml --target-dir examples/target --target wasm32-wasip2 --release --locked
cargo nextest run --workspace --locked --no-fail-fast
# A short chaos soak (issue 15): three members under store and API load while they are killed,
# cut off and replaced, every history checked. The long soaks are benches/chaos-soak.sh.
cargo build --locked --bin chaos-soak
target/debug/chaos-soak --drover target/debug/drover --duration 100s --seed "$(date +%s)"
