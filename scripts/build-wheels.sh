#!/usr/bin/env bash
# Put the package and its runtime dependencies, as wheels, into DIR for an offline image
# build. PY_VERSION and PLATFORM (env) select the image's Python and architecture; they
# default to CPython 3.11 (Debian bookworm's python3, the image's base) and this machine's
# architecture.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?output directory}
python=${PYTHON:-python3}
py_version=${PY_VERSION:-3.11}
arch=$(uname -m)
platform=${PLATFORM:-manylinux_2_28_${arch}}
rm -rf "$out"; mkdir -p "$out"
"$python" -m pip wheel -q --no-deps --wheel-dir "$out" .
"$python" -m pip download -q --dest "$out" --only-binary=:all: \
  --python-version "$py_version" --implementation cp --platform "$platform" \
  --platform "manylinux_2_17_${arch}" --platform "manylinux2014_${arch}" \
  $(sed -n '/^install_requires =/,/^$/p' setup.cfg | grep -E '^\s+[a-z]' | sed 's/#.*//' | xargs)
ls "$out"
