#!/usr/bin/env bash
# Linux containers measured against runc and crun on the same bundle, in the same run, plus pod
# start (create -> Ready, image cached) and pull throughput from a local registry. NEEDS ROOT.
# Installs runc, crun, docker-registry, busybox-static and libseccomp-dev if missing, builds
# drover and oci-bench in release mode, runs benches/src/oci_bench.rs. Extra arguments go to
# oci-bench (e.g. --runs 300 --pods 100).
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
for tool in runc crun docker-registry busybox unshare; do
  command -v "$tool" >/dev/null 2>&1 || case "$tool" in
    busybox) missing+=(busybox-static) ;;
    unshare) missing+=(util-linux) ;;
    *) missing+=("$tool") ;;
  esac
done
[ -e /usr/include/seccomp.h ] || missing+=(libseccomp-dev)
if ((${#missing[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null
  rm -f /usr/sbin/policy-rc.d
fi
cargo build --release --bin drover --bin oci-bench
echo "runc: $(runc --version | head -1); crun: $(crun --version | head -1)"
./target/release/oci-bench --drover target/release/drover "$@"
