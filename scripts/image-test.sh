#!/usr/bin/env bash
# Build the shipped image recipe on this machine without any container registry, run it,
# and measure it (make image-test; .ci/run runs it after make test).
#
# 1. debootstrap a minimal Debian (the family of the Dockerfile's debian:bookworm-slim
#    default base, without python3, as that image is) into a cached tarball, and import it
#    as the local BASE_IMAGE;
# 2. build the wheels on the host into the build context (pip inside a chroot build may
#    not reach or trust the package index) and `buildah bud` images/Dockerfile, which
#    installs Debian's python3 from the Debian mirror as the real build does;
# 3. check the image's user (107), optimisation level and size; run the entrypoint with a
#    host directory mounted at /run/kubevirt-hooks (Debian's /var/run links to /run), and
#    call Info, OnDefineDomain with two VFs, and Shutdown with tests/image_client.py;
# 4. run it again with PYTHONVERBOSE=1: fail if any module was compiled from source (no
#    up-to-date bytecode), if serving loaded asyncio, ssl or grpc.aio, or if the run wrote
#    any file into the image's root file system;
# 5. print the per-VM figures of benchmarks/bench_sidecar.py for ten instances of the
#    image's entrypoint, chrooted into the image's root as uid 107;
# 6. remove every container and image it made.
# BENCH=0 skips step 5; BENCH_ARGS adds arguments to it (e.g. --levers). BASELINE=REV (a git
# revision) adds --levers and a first lever row served by that revision's hook_sidecar
# package in the same image: before and after in one run. KEEP=1 keeps the image
# (localhost/kubevirt-qat-hook:image-test) for a closer look.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
started=$(date +%s)
PY=${PY:-.venv/bin/python}
SUITE=${SUITE:-bookworm}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
cache=${CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kubevirt-qat-hook}
base_tar=$cache/debian-$SUITE-minbase.tar
base_image=localhost/qat-hook-base:$SUITE
image=localhost/kubevirt-qat-hook:image-test
B=(buildah --storage-driver vfs)
case "$SUITE" in  # the python3 that Debian's suite ships: the wheels must match it
  bookworm) py_version=3.11 ;;
  *) echo "image-test: SUITE $SUITE: only bookworm, the Dockerfile's base, is tested" >&2; exit 2 ;;
esac

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
mounted=()
cleanup() {
  set +e
  [ -n "${server_pid:-}" ] && kill "$server_pid" 2>/dev/null
  for c in "${mounted[@]}"; do "${B[@]}" umount "$c" >/dev/null 2>&1; done
  for c in "${containers[@]}"; do "${B[@]}" rm "$c" >/dev/null 2>&1; done
  [ "${KEEP:-0}" = 1 ] || "${B[@]}" rmi -f "$image" "$base_image" >/dev/null 2>&1
  rm -rf "$work" "$root/images/wheels"
}
trap cleanup EXIT

# 1. the base image
if [ ! -s "$base_tar" ]; then
  echo "image-test: debootstrap $SUITE (cached in $base_tar)" >&2
  mkdir -p "$cache"
  rootfs=$work/rootfs
  debootstrap --variant=minbase "$SUITE" "$rootfs" "$MIRROR" \
    >"$work/debootstrap.log" 2>&1 || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb
  tar -C "$rootfs" -cf "$base_tar.tmp" . && mv "$base_tar.tmp" "$base_tar"
  rm -rf "$rootfs"
fi
ctr=$("${B[@]}" from scratch); containers+=("$ctr")
"${B[@]}" add "$ctr" "$base_tar" / >/dev/null
"${B[@]}" config --cmd /bin/sh "$ctr"
"${B[@]}" commit -q "$ctr" "$base_image" >/dev/null
echo "image-test: base $base_image (Debian $SUITE minbase, python $py_version from the build)" >&2

# 2. the build
build_started=$(date +%s)
PYTHON=$PY PY_VERSION=$py_version scripts/build-wheels.sh images/wheels >/dev/null
BASE_IMAGE=$base_image WHEELS=0 CONTAINER_TOOL=buildah \
  scripts/image.sh build localhost/kubevirt-qat-hook image-test >"$work/build.log" 2>&1 \
  || { tail -30 "$work/build.log" >&2; exit 1; }
build_seconds=$(( $(date +%s) - build_started ))

