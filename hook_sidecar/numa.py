"""Guest NUMA placement of added VFs: each VF behind its own root port on its guest cell's bus.

KubeVirt's ``PCINUMAAwareTopology`` gate does this in the converter, only for
the devices KubeVirt adds itself, before any hook runs; a VF this hook adds
would otherwise land on the root complex, where the guest sees no NUMA node
and the QAT driver allocates its rings anywhere. This module makes the same
decisions KubeVirt makes, from the parsed domain alone:

* host node -> guest cell: the ``numatune/memnode`` whose nodeset holds the
  node, else the vCPU pinning (vCPUs pinned only to that node's host CPUs ->
  the cell holding most of them);
* one ``pcie-expander-bus`` per guest cell (``<target busNr><node>cell``),
  reusing the one KubeVirt already made for that cell while its bus-number
  range has room, else a new one whose ``busNr`` is counted down below every
  existing expander (KubeVirt starts at 254), so no two hierarchies overlap;
* one ``pcie-root-port`` per VF on that bus; the VF's guest address is the
  root port's bus (its controller index), slot 0.

Pure apart from one lazily read fact: the host's CPU -> NUMA node map, which
only the vCPU-pinning fallback needs and which a domain does not state. It is
read from this host's sysfs (the sidecar runs on the VM's node, and
``/sys/devices/system/node`` is not namespaced) unless the caller passes it.
"""

from __future__ import annotations

import copy
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lxml import etree

from hook_sidecar.errors import PreconditionFailed
from hook_sidecar.hostdevs import HostDevice, NumaPlacement
from hook_sidecar.pci import PciAddress

MAX_BUS_NR = 255
"""The highest PCI bus number; the first expander KubeVirt makes for one VF gets 254."""
MAX_SLOT = 0x1F
MAX_CHASSIS = 255
MAX_CPUS = 16384
"""libvirt's own bound on a cpuset (VIR_DOMAIN_CPUMASK_LEN); larger ids are not CPUs."""
MAX_NODES = 1024
MAX_EXPANDED = 1 << 18
"""CPU and node ids one domain may expand to in total: 16 cells' worth of a 16384-CPU host.

Each cpuset alone is bounded by MAX_CPUS, but a domain could repeat
``cpuset="0-16383"`` on thousands of vcpupins; past this budget the rest of
the guest NUMA facts are ignored (and the VFs they would place are reported).
"""
_EXPANDERS = ("pcie-expander-bus", "pci-expander-bus")
_NUMBER = re.compile(r"\s*(0[xX][0-9a-fA-F]{1,8}|[0-9]{1,9})\s*")
# Compiled once, and one query for every fact placement reads: lxml's find/iterfind
# re-walk a path in Python on every call, and each XPath call has a set-up cost.
_FACTS = etree.XPath(
    "cpu/numa/cell | numatune/memnode | cputune/vcpupin | devices/controller[@type='pci']"
    " | devices/*/address[@type='pci'] | os/type"
)
"""Each part selects its own tag, so the result is told apart by tag alone."""
_FACT_TAGS = ("cell", "memnode", "vcpupin", "controller", "address", "type")
_CPUSET_ITEM = re.compile(r"\s*(\^)?\s*([0-9]{1,5})\s*(?:-\s*([0-9]{1,5})\s*)?")


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


# --- reading numbers and cpusets as libvirt writes them ------------------------


def _child(element: etree._Element, tag: str) -> etree._Element | None:
    """``element.find(tag)`` for a plain tag, without lxml's Python path machinery."""
    return next(element.iterchildren(tag), None)


def _number(text: str | None) -> int | None:
    """A libvirt integer attribute (decimal, or 0x hex for PCI fields); None if absent or bad."""
    if text is None:
        return None
    if len(text) <= 9 and text.isascii() and text.isdigit():
        return int(text, 10)  # the common case, as the pattern below would read it
    match = _NUMBER.fullmatch(text)
    if match is None:
        return None
    value = match.group(1)
    return int(value[2:], 16) if value[:2].lower() == "0x" else int(value, 10)


@dataclass
class _Budget:
    """How many more ids cpusets of one document may expand to."""

    left: int = MAX_EXPANDED


