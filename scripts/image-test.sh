#!/usr/bin/env bash
# Build the shipped image recipe, both flavors, on this machine without any container
# registry, run them under KubeVirt's own hook manager, and measure them (make image-test;
# .ci/run runs it after make test).
#
# 1. debootstrap a minimal Debian (the family of the Dockerfile's debian:bookworm-slim
#    default base, without python3, as that image is) into a cached tarball, and import it
#    as the local BASE_IMAGE;
# 2. build the wheels on the host into the build context (pip inside a chroot build may
#    not reach or trust the package index) and `buildah bud` images/Dockerfile's two
#    targets, server and shim (with KubeVirt's sidecar-shim from scripts/peers.sh), which
#    install Debian's python3 from the Debian mirror as the real build does;
# 3. for each flavor: check the image's user (107), optimisation level and size; run the
#    entrypoint with a host directory mounted at /run/kubevirt-hooks (Debian's /var/run
#    links to /run) and drive it with KubeVirt's hook manager (the hookdriver peer: socket
#    scan, Info, OnDefineDomain with two VFs, Shutdown); the server flavor also with
#    tests/image_client.py;
# 4. run each again with PYTHONVERBOSE=1: fail if any module was compiled from source (no
#    up-to-date bytecode), if serving loaded asyncio, ssl or grpc.aio (the shim's script:
#    grpc or protobuf at all), or if the run wrote any file into the image's root;
# 5. print each flavor's per-VM figures (benchmarks/bench_sidecar.py --flavor, ten
#    instances chrooted into the image's root as uid 107, calls by the hook manager), each
#    line starting with the flavor's name;
# 6. remove every container and image it made.
# BENCH=0 skips step 5; BENCH_ARGS adds arguments to a further run of the server flavor's
# detailed benchmark (e.g. --levers). BASELINE=REV (a git revision) adds that run with
# --levers and a first lever row served by that revision's hook_sidecar package in the same
# image: before and after in one run. KEEP=1 keeps the images
# (localhost/kubevirt-qat-hook:image-test and :image-test-shim) for a closer look.
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
flavors=(server shim)
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
  [ "${KEEP:-0}" = 1 ] || "${B[@]}" rmi -f "$image" "$image-shim" "$base_image" >/dev/null 2>&1
  rm -rf "$work" "$root/images/wheels" "$root/images/bin"
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

# 2. the build (the peers: KubeVirt's sidecar-shim for the image, its hook manager to drive it)
hookdriver=$(scripts/peers.sh path hookdriver 2>/dev/null) \
  || { scripts/peers.sh build >&2; hookdriver=$(scripts/peers.sh path hookdriver); }
build_started=$(date +%s)
PYTHON=$PY PY_VERSION=$py_version scripts/build-wheels.sh images/wheels >/dev/null
BASE_IMAGE=$base_image WHEELS=0 CONTAINER_TOOL=buildah \
  scripts/image.sh build localhost/kubevirt-qat-hook image-test >"$work/build.log" 2>&1 \
  || { tail -30 "$work/build.log" >&2; exit 1; }
build_seconds=$(( $(date +%s) - build_started ))

