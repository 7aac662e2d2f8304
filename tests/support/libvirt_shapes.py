"""Guest NUMA domain shapes built from KubeVirt's own converter output.

Each shape starts from ``numa-passthrough-2vf.xml`` (what KubeVirt wrote for a
``guestMappingPassthrough`` VMI on a two-node host) and rewrites only what a
different VMI or host would change: the number of guest cells, which host node
backs each cell (memnode nodesets, or vCPU pinning alone), host devices that
KubeVirt itself already placed on expander buses (written as its
``PCINUMAAwareTopology`` code writes them), and the VFs the hook adds.
Host node ``n`` owns host CPUs ``32n .. 32n+31``, as on the fixture's host.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lxml import etree

from hook_sidecar.hostdevs import HostDevice
from hook_sidecar.pci import PciAddress

FIXTURES = Path(__file__).resolve().parents[1] / "data" / "kubevirt-domains"
"""Copies of the domains KubeVirt's converter wrote (see the contract, section 9)."""
CPUS_PER_NODE = 32


def fixture(name: str) -> bytes:
    """A domain (or VMI) KubeVirt's converter wrote."""
    return (FIXTURES / name).read_bytes()


@dataclass(frozen=True)
class Shape:
    """A guest NUMA layout, the host nodes behind it, and the VFs to add.

    ``backing[i]`` is the host node behind guest cell ``i``; ``vfs[j]`` is the
    host node of VF ``j`` (None: unknown); ``kubevirt_devices[k]`` is the guest
    cell of a host device KubeVirt already placed; ``kubevirt_room`` leaves that
    many spare bus numbers in each KubeVirt expander range.
    """

    name: str
    backing: tuple[int, ...]
    vfs: tuple[int | None, ...]
    memnode: bool = True
    kubevirt_devices: tuple[int, ...] = ()
    kubevirt_room: int = 0

    def host_cpus(self) -> dict[int, int]:
        return {
            node * CPUS_PER_NODE + cpu: node
            for node in set(self.backing) | {n for n in self.vfs if n is not None}
            for cpu in range(CPUS_PER_NODE)
        }

    def devices(self) -> list[HostDevice]:
        return [
            HostDevice(PciAddress(0, 0x3D + j, 0x01, 0), numa_node=node)
            for j, node in enumerate(self.vfs)
        ]

    def expected_cell(self, node: int | None) -> int | None:
        """The guest cell a VF on host node ``node`` belongs on (lowest cell backed by it)."""
        cells = [cell for cell, host in enumerate(self.backing) if host == node]
        return min(cells, default=None)

    def xml(self) -> bytes:
        root = etree.fromstring(fixture("numa-passthrough-2vf.xml"))
        cells = len(self.backing)
        _replace_numa(root, self.backing, self.memnode)
        pages = root.find("memoryBacking/hugepages")
        assert pages is not None
        template = pages[0]
        for page in list(pages):
            pages.remove(page)
        for cell in range(cells):
            attrs = {str(k): str(v) for k, v in template.attrib.items()}
            page = etree.SubElement(pages, "page", attrs)
            page.set("nodeset", str(cell))
        memory = root.find("memory")
        assert memory is not None
        memory.text = str(cells * 1024**3)
        if self.kubevirt_devices:
            _kubevirt_placed(root, self.kubevirt_devices, self.kubevirt_room)
        return bytes(etree.tostring(root))


def _replace_numa(root: etree._Element, backing: tuple[int, ...], memnode: bool) -> None:
    cells = len(backing)
    numa = root.find("cpu/numa")
    topology = root.find("cpu/topology")
    vcpu = root.find("vcpu")
    cputune = root.find("cputune")
    numatune = root.find("numatune")
    assert numa is not None and topology is not None and vcpu is not None
    assert cputune is not None and numatune is not None
    topology.set("sockets", str(cells))
    vcpu.text = str(2 * cells)
    vcpus = root.find("vcpus")  # KubeVirt's per-vCPU list (hotplug): one entry per vCPU
    if vcpus is not None:
        for child in list(vcpus):
            vcpus.remove(child)
        for n in range(2 * cells):
            enabled = {"id": str(n), "enabled": "yes", "hotpluggable": "no"}
            etree.SubElement(vcpus, "vcpu", enabled)
    for element in (numa, cputune, numatune):
        for child in list(element):
            element.remove(child)
    for cell, host in enumerate(backing):
        etree.SubElement(
            numa,
            "cell",
            {
                "id": str(cell),
                "cpus": f"{2 * cell},{2 * cell + 1}",
                "memory": str(1024**3),
                "unit": "b",
            },
        )
        for k in range(2):
            # Distinct host CPUs of the backing node, as dedicated CPUs are.
            cpu = host * CPUS_PER_NODE + 2 + 2 * cell + k
            etree.SubElement(cputune, "vcpupin", {"vcpu": str(2 * cell + k), "cpuset": str(cpu)})
    nodes = ",".join(str(n) for n in sorted(set(backing)))
    etree.SubElement(numatune, "memory", {"mode": "strict", "nodeset": nodes})
    if memnode:
        for cell, host in enumerate(backing):
            etree.SubElement(
                numatune, "memnode", {"cellid": str(cell), "mode": "strict", "nodeset": str(host)}
            )