def cpuset(
    text: str | None, limit: int = MAX_CPUS, budget: _Budget | None = None
) -> frozenset[int] | None:
    """Parse libvirt's cpuset syntax (``0-3,^2,8``); None when it is not one.

    Bounded: ids at or above ``limit`` make the set invalid, so a hostile
    ``0-99999999`` never expands, and ``budget`` (when given) caps what a
    whole document expands to: None once it runs out.
    """
    if text is None or not text.strip():
        return None
    wanted: set[int] = set()
    excluded: set[int] = set()
    for item in text.split(",", limit):
        if len(item) <= 5 and item.isascii() and item.isdigit():
            # A bare id, the common case (vcpupins, cells): what the pattern reads for it.
            first = last = int(item, 10)
            negated = False
        else:
            match = _CPUSET_ITEM.fullmatch(item)
            if match is None:
                return None
            first = int(match.group(2))
            last = int(match.group(3)) if match.group(3) is not None else first
            negated = match.group(1) is not None
        if last < first or last >= limit:
            return None
        if budget is not None:
            budget.left -= last - first + 1
            if budget.left < 0:
                return None
        (excluded if negated else wanted).update(range(first, last + 1))
    return frozenset(wanted - excluded)


def _read_facts(root: etree._Element) -> dict[str, list[etree._Element]]:
    """The elements placement reads, by tag (``_FACT_TAGS``), each list in document order."""
    facts: dict[str, list[etree._Element]] = {tag: [] for tag in _FACT_TAGS}
    nodes: list[etree._Element] = _FACTS(root)  # type: ignore[assignment]
    for node in nodes:
        facts[node.tag].append(node)
    return facts


# --- the host's CPU -> NUMA node map (only the pinning fallback needs it) -----


def read_host_cpu_nodes(sysfs_root: Path = Path("/sys")) -> dict[int, int]:
    """This host's CPU -> NUMA node map from ``devices/system/node/node*/cpulist``.

    Empty when sysfs shows no nodes (then the pinning fallback cannot map a
    node, and placement says so). Bounded: at most ``MAX_NODES`` nodes, 64 KiB
    per file.
    """
    base = sysfs_root / "devices" / "system" / "node"
    cpus: dict[int, int] = {}
    budget = _Budget()
    try:
        entries = sorted(base.iterdir())[: MAX_NODES * 4]
    except OSError:
        return cpus
    for entry in entries:
        node = _number(entry.name[4:]) if entry.name.startswith("node") else None
        if node is None or node >= MAX_NODES:
            continue
        try:
            with (entry / "cpulist").open("rb") as handle:
                text = handle.read(65536).decode("ascii", "replace")
        except OSError:
            continue
        for cpu in cpuset(text.strip(), budget=budget) or ():
            cpus.setdefault(cpu, node)
    return cpus


# --- what the domain says ----------------------------------------------------------


@dataclass(frozen=True)
class _Controller:
    index: int
    model: str
    parent: int | None  # the bus (controller index) its own PCI address is on
    bus_nr: int | None
    node: int | None


