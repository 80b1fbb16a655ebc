#!/usr/bin/env bash
# Runs Drover's main job: `drover up`, a one-node cluster on this machine. Installs first what
# pod networking uses (iproute2 for pods' namespaces and routes, nftables for NetworkPolicy)
# and what the build links (libseccomp, for Linux containers' seccomp profiles) when run as
# root on Debian; without root, `drover up` gives pods loopback addresses and runs Wasm only.
# Extra arguments go to `drover up`.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" = 0 ]; then
  missing=()
  command -v ip >/dev/null 2>&1 || missing+=(iproute2)
  command -v nft >/dev/null 2>&1 || missing+=(nftables)
  [ -e /usr/include/seccomp.h ] || missing+=(libseccomp-dev)
  if ((${#missing[@]})); then
    echo "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
elif [ ! -e /usr/include/seccomp.h ]; then
  echo "drover needs libseccomp to build: run this script as root once, or install libseccomp-dev" >&2
  exit 1
fi
exec cargo run --release --bin drover -- up "$@"
