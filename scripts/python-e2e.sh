#!/usr/bin/env bash
# The Python `kubernetes` client's own end-to-end suite (kubernetes/e2e_test, from the
# client's GitHub repository at a release tag; PyPI's distributions do not carry it) against a
# fresh `drover up`. Tests that need an image from a public registry (busybox, nginx and
# python pods that must run, exec and port-forward into them) are deselected: this machine
# pulls from no public registry.
#
#   scripts/python-e2e.sh /path/to/kubernetes-client-python-checkout [tag]
#
# Needs root (drover up) and the built binary (target/debug/drover, or DROVER=...).
set -euo pipefail
src=${1:?the path of a kubernetes-client/python checkout}
tag=${2:-v36.0.3}
repo=$(cd "$(dirname "$0")/.." && pwd)
drover=${DROVER:-$repo/target/debug/drover}
work=$(mktemp -d)
cleanup() {
  [ -n "${up:-}" ] && kill "$up" 2>/dev/null && wait "$up" 2>/dev/null
  grep "$work" /proc/mounts | awk '{print $2}' | xargs -r umount 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
# The suite of the tag, into the client of the same version.
git -C "$src" archive "$tag" kubernetes/e2e_test | tar x -C "$work"
python3 -m pip install --quiet --disable-pip-version-check --target "$work/site" \
  "kubernetes==${tag#v}" pytest
cp -r "$work/kubernetes/e2e_test" "$work/site/kubernetes/"
"$drover" up --data-dir "$work/data" --listen 127.0.71.1:6443 --node-address 127.0.71.1 \
  --node-port 10250 --pod-ip-range 127.171.0.0 --name e2e > "$work/up.log" 2>&1 &
up=$!
for _ in $(seq 100); do [ -e "$work/data/admin.kubeconfig" ] && break; sleep 0.2; done
mkdir -p "$work/home/.kube" && cp "$work/data/admin.kubeconfig" "$work/home/.kube/config"
cd "$work/site"
HOME="$work/home" PYTHONPATH="$work/site" python3 -m pytest -q -p no:cacheprovider \
  kubernetes/e2e_test -k "not (test_pod_apis or exec or exit_code or portforward)"