@dataclass
class _Topology:
    """The domain's PCI controllers and what is already plugged where."""

    controllers: dict[int, _Controller]
    taken_indexes: set[int]
    slots: dict[int, set[int]]  # bus index -> slots taken on it
    chassis: set[int]
    below: dict[int, int] = field(default_factory=dict)  # expander -> controllers under it

    @classmethod
    def read(
        cls,
        root: etree._Element,
        reserved: Iterable[PciAddress],
        facts: dict[str, list[etree._Element]] | None = None,
    ) -> _Topology:
        facts = facts if facts is not None else _read_facts(root)
        controllers: dict[int, _Controller] = {}
        taken: set[int] = {0}
        slots: dict[int, set[int]] = {}
        chassis: set[int] = set()
        for element in facts["controller"]:
            index = _number(element.get("index"))
            if index is None:
                continue
            address = _child(element, "address")
            parent = None
            if address is not None and address.get("type") == "pci":
                parent = _number(address.get("bus"))
            target = _child(element, "target")
            node = _child(target, "node") if target is not None else None
            model = element.get("model", "")
            controllers[index] = _Controller(
                index,
                model,
                parent,
                _number(target.get("busNr")) if target is not None else None,
                _number(node.text) if node is not None else None,
            )
            taken.add(index)
            # libvirt gives a port without one its index as chassis; every index here is
            # below the new ones, so only chassis numbers written out can collide.
            own = _number(target.get("chassis")) if target is not None else None
            if own is not None:
                chassis.add(own)
        for address in facts["address"]:
            if _number(address.get("domain")) not in (0, None):
                continue
            bus, slot = _number(address.get("bus")), _number(address.get("slot"))
            if bus is not None:
                taken.add(bus)  # libvirt adds a controller for a bus a device names
                if slot is not None:
                    slots.setdefault(bus, set()).add(slot)
        for guest in reserved:
            taken.add(guest.bus)
            slots.setdefault(guest.bus, set()).add(guest.slot)
        topology = cls(controllers, taken, slots, chassis)
        topology.below = topology._count_below()
        return topology

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
                parent = controller.parent if controller is not None else None
                above = self.controllers.get(parent) if parent is not None else None
                if above is not None and above.model in _EXPANDERS:
                    found = parent
                    break
                current = parent
            for link in path:  # all of them hang below the same expander (or none)
                memo[link] = found
            return found

        below: dict[int, int] = {}
        for index, controller in self.controllers.items():
            if controller.model in _EXPANDERS:
                below.setdefault(index, 0)
                continue
            expander = expander_above(index)
            if expander is not None:
                below[expander] = below.get(expander, 0) + 1
        return below

    def expanders(self) -> list[_Controller]:
        return [c for c in self.controllers.values() if c.model in _EXPANDERS]

    def lowest_bus_nr(self) -> int:
        """Where the next expander's bus-number range must end (exclusive)."""
        numbers = [c.bus_nr for c in self.expanders() if c.bus_nr is not None]
        return min(numbers, default=MAX_BUS_NR + 1)

    def free_buses(self, expander: _Controller) -> int:
        """Bus numbers left in ``expander``'s range for new root ports."""
        assert expander.bus_nr is not None
        above = [
            c.bus_nr
            for c in self.expanders()
            if c.bus_nr is not None and c.bus_nr > expander.bus_nr
        ]
        top = min(above, default=MAX_BUS_NR + 1)
        return top - expander.bus_nr - 1 - self.below.get(expander.index, 0)

    def free_slots(self, bus: int) -> list[int]:
        used = self.slots.get(bus, set())
        return [slot for slot in range(MAX_SLOT + 1) if slot not in used]

    def next_index(self) -> int:
        index = max(self.taken_indexes) + 1
        self.taken_indexes.add(index)
        return index

    def next_chassis(self, index: int) -> int:
        candidates = [index, *range(1, MAX_CHASSIS + 1)]
        chosen = next((c for c in candidates if c <= MAX_CHASSIS and c not in self.chassis), index)
        self.chassis.add(chosen)
        return chosen


@dataclass(frozen=True)
class _Guest:
    """The guest NUMA facts: cells and their vCPUs, memnode and vCPU pinning maps."""

    cells: dict[int, frozenset[int]]
    memnodes: dict[int, frozenset[int]]  # cell -> host nodes
    pins: dict[int, frozenset[int]]  # vCPU -> host CPUs

    @classmethod
    def read(
        cls, root: etree._Element, facts: dict[str, list[etree._Element]] | None = None
    ) -> _Guest:
        facts = facts if facts is not None else _read_facts(root)
        budget = _Budget()
        cells: dict[int, frozenset[int]] = {}
        for position, cell in enumerate(facts["cell"]):
            ident = _number(cell.get("id")) if cell.get("id") is not None else position
            if ident is not None:
                cells.setdefault(ident, cpuset(cell.get("cpus"), budget=budget) or frozenset())
        memnodes: dict[int, frozenset[int]] = {}
        for memnode in facts["memnode"]:
            ident = _number(memnode.get("cellid"))
            nodes = cpuset(memnode.get("nodeset"), MAX_NODES, budget)
            if ident in cells and nodes:
                memnodes[ident] = nodes
        pins: dict[int, frozenset[int]] = {}
        for pin in facts["vcpupin"]:
            vcpu = _number(pin.get("vcpu"))
            cpus = cpuset(pin.get("cpuset"), budget=budget)
            if vcpu is not None and cpus:
                pins[vcpu] = cpus
        return cls(cells, memnodes, pins)

    def cell_by_memnode(self, host_node: int) -> int | None:
        holding = [cell for cell, nodes in self.memnodes.items() if host_node in nodes]
        return min(holding, default=None)

    def cell_by_pinning(self, host_node: int, host_cpus: Mapping[int, int]) -> int | None:
        """The cell holding most vCPUs pinned only to ``host_node``'s CPUs (lowest on a tie)."""
        vcpus = {
            vcpu
            for vcpu, cpus in self.pins.items()
            if all(host_cpus.get(cpu) == host_node for cpu in cpus)
        }
        counts = {cell: len(vcpus & members) for cell, members in self.cells.items()}
        best = max(counts.values(), default=0)
        return min((c for c, n in counts.items() if n == best), default=None) if best else None


