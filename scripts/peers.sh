#!/usr/bin/env bash
# Build the real peers (KubeVirt's and Kubernetes' own programs) the tests run against.
#   scripts/peers.sh build [MODULE...]  build every peer binary (of the MODULEs, e.g. kubevirt)
#                                       that is not cached yet
#   scripts/peers.sh path NAME    print the cached binary NAME (build first)
#   scripts/peers.sh dir          print the directory holding every peer binary
#
# Each directory tests/peers/<module>/ is one Go module with a peers.txt: one line per
# binary, "<name> <go package> [NAME=VALUE...]" (a package of the module itself, ./cmd/x, or
# of one of its dependencies, kubevirt.io/kubevirt/cmd/sidecars; the optional NAME=VALUE
# words are that build's environment, e.g. CGO_ENABLED=1 for a peer that links libvirt). A module's binaries are cached under
# $QAT_HOOK_PEERS_CACHE/<module>-<key>/, key = sha256 of its go.mod, go.sum, peers.txt, Go
# sources and the Go version, so a second run builds nothing. The binaries of the current
# keys are linked into $QAT_HOOK_PEERS_CACHE/bin/<name>. Concurrent runs are safe: a module is
# built under a lock into a temporary directory that is renamed into place when complete.
# A peer that does not build fails the run with one line naming it and its log file.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD/tests/peers
cache=${QAT_HOOK_PEERS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kubevirt-qat-hook/peers}
export GOFLAGS=${GOFLAGS:--buildvcs=false} CGO_ENABLED=${CGO_ENABLED:-0}
export GOTOOLCHAIN=${GOTOOLCHAIN:-auto}

need_go() {
  if ! command -v go >/dev/null 2>&1; then
    echo "peers: no 'go' on PATH: install Go 1.26 or newer (https://go.dev/dl) to build the test peers" >&2
    exit 1
  fi
}

module_key() {  # module dir -> cache key
  local dir=$1
  {
    go version
    cd "$dir"
    find . -name '*.go' -o -name go.mod -o -name go.sum -o -name peers.txt | LC_ALL=C sort |
      while read -r f; do printf '%s\n' "$f"; cat "$f"; done
  } | sha256sum | cut -c1-16
}

build_module() {  # module dir
  local dir=$1 name key out log start
  name=$(basename "$dir")
  key=$(module_key "$dir")
  out=$cache/$name-$key
  mkdir -p "$cache/bin"
  local lock lockfd tmp
  lock=$cache/$name-$key.lock
  exec {lockfd}>"$lock"
  flock "$lockfd"  # another run building the same module: wait for it, then reuse its result
  if [ ! -e "$out/.complete" ]; then
    tmp=$out.tmp.$$
    rm -rf "$out" "$tmp" && mkdir -p "$tmp"
    log=$cache/$name-$key.log
    : >"$log"
    start=$(date +%s)
    echo "peers: building $name (first time: minutes; log $log)" >&2
    while read -r bin pkg buildenv; do
      case "$bin" in ''|'#'*) continue ;; esac
      # shellcheck disable=SC2086  # buildenv: NAME=VALUE words
      if ! (cd "$dir" && env $buildenv go build -trimpath -o "$tmp/$bin" "$pkg") >>"$log" 2>&1; then
        echo "peers: $bin ($pkg) in tests/peers/$name did not build; see $log" >&2
        tail -n 20 "$log" >&2
        rm -rf "$tmp"
        exit 1
      fi
    done <"$dir/peers.txt"
    touch "$tmp/.complete"
    mv "$tmp" "$out"
    echo "peers: built $name in $(( $(date +%s) - start )) s" >&2
    # Older builds of this module (other keys) are hundreds of MB each: keep only this one.
    for old in "$cache/$name"-*/; do
      case "${old%/}" in "$out"|*.tmp.*) ;; *) rm -rf "${old%/}" "${old%/}.log" "${old%/}.lock" ;; esac
    done
  fi
  exec {lockfd}>&-
  while read -r bin _; do
    case "$bin" in ''|'#'*) continue ;; esac
    ln -sfn "$out/$bin" "$cache/bin/$bin"
  done <"$dir/peers.txt"
}

case "${1:-build}" in
  build)
    need_go
    shift || true
    if [ $# -gt 0 ]; then
      for name in "$@"; do
        [ -f "$root/$name/peers.txt" ] || {
          echo "peers: no module tests/peers/$name (with a peers.txt)" >&2; exit 2; }
        build_module "$root/$name"
      done
    else
      for dir in "$root"/*/; do
        if [ -f "$dir/peers.txt" ]; then build_module "${dir%/}"; fi
      done
    fi
    ;;
  path)
    [ -x "$cache/bin/${2:?usage: peers.sh path NAME}" ] || {
      echo "peers: no peer '$2' in $cache/bin: run scripts/peers.sh build" >&2; exit 1; }
    echo "$cache/bin/$2"
    ;;
  dir)
    echo "$cache/bin"
    ;;
  *)
    echo "usage: scripts/peers.sh [build [MODULE...] | path NAME | dir]" >&2
    exit 2
    ;;
esac