# 3. checks and a real run of each flavor, driven by KubeVirt's hook manager
hooks=$work/hooks        # as virt-launcher sees /var/run/kubevirt-hooks
sockets=$hooks/hook-sidecar-0
"$PY" tests/image_client.py --two-vf-vmi "$work/vmi.json"
serve() {  # serve LOG [--env K=V]...: run the flavor's entrypoint in its container, in the background
  local log=$1; shift
  rm -rf "$hooks"; mkdir -p "$sockets"; chown 107:107 "$sockets"
  "${B[@]}" run --isolation chroot --user 107:107 \
    -v "$sockets:/run/kubevirt-hooks" \
    --env QAT0=0000:3d:02.2 --env QAT1=0000:3d:02.3 --env QAT_HOOK_VERIFY_SYSFS=off \
    --env QAT_HOOK_PODRESOURCES_SOCKET= "$@" \
    "$run" -- "${cmd[@]}" >"$log" 2>&1 &
  server_pid=$!
}
drive() {  # drive LOG: the hook manager collects the socket, calls OnDefineDomain and Shutdown
  "$hookdriver" -hooks-dir "$hooks" -vmi "$work/vmi.json" -domain examples/domain.xml \
    -timeout 60s -log "$work/manager.log" >"$work/defined.xml" \
    || { cat "$work/manager.log" >&2; tail -20 "$1" >&2; exit 1; }
  "$PY" tests/image_client.py --check-domain "$work/defined.xml" >/dev/null
}
finish() {  # finish LOG: the calls passed; the entrypoint must exit 0 and clean up
  local log=$1 status=0
  wait "$server_pid" || status=$?
  server_pid=
  [ "$status" = 0 ] || { echo "image-test: $flavor exited $status" >&2; tail -20 "$log" >&2; exit 1; }
  [ -z "$(ls -A "$sockets")" ] || { echo "image-test: $flavor left $(ls "$sockets") behind" >&2; exit 1; }
}
summary=()
for flavor in "${flavors[@]}"; do
  tagged=$image; [ "$flavor" = server ] || tagged=$image-$flavor
  "${B[@]}" inspect --type image "$tagged" >"$work/inspect.json"
  config() {
    "$PY" -c 'import json,sys; c=json.load(open(sys.argv[1]))["OCIv1"]["config"]; v=c.get(sys.argv[2]); print(json.dumps(v) if isinstance(v, list) else (v or ""))' \
      "$work/inspect.json" "$1"
  }
  user=$(config User)
  entrypoint=$(config Entrypoint)
  default_args=$(config Cmd)
  command=$("$PY" -c 'import json,sys; print(json.dumps(json.loads(sys.argv[1]) + json.loads(sys.argv[2] or "[]")))' "$entrypoint" "$default_args")
  mapfile -t image_env < <("$PY" -c 'import json,sys; print("\n".join(json.loads(sys.argv[1])))' "$(config Env)")
  size=$("${B[@]}" images --format '{{.Size}}' "$tagged")
  [ "$user" = "107:107" ] || { echo "image-test: $flavor image user is '$user', expected 107:107" >&2; exit 1; }
  printf '%s\n' "${image_env[@]}" | grep -qx 'PYTHONOPTIMIZE=2' \
    || { echo "image-test: the $flavor image does not run with PYTHONOPTIMIZE=2" >&2; exit 1; }
  echo "image-test: $flavor: user $user, command $command, size $size" >&2
  mapfile -t cmd < <("$PY" -c 'import json,sys; print("\n".join(json.loads(sys.argv[1])))' "$command")
  case $flavor in
    server) cmd+=(--socket-dir /run/kubevirt-hooks) ;;
    shim) [ "${cmd[0]}" = sidecar-shim ] || { echo "image-test: shim entrypoint is ${cmd[0]}" >&2; exit 1; } ;;
  esac
  run=$("${B[@]}" from "$tagged"); containers+=("$run")

  serve "$work/$flavor.log"
  drive "$work/$flavor.log"
  finish "$work/$flavor.log"
  if [ "$flavor" = server ]; then
    grep -q '"msg":"ready: serving on /run/kubevirt-hooks/qat.sock"' "$work/$flavor.log" \
      || { echo "image-test: no ready line in the server's log" >&2; cat "$work/$flavor.log" >&2; exit 1; }
    serve "$work/$flavor-client.log"
    "$PY" tests/image_client.py "$sockets/qat.sock" >&2 || { cat "$work/$flavor-client.log" >&2; exit 1; }
    finish "$work/$flavor-client.log"
  fi
  echo "image-test: $flavor: KubeVirt's hook manager got both VFs and stopped it with Shutdown" >&2

  # 4. bytecode, imports and writes, from python -v and the container's root file system
  mnt=$("${B[@]}" mount "$run"); mounted+=("$run")
  touch "$work/before"  # find -newer compares nanosecond timestamps
  serve "$work/$flavor-verbose.log" --env PYTHONVERBOSE=1
  drive "$work/$flavor-verbose.log"
  finish "$work/$flavor-verbose.log"
  check=(--check-imports "$work/$flavor-verbose.log"); [ "$flavor" = shim ] && check+=(--shim)
  "$PY" tests/image_client.py "${check[@]}" | sed "s/^/image-test: $flavor: /" >&2
  written=$(find "$mnt" \( -path "$mnt/proc" -o -path "$mnt/sys" -o -path "$mnt/dev" \
    -o -path "$mnt/run" \) -prune -o -newer "$work/before" -print)
  [ -z "$written" ] || { echo "image-test: $flavor wrote into the image: $written" >&2; exit 1; }

  # 5. per-VM figures of the image itself, under the hook manager
  if [ "${BENCH:-1}" = 1 ]; then
    env_args=()
    for item in "${image_env[@]}"; do env_args+=(--image-env "$item"); done
    "$PY" benchmarks/bench_sidecar.py --flavor "$flavor" --rootfs "$mnt" --entrypoint "$command" \
      --hookdriver "$hookdriver" "${env_args[@]}" --instances 10 --calls 300 \
      | tee "$work/$flavor-bench.txt" | sed 's/^/image-test: bench: /' >&2
    mapfile -t -O "${#summary[@]}" summary < <(grep -v ' machine: ' "$work/$flavor-bench.txt")
    if [ "$flavor" = server ] && { [ -n "${BASELINE:-}" ] || [ -n "${BENCH_ARGS:-}" ]; }; then
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
  fi
done
printf '%s\n' "${summary[@]}"
echo "image-test: passed: both flavors, build ${build_seconds}s, total $(( $(date +%s) - started ))s" >&2
