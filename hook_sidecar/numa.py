"""Guest NUMA placement of added VFs: which expander bus and root port each VF gets, as data.

KubeVirt's ``PCINUMAAwareTopology`` gate does this in the converter, only for
the devices KubeVirt adds itself, before any hook runs; a VF this hook adds
would otherwise land on the root complex, where the guest sees no NUMA node
and the QAT driver allocates its rings anywhere. This module makes the same
decisions KubeVirt makes, from the parsed domain and the host's CPU -> node
map; it reads the tree, never changes it, and the transform writes what it
returns:

* host node -> guest cell: the ``numatune/memnode`` whose nodeset holds the
  node, else the vCPU pinning (vCPUs pinned only to that node's host CPUs ->
  the cell holding most of them);
* one ``pcie-expander-bus`` per guest cell (``<target busNr><node>cell``),
  reusing the one KubeVirt already made for that cell while its bus-number
  range has room, else a new one whose ``busNr`` is counted down below every
  existing expander (KubeVirt starts at 254), so no two hierarchies overlap;
* one ``pcie-root-port`` per VF on that bus, with a chassis number no other
  controller has (libvirt gives a port without ``chassis`` its index, and
  QEMU refuses two ports on one chassis); the VF's guest address is the root
  port's bus (its controller index), slot 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

from lxml import etree

from hook_sidecar.domain_xml import attribute, child
from hook_sidecar.errors import PreconditionFailed
from hook_sidecar.hostdevs import ExpanderBus, HostDevice, NumaPlacement, Placement, RootPort
from hook_sidecar.libvirt_values import MAX_NODES, Budget, cpuset, number
from hook_sidecar.pci import PciAddress
from hook_sidecar.pci_topology import MAX_SLOT, Controller, Topology


class PlacementFailed(PreconditionFailed):
    """``strict`` placement could not place a VF on its guest NUMA cell."""


# --- what the domain says ----------------------------------------------------------


class _Guest(NamedTuple):
    """The guest NUMA facts: cells and their vCPUs, memnode and vCPU pinning maps."""

    cells: dict[int, frozenset[int]]
    memnodes: dict[int, frozenset[int]]  # cell -> host nodes
    pins: dict[int, frozenset[int]]  # vCPU -> host CPUs

    @classmethod
    def read(cls, root: etree._Element) -> _Guest:
        """``./cpu/numa[1]/cell``, ``./numatune[1]/memnode`` and ``./cputune/vcpupin``."""
        budget = Budget()
        cells: dict[int, frozenset[int]] = {}
        numas = [child(cpu, "numa") for cpu in root.iterchildren("cpu")]
        found = [cell for numa in numas if numa is not None for cell in numa.iterchildren("cell")]
        for position, cell in enumerate(found):
            text = attribute(cell, "id")
            ident = number(text) if text is not None else position
            if ident is not None:
                cells.setdefault(
                    ident, cpuset(attribute(cell, "cpus"), budget=budget) or frozenset()
                )
        memnodes: dict[int, frozenset[int]] = {}
        numatune = child(root, "numatune")
        for memnode in numatune.iterchildren("memnode") if numatune is not None else ():
            ident = number(attribute(memnode, "cellid"))
            nodes = cpuset(attribute(memnode, "nodeset"), MAX_NODES, budget)
            if ident in cells and nodes:
                memnodes[ident] = nodes
        pins: dict[int, frozenset[int]] = {}
        for cputune in root.iterchildren("cputune"):
            for pin in cputune.iterchildren("vcpupin"):
                vcpu = number(attribute(pin, "vcpu"))
                cpus = cpuset(attribute(pin, "cpuset"), budget=budget)
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
        best = max(counts.values())  # placement reads no further without cells
        return min(c for c, n in counts.items() if n == best) if best else None


# --- the decisions -------------------------------------------------------------------


class _Unplaced:
    """VFs that keep today's placement, with the reason for each."""

    def __init__(self) -> None:
        self.reasons: list[tuple[PciAddress, str]] = []

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


def _machine_supports_expanders(root: etree._Element) -> str | None:
    """Why the machine type (``./os/type[1]``) cannot hold a PCIe expander bus, or None."""
    os = child(root, "os")
    os_type = child(os, "type") if os is not None else None
    machine = (attribute(os_type, "machine") if os_type is not None else None) or ""
    if "q35" in machine or machine.startswith("virt"):
        return None
    return f"machine type {machine or 'unset (pc)'!r} has no PCIe expander bus; use q35"


def _cells_for(
    devices: Sequence[HostDevice],
    guest: _Guest,
    host_cpus: Mapping[int, int],
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
        if cell is None:
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


def _reusable(topology: Topology, cell: int, count: int, floor: int) -> Controller | None:
    """KubeVirt's expander bus for ``cell`` when its bus range and slots have room.

    The new root ports' indexes must also stay below every expander's bus
    number (``floor``, the lowest), as KubeVirt requires of its own.
    """
    if max(topology.taken_indexes) + count >= floor:
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
    their bus and slot are kept free. ``host_cpus`` (host CPU -> NUMA node,
    from discovery) is what the vCPU-pinning fallback maps nodes with; without
    it only the memnode mapping places a VF.
    """
    wanted = [d for d in devices if d.guest_address is None]
    if mode == "off" or not wanted:
        return Placement()
    guest = _Guest.read(root)
    if not guest.cells:
        return Placement()
    unplaced = _Unplaced()
    unsupported = _machine_supports_expanders(root)
    if unsupported is not None:
        for device in wanted:
            unplaced.add(device.address, unsupported)
        return Placement(warnings=unplaced.outcome(mode))

    by_cell = _cells_for(wanted, guest, host_cpus or {}, unplaced)
    operator = [d.guest_address for d in devices if d.guest_address is not None]
    topology = Topology.read(root, operator)
    guest_addresses: dict[PciAddress, PciAddress] = {}
    cells: dict[PciAddress, int] = {}
    controllers: list[ExpanderBus | RootPort] = []
    floor = topology.lowest_bus_nr()  # new expanders are numbered down from here
    for cell in sorted(by_cell):
        vfs = by_cell[cell]
        expander = _reusable(topology, cell, len(vfs), floor)
        groups: list[tuple[int, list[PciAddress]]] = []
        if expander is not None:
            groups.append((expander.index, vfs))
        else:
            for start in range(0, len(vfs), MAX_SLOT + 1):
                chunk = vfs[start : start + MAX_SLOT + 1]
                bus_nr = floor - 1 - len(chunk)
                if bus_nr <= max(topology.taken_indexes) + 1 + len(chunk):
                    for address in chunk:
                        unplaced.add(
                            address,
                            f"no PCI bus numbers are left below {floor} for a new expander bus",
                        )
                    continue
                index = topology.next_index()
                controllers.append(ExpanderBus(index, bus_nr, cell))
                floor = bus_nr
                groups.append((index, chunk))
        for bus, chunk in groups:
            slots = topology.free_slots(bus)  # _reusable and the chunks leave one for each VF
            for position, address in enumerate(chunk):
                index = topology.next_index()
                port = RootPort(index, topology.take_chassis(index), bus, slots[position])
                controllers.append(port)
                guest_addresses[address] = PciAddress(0, index, 0, 0)
                cells[address] = cell
    return Placement(guest_addresses, cells, tuple(controllers), unplaced.outcome(mode))
