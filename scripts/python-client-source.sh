#!/usr/bin/env bash
# The source distribution (PyPI) of the Python `kubernetes` client this machine has installed,
# unpacked: it carries the client's own end-to-end tests of its dynamic client
# (kubernetes/dynamic/test_client.py and test_discovery.py), which cli/tests/python_client.rs
# runs against `drover up`. (The client's full kubernetes/e2e_test suite is only in its Git
# repository: scripts/python-e2e.sh runs that one from a checkout.)
#
#   scripts/python-client-source.sh     # prints the directory holding the `kubernetes` package
#
# Idempotent; kept in ~/.cache/drover/tools (DROVER_TOOLS), across fresh clones.
set -euo pipefail
version=$(python3 -c 'import kubernetes; print(kubernetes.__version__)')
dir=${DROVER_TOOLS:-$HOME/.cache/drover/tools}/python-client-$version
if [ ! -d "$dir/kubernetes" ]; then
  work=$(mktemp -d)
  python3 -m pip download --quiet --disable-pip-version-check --no-deps --no-binary :all: \
    --dest "$work" "kubernetes==$version" >&2
  tar xzf "$work"/kubernetes-"$version".tar.gz -C "$work"
  mkdir -p "$(dirname "$dir")"
  # Another test may be unpacking the same version: whoever renames first wins.
  mv -T "$work/kubernetes-$version" "$dir.part.$$"
  mv -T "$dir.part.$$" "$dir" 2>/dev/null || rm -rf "$dir.part.$$"
  rm -rf "$work"
fi
echo "$dir"