# --- the decisions -------------------------------------------------------------------


@dataclass
class _Unplaced:
    """VFs that keep today's placement, with the reason for each."""

    reasons: list[tuple[PciAddress, str]] = field(default_factory=list)

    def add(self, address: PciAddress, reason: str) -> None:
        self.reasons.append((address, reason))

    def outcome(self, mode: NumaPlacement) -> tuple[str, ...]:
        if not self.reasons:
            return ()
        if mode == "strict":
            listed = "; ".join(f"VF {address}: {reason}" for address, reason in self.reasons)
            raise PlacementFailed(
                f"strict NUMA placement cannot place {listed}; fix that, or use "
                "--numa-placement auto to start the VM without NUMA affinity for the VF"
            )
        return tuple(
            f"NUMA placement: VF {address} left without NUMA affinity: {reason}"
            for address, reason in self.reasons
        )


def _machine_supports_expanders(
    root: etree._Element, facts: dict[str, list[etree._Element]] | None = None
) -> str | None:
    """Why the machine type cannot hold a PCIe expander bus, or None when it can."""
    types = (facts if facts is not None else _read_facts(root))["type"]
    os_type = types[0] if types else None
    machine = os_type.get("machine", "") if os_type is not None else ""
    if "q35" in machine or machine.startswith("virt"):
        return None
    return f"machine type {machine or 'unset (pc)'!r} has no PCIe expander bus; use q35"


def _cells_for(
    devices: Sequence[HostDevice],
    guest: _Guest,
    host_cpus: Mapping[int, int] | None,
    unplaced: _Unplaced,
) -> dict[int, list[PciAddress]]:
    """Group the VFs by the guest cell of their host node, in the order given."""
    by_cell: dict[int, list[PciAddress]] = {}
    for device in devices:
        node = device.numa_node
        if node is None or node < 0:
            unplaced.add(
                device.address,
                "its host NUMA node is unknown (sysfs numa_node is -1 or unreadable, "
                "and kubelet reported no topology for it)",
            )
            continue
        cell = guest.cell_by_memnode(node)
        if cell is None and guest.pins:
            if host_cpus is None:
                host_cpus = read_host_cpu_nodes()
            cell = guest.cell_by_pinning(node, host_cpus)
        if cell is None:
            unplaced.add(
                device.address,
                f"its host NUMA node {node} backs no guest NUMA cell (no numatune memnode "
                "holds it and no vCPU is pinned only to its CPUs)",
            )
            continue
        by_cell.setdefault(cell, []).append(device.address)
    return by_cell


def _build_expander(index: int, bus_nr: int, cell: int) -> etree._Element:
    element = etree.Element(
        "controller", {"type": "pci", "index": str(index), "model": "pcie-expander-bus"}
    )
    etree.SubElement(element, "model", {"name": "pxb-pcie"})
    target = etree.SubElement(element, "target", {"busNr": str(bus_nr)})
    etree.SubElement(target, "node").text = str(cell)
    return element


def _build_root_port(index: int, chassis: int, bus: int, slot: int) -> etree._Element:
    element = etree.Element(
        "controller", {"type": "pci", "index": str(index), "model": "pcie-root-port"}
    )
    etree.SubElement(element, "model", {"name": "pcie-root-port"})
    # libvirt's own default port for a root port is (slot << 3) | function.
    etree.SubElement(element, "target", {"chassis": str(chassis), "port": f"0x{slot << 3:x}"})
    attrs = {"type": "pci", **PciAddress(0, bus, slot, 0).libvirt_attributes()}
    etree.SubElement(element, "address", attrs)
    return element


_templates = threading.local()


def _template(name: str) -> etree._Element:
    """This thread's prepared controller of one kind; only copies of it leave this module."""
    template: etree._Element | None = getattr(_templates, name, None)
    if template is None:
        template = _build_expander(0, 0, 0) if name == "expander" else _build_root_port(0, 0, 0, 0)
        setattr(_templates, name, template)
    return template


def _expander_element(index: int, bus_nr: int, cell: int) -> etree._Element:
    """``_build_expander``'s element: a prepared one copied, its numbers overwritten in place.

    A copy and three writes cost well under half of building four elements and
    validating their attributes; each attribute stays where the template has
    it (a test compares the two).
    """
    element = copy.copy(_template("expander"))
    element.set("index", str(index))
    target = element[1]
    target.set("busNr", str(bus_nr))
    target[0].text = str(cell)
    return element


