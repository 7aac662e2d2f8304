#!/usr/bin/env bash
# Install the Debian/Ubuntu packages a target needs, when they are missing.
#   scripts/system-deps.sh demo   -> python3 venv support
#   scripts/system-deps.sh test   -> plus what libvirt-python builds and validates against
# Installs only as root on a Debian-family system; elsewhere it prints what to install
# and carries on (pip will then say exactly what failed).
set -euo pipefail

want=(python3-venv)
if [ "${1:-demo}" = "test" ]; then
  want+=(libvirt-dev libvirt0 pkg-config gcc python3-dev golang-go)
fi

if ! command -v dpkg-query >/dev/null 2>&1; then
  echo "system-deps: not a Debian-family system; make sure these are installed: ${want[*]}" >&2
  exit 0
fi

missing=()
for pkg in "${want[@]}"; do
  if [ "$pkg" = python3-venv ] || [ "$pkg" = python3-dev ]; then
    # A Python that already has venv and its headers (pyenv, a distro with them
    # built in) does not need the Debian packages.
    if [ "$pkg" = python3-venv ] && "${PYTHON:-python3}" -c 'import ensurepip, venv' 2>/dev/null; then
      continue
    fi
    if [ "$pkg" = python3-dev ] && [ -f "$("${PYTHON:-python3}" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')/Python.h" ]; then
      continue
    fi
  fi
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done

[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  echo "system-deps: missing packages: ${missing[*]}" >&2
  echo "system-deps: run: sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
echo "system-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
