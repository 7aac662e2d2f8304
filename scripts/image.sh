#!/usr/bin/env bash
# Build or push the sidecar image with whichever of docker, podman or buildah exists.
#   scripts/image.sh build IMAGE TAG
#   scripts/image.sh push IMAGE TAG
# BASE_IMAGE (env) overrides the Dockerfile's base; WHEELS=1 (the default) first builds
# the wheels on this host into images/wheels, so the build needs no package index.
set -euo pipefail
cd "$(dirname "$0")/.."
action=${1:?build or push}; image=${2:?image}; tag=${3:?tag}

tool=${CONTAINER_TOOL:-}
if [ -z "$tool" ]; then
  for candidate in docker podman buildah; do
    if command -v "$candidate" >/dev/null 2>&1; then
      # docker's client exists on machines without an engine; only use it if it answers.
      if [ "$candidate" = docker ] && ! docker info >/dev/null 2>&1; then continue; fi
      tool=$candidate; break
    fi
  done
fi
[ -n "$tool" ] || { echo "image.sh: no docker, podman or buildah found" >&2; exit 1; }

buildah_opts=()
if [ "$tool" = buildah ]; then
  buildah_opts=(--storage-driver "${STORAGE_DRIVER:-vfs}")
fi

case "$action" in
  build)
    if [ "${WHEELS:-1}" = 1 ]; then
      scripts/build-wheels.sh images/wheels
    fi
    version=$(sed -n 's/^__version__ = "\(.*\)"/\1/p' hook_sidecar/__init__.py)
    args=(--build-arg "VERSION=$version" -f images/Dockerfile -t "$image:$tag")
    [ -n "${BASE_IMAGE:-}" ] && args+=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
    if [ "$tool" = buildah ]; then
      buildah "${buildah_opts[@]}" bud --isolation "${BUILDAH_ISOLATION:-chroot}" "${args[@]}" .
    else
      "$tool" build "${args[@]}" .
    fi
    ;;
  push)
    "$tool" "${buildah_opts[@]}" push "$image:$tag"
    ;;
  *) echo "image.sh: unknown action $action" >&2; exit 2 ;;
esac