def _root_port_element(index: int, chassis: int, bus: int, slot: int) -> etree._Element:
    """``_build_root_port``'s element, from a prepared copy like ``_expander_element``."""
    element = copy.copy(_template("root-port"))
    element.set("index", str(index))
    _, target, address = element
    target.set("chassis", str(chassis))
    target.set("port", f"0x{slot << 3:x}")
    for key, value in PciAddress(0, bus, slot, 0).libvirt_attributes().items():
        address.set(key, value)
    return element


def _reusable(topology: _Topology, cell: int, count: int) -> _Controller | None:
    """KubeVirt's expander bus for ``cell`` when its bus range and slots have room.

    The new root ports' indexes must also stay below every expander's bus
    number, as KubeVirt requires of its own (the root complex's buses come first).
    """
    if max(topology.taken_indexes) + count >= topology.lowest_bus_nr():
        return None
    for expander in sorted(topology.expanders(), key=lambda c: c.index):
        if (
            expander.model == "pcie-expander-bus"
            and expander.node == cell
            and expander.bus_nr is not None
            and topology.free_buses(expander) >= count
            and len(topology.free_slots(expander.index)) >= count
        ):
            return expander
    return None


def place(
    root: etree._Element,
    devices: Sequence[HostDevice],
    mode: NumaPlacement,
    host_cpus: Mapping[int, int] | None = None,
) -> Placement:
    """Decide where each of ``devices`` goes in the guest; reads ``root``, never changes it.

    Devices that carry an operator-given guest address are not placed, but
    their bus and slot are kept free. ``host_cpus`` (host CPU -> NUMA node) is
    only needed for the vCPU-pinning fallback; when None it is read from this
    host's sysfs at that moment.
    """
    if mode == "off":
        return Placement()
    facts = _read_facts(root)
    guest = _Guest.read(root, facts)
    if not guest.cells:
        return Placement()
    operator = [d.guest_address for d in devices if d.guest_address is not None]
    wanted = [d for d in devices if d.guest_address is None]
    unplaced = _Unplaced()
    if not wanted:
        return Placement()
    unsupported = _machine_supports_expanders(root, facts)
    if unsupported is not None:
        for device in wanted:
            unplaced.add(device.address, unsupported)
        return Placement(warnings=unplaced.outcome(mode))

    by_cell = _cells_for(wanted, guest, host_cpus, unplaced)
    topology = _Topology.read(root, operator, facts)
    guest_addresses: dict[PciAddress, PciAddress] = {}
    cells: dict[PciAddress, int] = {}
    controllers: list[etree._Element] = []
    for cell in sorted(by_cell):
        vfs = by_cell[cell]
        expander = _reusable(topology, cell, len(vfs))
        groups: list[tuple[int, list[PciAddress]]] = []
        if expander is not None:
            groups.append((expander.index, vfs))
        else:
            for start in range(0, len(vfs), MAX_SLOT + 1):
                chunk = vfs[start : start + MAX_SLOT + 1]
                bus_nr = topology.lowest_bus_nr() - 1 - len(chunk)
                if bus_nr <= max(topology.taken_indexes) + 1 + len(chunk):
                    for address in chunk:
                        unplaced.add(
                            address,
                            f"no PCI bus numbers are left below {topology.lowest_bus_nr()} "
                            "for a new expander bus",
                        )
                    continue
                index = topology.next_index()
                controllers.append(_expander_element(index, bus_nr, cell))
                topology.controllers[index] = _Controller(
                    index, "pcie-expander-bus", None, bus_nr, cell
                )
                groups.append((index, chunk))
        for bus, chunk in groups:
            # _reusable and MAX_SLOT chunks guarantee a free slot for each VF.
            for address, slot in zip(chunk, topology.free_slots(bus), strict=False):
                index = topology.next_index()
                controllers.append(
                    _root_port_element(index, topology.next_chassis(index), bus, slot)
                )
                topology.controllers[index] = _Controller(index, "pcie-root-port", bus, None, None)
                topology.below[bus] = topology.below.get(bus, 0) + 1
                topology.slots.setdefault(bus, set()).add(slot)
                guest_addresses[address] = PciAddress(0, index, 0, 0)
                cells[address] = cell
    return Placement(guest_addresses, cells, tuple(controllers), unplaced.outcome(mode))
