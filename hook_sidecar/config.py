"""The hook's settings as plain values, fixed at start-up: what discovery and the transform get.

``settings`` builds them from flags and variables before a server answers its
socket, so this module holds only the values, their defaults and the environment
snapshot; the code that uses them (discovery and its sources, the VMI reader, the
transform) loads after, with the first call or the server's warm-up.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Literal, NamedTuple

from hook_sidecar.hostdevs import TransformOptions
from hook_sidecar.pci import PciAddress

DEFAULT_RESOURCE_PATTERNS = ("qat.intel.com/*",)
MAX_VMI_BYTES = 2 * 1024 * 1024
"""The largest VMI JSON read. etcd stores an object of at most about 1.5 MiB, so no VMI
virt-launcher sends is larger; the server's gRPC message cap is derived from this."""
DRA_ROOT = "/var/run/kubernetes.io/dra-device-attributes"
SYSFS_ROOT = "/sys"
PODRESOURCES_SOCKET = "/var/lib/kubelet/pod-resources/kubelet.sock"
PODRESOURCES_DEADLINE_SECONDS = 2.0
ENV_PREFIXES = ("QAT", "PCI_RESOURCE_", "PCIDEVICE_", "POD_")
"""The variables discovery reads (``env_snapshot``)."""

OnMissing = Literal["fail", "skip"]
VerifySysfs = Literal["off", "warn", "strict"]


class DiscoveryConfig(NamedTuple):
    """Every knob of discovery, as plain values (the CLI builds it from flags and variables)."""

    devices: tuple[PciAddress, ...] = ()
    devices_from: str = "--device"
    """Where ``devices`` were given: ``--device`` or ``QAT_HOOK_DEVICES`` (logs name it)."""
    resource_patterns: tuple[str, ...] = DEFAULT_RESOURCE_PATTERNS
    dra_root: str | os.PathLike[str] = DRA_ROOT
    sysfs_root: str | os.PathLike[str] = SYSFS_ROOT
    verify_sysfs: VerifySysfs = "warn"
    allow_vmi_devices: bool = False
    on_missing: OnMissing = "fail"
    podresources_socket: str | os.PathLike[str] | None = None
    """kubelet's PodResources socket; None leaves kubelet out."""
    podresources_deadline: float = PODRESOURCES_DEADLINE_SECONDS


class HookSettings(NamedTuple):
    """What a running hook needs besides the request: fixed at start-up."""

    discovery: DiscoveryConfig
    transform: TransformOptions
    guest_addresses: Mapping[PciAddress, PciAddress]


def env_snapshot(environ: Mapping[str, str]) -> dict[str, str]:
    """The variables discovery reads, copied once so a call sees one consistent view."""
    return {name: value for name, value in environ.items() if name.startswith(ENV_PREFIXES)}
