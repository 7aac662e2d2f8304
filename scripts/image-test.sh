#!/usr/bin/env bash
# Build the real image on this machine without any registry, start its entrypoint, and
# drive it over gRPC from the host (make image-test; .ci/run runs it after make test).
#
# 1. debootstrap a minimal Debian with python3 and venv support into a cached tarball,
#    and import it as the local BASE_IMAGE;
# 2. build the wheels on the host into the build context (pip inside a chroot build may
#    not reach or trust the package index) and `buildah bud` images/Dockerfile;
# 3. check the image's user is 107, report its size, run the entrypoint with a host
#    directory mounted at /run/kubevirt-hooks (Debian's /var/run links to /run), and
#    call Info, OnDefineDomain with two VFs, and Shutdown with tests/image_client.py;
# 4. remove every container and image it made.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
started=$(date +%s)
PY=${PY:-.venv/bin/python}
SUITE=${SUITE:-bookworm}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
cache=${CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kubevirt-qat-hook}
base_tar=$cache/debian-$SUITE-python.tar
base_image=localhost/qat-hook-base:$SUITE
image=localhost/kubevirt-qat-hook:image-test
B=(buildah --storage-driver vfs)

need() { command -v "$1" >/dev/null 2>&1; }
if ! need buildah || ! need debootstrap; then
  if [ "$(id -u)" = 0 ] && need apt-get; then
    echo "image-test: installing buildah and debootstrap" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      buildah debootstrap >/dev/null
  else
    echo "image-test: needs buildah and debootstrap (apt-get install buildah debootstrap)" >&2
    exit 1
  fi
fi

work=$(mktemp -d)
containers=()
cleanup() {
  set +e
  [ -n "${server_pid:-}" ] && kill "$server_pid" 2>/dev/null
  for c in "${containers[@]}"; do "${B[@]}" rm "$c" >/dev/null 2>&1; done
  "${B[@]}" rmi -f "$image" "$base_image" >/dev/null 2>&1
  rm -rf "$work" "$root/images/wheels"
}
trap cleanup EXIT

# 1. the base image
if [ ! -s "$base_tar" ]; then
  echo "image-test: debootstrap $SUITE (cached in $base_tar)" >&2
  mkdir -p "$cache"
  rootfs=$work/rootfs
  debootstrap --variant=minbase --include=python3,python3-venv "$SUITE" "$rootfs" "$MIRROR" \
    >"$work/debootstrap.log" 2>&1 || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb
  tar -C "$rootfs" -cf "$base_tar.tmp" . && mv "$base_tar.tmp" "$base_tar"
  rm -rf "$rootfs"
fi
ctr=$("${B[@]}" from scratch); containers+=("$ctr")
"${B[@]}" add "$ctr" "$base_tar" / >/dev/null
"${B[@]}" config --cmd /bin/sh "$ctr"
"${B[@]}" commit -q "$ctr" "$base_image" >/dev/null
py_version=$(tar -tf "$base_tar" | sed -n 's|^\./usr/lib/python\(3\.[0-9]*\)/os\.py$|\1|p' | head -1)
echo "image-test: base $base_image (python $py_version)" >&2

# 2. the build
build_started=$(date +%s)
PYTHON=$PY PY_VERSION=$py_version scripts/build-wheels.sh images/wheels >/dev/null
BASE_IMAGE=$base_image WHEELS=0 CONTAINER_TOOL=buildah \
  scripts/image.sh build localhost/kubevirt-qat-hook image-test >"$work/build.log" 2>&1 \
  || { tail -30 "$work/build.log" >&2; exit 1; }
build_seconds=$(( $(date +%s) - build_started ))

# 3. checks and a real run
"${B[@]}" inspect --type image "$image" >"$work/inspect.json"
config() { "$PY" -c 'import json,sys; c=json.load(open(sys.argv[1]))["OCIv1"]["config"]; print(json.dumps(c.get(sys.argv[2])) if sys.argv[2]=="Entrypoint" else c.get(sys.argv[2], ""))' "$work/inspect.json" "$1"; }
user=$(config User)
entrypoint=$(config Entrypoint)
size=$("${B[@]}" images --format '{{.Size}}' "$image")
[ "$user" = "107:107" ] || { echo "image-test: image user is '$user', expected 107:107" >&2; exit 1; }
echo "image-test: user $user, entrypoint $entrypoint, size $size" >&2

sockets=$work/hooks; mkdir -p "$sockets"; chown 107:107 "$sockets"
run=$("${B[@]}" from "$image"); containers+=("$run")
mapfile -t cmd < <("$PY" -c 'import json,sys; print("\n".join(json.loads(sys.argv[1])))' "$entrypoint")
"${B[@]}" run --isolation chroot --user 107:107 \
  -v "$sockets:/run/kubevirt-hooks" \
  --env QAT0=0000:3d:02.2 --env QAT1=0000:3d:02.3 --env QAT_HOOK_VERIFY_SYSFS=off \
  --env QAT_HOOK_PODRESOURCES_SOCKET= \
  "$run" -- "${cmd[@]}" --socket-dir /run/kubevirt-hooks >"$work/server.log" 2>&1 &
server_pid=$!
"$PY" tests/image_client.py "$sockets/qat.sock" || { cat "$work/server.log" >&2; exit 1; }
wait "$server_pid"; status=$?; server_pid=
[ "$status" = 0 ] || { echo "image-test: server exited $status" >&2; cat "$work/server.log" >&2; exit 1; }
[ ! -e "$sockets/qat.sock" ] || { echo "image-test: socket left behind" >&2; exit 1; }
grep -q '"msg":"ready: serving on /run/kubevirt-hooks/qat.sock"' "$work/server.log"
echo "image-test: passed: image $size, build ${build_seconds}s, total $(( $(date +%s) - started ))s" >&2