# 3. checks and a real run
"${B[@]}" inspect --type image "$image" >"$work/inspect.json"
config() {
  "$PY" -c 'import json,sys; c=json.load(open(sys.argv[1]))["OCIv1"]["config"]; v=c.get(sys.argv[2]); print(json.dumps(v) if isinstance(v, list) else (v or ""))' \
    "$work/inspect.json" "$1"
}
user=$(config User)
entrypoint=$(config Entrypoint)
mapfile -t image_env < <("$PY" -c 'import json,sys; print("\n".join(json.loads(sys.argv[1])))' "$(config Env)")
size=$("${B[@]}" images --format '{{.Size}}' "$image")
[ "$user" = "107:107" ] || { echo "image-test: image user is '$user', expected 107:107" >&2; exit 1; }
printf '%s\n' "${image_env[@]}" | grep -qx 'PYTHONOPTIMIZE=2' \
  || { echo "image-test: the image does not run with PYTHONOPTIMIZE=2" >&2; exit 1; }
echo "image-test: user $user, entrypoint $entrypoint, size $size" >&2

mapfile -t cmd < <("$PY" -c 'import json,sys; print("\n".join(json.loads(sys.argv[1])))' "$entrypoint")
serve() {  # serve LOG [--env K=V]...: run the entrypoint in a new container, in the background
  local log=$1; shift
  rm -rf "$sockets"; mkdir -p "$sockets"; chown 107:107 "$sockets"
  "${B[@]}" run --isolation chroot --user 107:107 \
    -v "$sockets:/run/kubevirt-hooks" \
    --env QAT0=0000:3d:02.2 --env QAT1=0000:3d:02.3 --env QAT_HOOK_VERIFY_SYSFS=off \
    --env QAT_HOOK_PODRESOURCES_SOCKET= "$@" \
    "$run" -- "${cmd[@]}" --socket-dir /run/kubevirt-hooks >"$log" 2>&1 &
  server_pid=$!
}
finish() {  # finish LOG: the client's calls passed; the server must exit 0 and clean up
  local log=$1 status=0
  wait "$server_pid" || status=$?
  server_pid=
  [ "$status" = 0 ] || { echo "image-test: server exited $status" >&2; tail -20 "$log" >&2; exit 1; }
  [ ! -e "$sockets/qat.sock" ] || { echo "image-test: socket left behind" >&2; exit 1; }
}
sockets=$work/hooks
run=$("${B[@]}" from "$image"); containers+=("$run")
serve "$work/server.log"
"$PY" tests/image_client.py "$sockets/qat.sock" || { cat "$work/server.log" >&2; exit 1; }
finish "$work/server.log"
grep -q '"msg":"ready: serving on /run/kubevirt-hooks/qat.sock"' "$work/server.log" \
  || { echo "image-test: no ready line in the server's log" >&2; cat "$work/server.log" >&2; exit 1; }

# 4. bytecode, imports and writes, from python -v and the container's root file system
mnt=$("${B[@]}" mount "$run"); mounted+=("$run")
touch "$work/before"  # find -newer compares nanosecond timestamps
serve "$work/verbose.log" --env PYTHONVERBOSE=1
"$PY" tests/image_client.py "$sockets/qat.sock" >/dev/null || { tail -40 "$work/verbose.log" >&2; exit 1; }
finish "$work/verbose.log"
"$PY" tests/image_client.py --check-imports "$work/verbose.log"
written=$(find "$mnt" \( -path "$mnt/proc" -o -path "$mnt/sys" -o -path "$mnt/dev" \
  -o -path "$mnt/run" \) -prune -o -newer "$work/before" -print)
[ -z "$written" ] || { echo "image-test: serving wrote into the image: $written" >&2; exit 1; }

# 5. per-VM figures of the image itself
if [ "${BENCH:-1}" = 1 ]; then
  env_args=()
  for item in "${image_env[@]}"; do env_args+=(--image-env "$item"); done
  if [ -n "${BASELINE:-}" ]; then
    mkdir -p "$work/base/$BASELINE"
    git archive "$BASELINE" hook_sidecar | tar -x -C "$work/base/$BASELINE"
    env_args+=(--levers --baseline "$work/base/$BASELINE")
  fi
  # shellcheck disable=SC2086
  "$PY" benchmarks/bench_sidecar.py --rootfs "$mnt" --entrypoint "$entrypoint" \
    "${env_args[@]}" --instances 10 --calls 300 ${BENCH_ARGS:-} \
    | sed 's/^/image-test: bench: /' >&2
fi
echo "image-test: passed: image $size, build ${build_seconds}s, total $(( $(date +%s) - started ))s" >&2