def _kubevirt_placed(root: etree._Element, cells: tuple[int, ...], room: int) -> None:
    """Host devices placed the way KubeVirt's converter places them under its gate.

    Per guest cell (ascending) one ``pcie-expander-bus`` without an address,
    then one ``pcie-root-port`` per device addressed on the expander's index,
    slot = its position; the hostdev on the root port's index, slot 0;
    ``busNr = 255 - controllers made so far + 1`` (minus ``room``).
    """
    devices = root.find("devices")
    assert devices is not None
    index = 0
    made = 0
    number = 0
    for cell in sorted(set(cells)):
        index += 1
        made += 1
        expander = index
        bus = etree.SubElement(
            devices,
            "controller",
            {"type": "pci", "index": str(expander), "model": "pcie-expander-bus"},
        )
        ports = []
        for slot in range(cells.count(cell)):
            index += 1
            made += 1
            ports.append(index)
            port = etree.SubElement(
                devices,
                "controller",
                {"type": "pci", "index": str(index), "model": "pcie-root-port"},
            )
            etree.SubElement(
                port,
                "address",
                {
                    "type": "pci",
                    "domain": "0x0000",
                    "bus": str(expander),
                    "slot": f"0x{slot:02x}",
                    "function": "0x0",
                },
            )
        made += room
        target = etree.SubElement(bus, "target", {"busNr": str(255 - made + 1)})
        etree.SubElement(target, "node").text = str(cell)
        for port_index in ports:
            hostdev = etree.SubElement(devices, "hostdev", {"type": "pci", "managed": "no"})
            source = etree.SubElement(hostdev, "source")
            etree.SubElement(
                source,
                "address",
                {"domain": "0x0000", "bus": "0x5e", "slot": "0x00", "function": f"0x{number:x}"},
            )
            etree.SubElement(hostdev, "alias", {"name": f"ua-hostdevice-{number}"})
            etree.SubElement(
                hostdev,
                "address",
                {
                    "type": "pci",
                    "domain": "0x0000",
                    "bus": f"0x{port_index:02x}",
                    "slot": "0x00",
                    "function": "0x0",
                },
            )
            number += 1


SHAPES = (
    Shape("1 cell, VF on its node", backing=(0,), vfs=(0,)),
    Shape("2 cells, one VF per node", backing=(0, 1), vfs=(0, 1)),
    Shape("2 cells backed crosswise", backing=(1, 0), vfs=(0, 1, 1)),
    Shape("3 cells, VFs on two nodes", backing=(0, 1, 2), vfs=(2, 2, 0)),
    Shape("4 cells, a VF on each", backing=(0, 1, 2, 3), vfs=(3, 2, 1, 0)),
    Shape("2 cells, pinning only", backing=(1, 0), vfs=(0, 1), memnode=False),
    Shape("4 cells, pinning only", backing=(2, 3, 0, 1), vfs=(1, 2), memnode=False),
    Shape("VF on an unbacked node", backing=(0, 1), vfs=(5, 0)),
    Shape("VF with unknown node", backing=(0, 1), vfs=(None, 1)),
    Shape("KubeVirt buses, tight", backing=(0, 1), vfs=(0, 1), kubevirt_devices=(0, 1)),
    Shape(
        "KubeVirt buses with room",
        backing=(0, 1),
        vfs=(1, 0, 1),
        kubevirt_devices=(0, 1, 1),
        kubevirt_room=2,
    ),
    Shape(
        "KubeVirt bus on one cell, VFs on both",
        backing=(0, 1, 2),
        vfs=(0, 2),
        kubevirt_devices=(2,),
    ),
)
