#!/usr/bin/env bash
# Build or push the sidecar image's flavors with whichever of docker, podman or buildah exists.
#   scripts/image.sh build IMAGE TAG     IMAGE:TAG (server flavor) and IMAGE:TAG-shim (shim flavor)
#   scripts/image.sh push IMAGE TAG
# FLAVORS (env, default "server shim") picks the flavors. BASE_IMAGE (env) overrides the
# Dockerfile's base; WHEELS=1 (the default) first builds the wheels on this host into
# images/wheels, so the build needs no package index. The shim flavor needs KubeVirt's
# sidecar-shim: SIDECAR_SHIM=PATH names a static binary, else the one scripts/peers.sh builds
# (kubevirt.io/kubevirt/cmd/sidecars at the version tests/peers/kubevirt pins) is used; it is
# copied to images/bin/ in the build context.
set -euo pipefail
cd "$(dirname "$0")/.."
action=${1:?build or push}; image=${2:?image}; tag=${3:?tag}
flavors=${FLAVORS:-server shim}
flavor_tag() { if [ "$1" = server ]; then echo "$tag"; else echo "$tag-$1"; fi; }

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
    rm -rf images/bin
    case " $flavors " in
      *" shim "*)
        shim=${SIDECAR_SHIM:-}
        if [ -z "$shim" ] && ! shim=$(scripts/peers.sh path sidecar-shim 2>/dev/null); then
          scripts/peers.sh build >&2
          shim=$(scripts/peers.sh path sidecar-shim)
        fi
        mkdir -p images/bin && cp -L "$shim" images/bin/sidecar-shim
        ;;
    esac
    version=$(sed -n 's/^__version__ = "\(.*\)"/\1/p' hook_sidecar/__init__.py)
    for flavor in $flavors; do
      args=(--build-arg "VERSION=$version" -f images/Dockerfile --target "$flavor"
            -t "$image:$(flavor_tag "$flavor")")
      [ -n "${BASE_IMAGE:-}" ] && args+=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
      if [ "$tool" = buildah ]; then
        # --layers: the second flavor reuses the first one's builder and runtime stages.
        buildah "${buildah_opts[@]}" bud --layers --isolation "${BUILDAH_ISOLATION:-chroot}" \
          "${args[@]}" .
      else
        "$tool" build "${args[@]}" .
      fi
    done
    ;;
  push)
    for flavor in $flavors; do
      "$tool" "${buildah_opts[@]}" push "$image:$(flavor_tag "$flavor")"
    done
    ;;
  *) echo "image.sh: unknown action $action" >&2; exit 2 ;;
esac
