"""Guest NUMA placement of added VFs (issue 13): the interface the transform calls.

Work in progress: the implementation replaces ``place`` below.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from lxml import etree

from hook_sidecar.errors import PreconditionFailed
from hook_sidecar.hostdevs import HostDevice, NumaPlacement
from hook_sidecar.pci import PciAddress


class PlacementFailed(PreconditionFailed):
    """``strict`` placement could not place a VF on its guest NUMA cell."""


@dataclass(frozen=True)
class Placement:
    """What placement decided; the transform writes it.

    ``controllers`` are new ``<controller>`` elements (expander buses, root
    ports) to append to ``<devices>`` before the hostdevs; ``guest_addresses``
    maps a VF's host address to the guest address of its root port (slot 0),
    and ``cells`` to the guest NUMA cell it was placed on.
    """

    guest_addresses: Mapping[PciAddress, PciAddress] = field(default_factory=dict)
    cells: Mapping[PciAddress, int] = field(default_factory=dict)
    controllers: tuple[etree._Element, ...] = ()
    warnings: tuple[str, ...] = ()


def place(root: etree._Element, devices: Sequence[HostDevice], mode: NumaPlacement) -> Placement:
    """Decide where each of ``devices`` goes in the guest; reads ``root``, never changes it."""
    raise NotImplementedError("NUMA placement is being written (issue 13)")
