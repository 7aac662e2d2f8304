"""The values the domain transform takes and returns.

Kept apart from ``transform`` so that configuration and the server can name
them without importing lxml: a sidecar attached to a VM that asks for nothing
never loads the XML stack at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from hook_sidecar.pci import PciAddress

DEFAULT_MAX_BYTES = 256 * 1024
"""The largest domain XML accepted by default: 256 KiB, far above any KubeVirt domain.

Parsed, the worst-shaped XML (nothing but tiny elements) takes about 40 times
its size; at this cap a serving sidecar peaks near 46 MiB, inside the 64 MiB
limit the manifests set (benchmarks/bench_limits.py measures it).
"""
ALIAS_PREFIX = "ua-qat-"

Managed = Literal["no", "yes"]
NumaPlacement = Literal["auto", "off", "strict"]


@dataclass(frozen=True)
class HostDevice:
    """One host PCI device to pass through, with an optional guest placement."""

    address: PciAddress
    guest_address: PciAddress | None = None
    numa_node: int | None = None
    """The VF's host NUMA node when known (sysfs or kubelet); drives guest NUMA placement."""


@dataclass(frozen=True)
class TransformOptions:
    """Knobs of the transform; the defaults are right for KubeVirt."""

    managed: Managed = "no"
    max_bytes: int = DEFAULT_MAX_BYTES
    alias_prefix: str = ALIAS_PREFIX
    numa_placement: NumaPlacement = "auto"


@dataclass(frozen=True)
class AddedDevice:
    """A device the transform wrote, with the alias it was given."""

    address: PciAddress
    alias: str
    guest_address: PciAddress | None = None
    guest_cell: int | None = None
    """The guest NUMA cell the device was placed on, when NUMA placement placed it."""


@dataclass(frozen=True)
class TransformResult:
    """The new domain XML and what happened to each requested device."""

    xml: bytes
    added: tuple[AddedDevice, ...] = ()
    already_present: tuple[PciAddress, ...] = ()
    warnings: tuple[str, ...] = ()
