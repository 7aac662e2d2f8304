#!/usr/bin/env bash
# Install and start libvirt's QEMU driver so the tests can ask real libvirt
# (qemu:///system) to define the hook's output and print the QEMU command line.
#
# Why a system daemon: the test:///default driver accepts any PCI topology, and
# qemu:///embed hung on domainXMLToNative here, so only libvirtd's QEMU driver
# proves that an expander bus, its root ports and a vfio hostdev become the
# pxb-pcie / vfio-pci devices the guest needs. No /dev/kvm, VFIO device or
# systemd is needed for define and domxml-to-native (domains use type="qemu").
#
# Idempotent: installs only what is missing, starts libvirtd only when nothing
# answers on qemu:///system. Installs only as root on a Debian-family system;
# elsewhere it says what to do and exits 0, and the tests that need the daemon
# skip (or fail when CI=true).
set -euo pipefail

packages=(libvirt-daemon libvirt-daemon-driver-qemu qemu-system-x86 libvirt-clients)

answers() {
  command -v virsh >/dev/null 2>&1 &&
    timeout 20 virsh -q -c qemu:///system version >/dev/null 2>&1
}

if [ "$(id -u)" -ne 0 ] || ! command -v dpkg-query >/dev/null 2>&1; then
  answers || echo "libvirtd: qemu:///system does not answer; as root on Debian/Ubuntu run" \
    "scripts/libvirtd.sh (or install ${packages[*]} and start libvirtd)" >&2
  exit 0
fi

missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" ||
    missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "libvirtd: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The QEMU driver refuses to start without its user and groups; a container
# where the package scripts could not create them (no systemd) lacks them.
for group in kvm libvirt-qemu; do
  getent group "$group" >/dev/null || groupadd --system "$group"
done
if ! getent passwd libvirt-qemu >/dev/null; then
  useradd --system --no-create-home --home-dir /var/lib/libvirt \
    --shell /usr/sbin/nologin --gid libvirt-qemu --groups kvm libvirt-qemu
fi
mkdir -p /var/log/libvirt /run/libvirt

# Run QEMU as root. Without this, libvirt probes QEMU with KVM (as root) but
# then finds /dev/kvm unusable for libvirt-qemu, declares its capability cache
# stale and re-probes QEMU on every call: about a minute per define here.
# qemu.conf belongs to libvirt-daemon-system, which this script does not
# install, so it only ever writes a file that is missing.
conf=/etc/libvirt/qemu.conf
if [ ! -e "$conf" ]; then
  mkdir -p /etc/libvirt
  printf '# Written by kubevirt-qat-hook scripts/libvirtd.sh for its tests.\nuser = "root"\ngroup = "root"\n' >"$conf"
  if pgrep -x libvirtd >/dev/null; then
    # Started before the file existed: restart so the setting takes effect.
    for pid in $(pgrep -x libvirtd); do kill "$pid"; done
    for _ in $(seq 1 50); do pgrep -x libvirtd >/dev/null || break; sleep 0.1; done
  fi
fi

if ! pgrep -x libvirtd >/dev/null; then
  libvirtd -d
fi

# libvirtd daemonises before its socket exists: wait for it to answer.
for _ in $(seq 1 100); do
  if answers; then
    exit 0
  fi
  sleep 0.2
done
echo "libvirtd: started, but qemu:///system does not answer; see /var/log/libvirt" >&2
exit 1
