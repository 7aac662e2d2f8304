"""The PCI tree a domain describes: controllers, the buses and slots taken, chassis numbers.

Read as libvirt reads it (``./devices/*``, attributes through ``domain_xml``,
numbers through ``libvirt_values``), for guest NUMA placement to add to.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from lxml import etree

from hook_sidecar.domain_xml import attribute, child
from hook_sidecar.libvirt_values import number
from hook_sidecar.pci import PciAddress

MAX_BUS_NR = 255
"""The highest PCI bus number; the first expander KubeVirt makes for one VF gets 254."""
MAX_SLOT = 0x1F
MAX_CHASSIS = 255
EXPANDERS = ("pcie-expander-bus", "pci-expander-bus")


class Controller(NamedTuple):
    """A PCI controller of the domain: its index, model, bus, bus number and guest node."""

    index: int  # type: ignore[assignment]  # libvirt's controller index (shadows tuple.index)
    model: str | None
    parent: int | None  # the bus (controller index) its own PCI address is on
    bus_nr: int | None
    node: int | None


class Topology:
    """The domain's PCI controllers, and what is already plugged where."""

    def __init__(self) -> None:
        self.controllers: dict[int, Controller] = {}
        self.taken_indexes: set[int] = {0}
        self.slots: dict[int, set[int]] = {}  # bus index -> slots taken on it
        self.chassis: set[int] = set()  # chassis numbers spelled out
        self.below: dict[int, int] = {}  # expander -> controllers under it

    @classmethod
    def read(cls, root: etree._Element, reserved: Sequence[PciAddress]) -> Topology:
        """What ``./devices/*`` hold, with the operator's guest addresses ``reserved``."""
        topology = cls()
        for device in (d for devices in root.iterchildren("devices") for d in devices):
            address = child(device, "address")
            bus = None
            if address is not None and attribute(address, "type") == "pci":
                bus = number(attribute(address, "bus"), 0)
                slot = number(attribute(address, "slot"), 0)
                if bus is not None and number(attribute(address, "domain") or "0", 0) == 0:
                    topology.taken_indexes.add(bus)  # libvirt adds a controller for a named bus
                    if slot is not None:
                        topology.slots.setdefault(bus, set()).add(slot)
            if device.tag == "controller" and attribute(device, "type") == "pci":
                topology._add_controller(device, bus)
        for guest in reserved:
            topology.taken_indexes.add(guest.bus)
            topology.slots.setdefault(guest.bus, set()).add(guest.slot)
        topology.below = topology._count_below()
        return topology

    def _add_controller(self, element: etree._Element, parent: int | None) -> None:
        index = number(attribute(element, "index"))
        if index is None:
            return
        target = child(element, "target")
        node = child(target, "node") if target is not None else None
        bus_nr = number(attribute(target, "busNr"), 0) if target is not None else None
        chassis = number(attribute(target, "chassis"), 0) if target is not None else None
        self.controllers[index] = Controller(
            index,
            attribute(element, "model"),
            parent,
            bus_nr,
            number(node.text) if node is not None else None,
        )
        self.taken_indexes.add(index)
        if chassis is not None:  # without one, libvirt gives a port its index as chassis
            self.chassis.add(chassis)

    def _count_below(self) -> dict[int, int]:
        """Per expander bus, the controllers in its hierarchy (each takes one bus number).

        One walk up per controller, remembered, so a hostile chain of
        thousands of controllers costs linear time, and a cycle ends the walk.
        """
        memo: dict[int, int | None] = {}

        def expander_above(index: int) -> int | None:
            path: list[int] = []
            current: int | None = index
            found: int | None = None
            while current is not None and current not in path:
                if current in memo:
                    found = memo[current]
                    break
                path.append(current)
                controller = self.controllers.get(current)
                if controller is None or controller.parent is None:
                    break  # the root complex, or a bus no controller of the domain makes
                above = self.controllers.get(controller.parent)
                if above is not None and above.model in EXPANDERS:
                    found = controller.parent
                    break
                current = controller.parent
            for link in path:  # all of them hang below the same expander (or none)
                memo[link] = found
            return found

        below: dict[int, int] = {}
        for index, controller in self.controllers.items():
            if controller.model in EXPANDERS:
                below.setdefault(index, 0)
                continue
            expander = expander_above(index)
            if expander is not None:
                below[expander] = below.get(expander, 0) + 1
        return below

    def expanders(self) -> list[Controller]:
        return [c for c in self.controllers.values() if c.model in EXPANDERS]

    def lowest_bus_nr(self) -> int:
        """Where the next expander's bus-number range must end (exclusive)."""
        numbers = [c.bus_nr for c in self.expanders() if c.bus_nr is not None]
        return min(numbers, default=MAX_BUS_NR + 1)

    def free_buses(self, expander: Controller) -> int:
        """Bus numbers left in ``expander``'s range for new root ports."""
        assert expander.bus_nr is not None
        above = [
            c.bus_nr
            for c in self.expanders()
            if c.bus_nr is not None and c.bus_nr > expander.bus_nr
        ]
        top = min(above, default=MAX_BUS_NR + 1)
        return top - expander.bus_nr - 1 - self.below[expander.index]

    def free_slots(self, bus: int) -> list[int]:
        used = self.slots.get(bus, set())
        return [slot for slot in range(MAX_SLOT + 1) if slot not in used]

    def next_index(self) -> int:
        index = max(self.taken_indexes) + 1
        self.taken_indexes.add(index)
        return index

    def take_chassis(self, index: int) -> int:
        """A chassis number for a new root port at ``index`` that no controller has or gets.

        Its index, as libvirt would choose, when no controller spells that
        number out; else the highest number that is neither a chassis spelled
        out nor an index: a port without ``chassis``, and each port libvirt
        adds itself (in gaps between indexes, or after the last), gets its
        index as chassis. Indexes stay below the bus numbers (at most 254),
        so one is always free.
        """
        if index in self.chassis:
            avoid = self.chassis | self.taken_indexes
            index = next(c for c in range(MAX_CHASSIS, 0, -1) if c not in avoid)
        self.chassis.add(index)
        return index
