"""The values the domain transform takes and returns.

Kept apart from ``transform`` so that configuration and the server can name
them without importing lxml: a sidecar attached to a VM that asks for nothing
never loads the XML stack at all.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Literal, NamedTuple

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


class HostDevice(NamedTuple):
    """One host PCI device to pass through, with an optional guest placement."""

    address: PciAddress
    guest_address: PciAddress | None = None
    numa_node: int | None = None
    """The VF's host NUMA node when known (sysfs or kubelet); drives guest NUMA placement."""


class TransformOptions(NamedTuple):
    """Knobs of the transform; the defaults are right for KubeVirt."""

    managed: Managed = "no"
    max_bytes: int = DEFAULT_MAX_BYTES
    alias_prefix: str = ALIAS_PREFIX
    numa_placement: NumaPlacement = "auto"


class AddedDevice(NamedTuple):
    """A device the transform wrote, with the alias it was given."""

    address: PciAddress
    alias: str
    guest_address: PciAddress | None = None
    guest_cell: int | None = None
    """The guest NUMA cell the device was placed on, when NUMA placement placed it."""


class TransformResult(NamedTuple):
    """The new domain XML and what happened to each requested device."""

    xml: bytes
    added: tuple[AddedDevice, ...] = ()
    already_present: tuple[PciAddress, ...] = ()
    warnings: tuple[str, ...] = ()


# --- guest NUMA placement's decisions (numa.place), which the transform writes -----------


class ExpanderBus(NamedTuple):
    """A new ``pcie-expander-bus`` controller: bus numbers from ``bus_nr`` up, on guest ``cell``."""

    index: int  # type: ignore[assignment]  # libvirt's controller index (shadows tuple.index)
    bus_nr: int
    cell: int


class RootPort(NamedTuple):
    """A new ``pcie-root-port`` controller, plugged into ``bus`` (an expander's index)."""

    index: int  # type: ignore[assignment]  # as above
    chassis: int
    bus: int
    slot: int


class Placement(NamedTuple):
    """What placement decided; the transform writes it.

    ``controllers`` are the expander buses and root ports to append to
    ``<devices>`` before the hostdevs, in that order; ``guest_addresses`` maps
    a VF's host address to the guest address of its root port (slot 0), and
    ``cells`` to the guest NUMA cell it was placed on.
    """

    guest_addresses: Mapping[PciAddress, PciAddress] = MappingProxyType({})
    cells: Mapping[PciAddress, int] = MappingProxyType({})
    controllers: tuple[ExpanderBus | RootPort, ...] = ()
    warnings: tuple[str, ...] = ()
