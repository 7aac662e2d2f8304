"""Real libvirt's QEMU driver for the tests: define a domain, read the QEMU command line.

``make test`` runs ``scripts/libvirtd.sh`` first, which installs and starts
libvirtd; the tests then talk to ``qemu:///system``. Nothing here is mocked:
libvirt itself decides whether a domain defines, and ``domainXMLToNative``
shows which QEMU devices (``pxb-pcie``, ``pcie-root-port``, ``vfio-pci``)
the hook's controllers and hostdevs become. No VFIO device, /dev/kvm or
hugepages are needed for either call.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

from lxml import etree

from tests.ci import skip_or_fail

URI = "qemu:///system"


def connect() -> Any:
    """A connection to libvirtd's QEMU driver; skip locally, fail in CI, when there is none."""
    try:
        import libvirt
    except ImportError:
        skip_or_fail("libvirt-python is not installed (pip install '.[test]')")
        raise  # unreachable: skip_or_fail always raises
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    try:
        return libvirt.open(URI)
    except libvirt.libvirtError as err:
        skip_or_fail(
            f"libvirtd's QEMU driver does not answer on {URI} ({' '.join(str(err).split())}); "
            "run scripts/libvirtd.sh as root"
        )
        raise


def host_nodes(sysfs_root: Path = Path("/sys")) -> list[int]:
    """The NUMA nodes this machine has (libvirt refuses a memnode naming any other)."""
    base = sysfs_root / "devices" / "system" / "node"
    nodes = sorted(
        int(entry.name[4:])
        for entry in (base.iterdir() if base.is_dir() else [])
        if entry.name.startswith("node") and entry.name[4:].isdigit()
    )
    return nodes or [0]


def for_define(domain_xml: bytes, nodes: Sequence[int]) -> bytes:
    """The domain as this machine's libvirt can define it, PCI layout untouched.

    Changed for the define only, and why: ``type="qemu"`` (no /dev/kvm
    needed); a fresh name and UUID (tests run in parallel against one
    daemon); every ``numatune`` nodeset rewritten onto host nodes that exist
    here (the fixtures come from a two-node host, this machine may have one),
    node ``n`` -> ``nodes[n % len(nodes)]``; ``<driver name="vfio"/>`` on
    KubeVirt's own hostdevs, which carry none (libvirt picks the default
    backend from the host's VFIO support, which virt-launcher's node has and
    this machine lacks). Guest cells, vCPU pinning, every controller and every
    address stay as the hook wrote them.
    """
    root = etree.fromstring(domain_xml)
    root.set("type", "qemu")
    ident = str(uuid.uuid4())
    name = root.find("name")
    if name is None:
        name = etree.SubElement(root, "name")
    name.text = f"qat-hook-test-{ident[:8]}"
    for old in root.findall("uuid"):
        root.remove(old)
    etree.SubElement(root, "uuid").text = ident
    for entry in root.iterfind("sysinfo/system/entry[@name='uuid']"):
        entry.text = ident
    for element in root.iterfind("numatune/*[@nodeset]"):
        wanted = [int(n) for n in element.get("nodeset", "").split(",") if n.strip().isdigit()]
        element.set(
            "nodeset", ",".join(str(n) for n in sorted({nodes[w % len(nodes)] for w in wanted}))
        )
    for hostdev in root.iterfind("devices/hostdev[@type='pci']"):
        if hostdev.find("driver") is None:
            hostdev.insert(0, etree.Element("driver", {"name": "vfio"}))
    return bytes(etree.tostring(root))


def define_and_undefine(conn: Any, domain_xml: bytes) -> bytes:
    """Define the domain, return libvirt's own XML of it, and undefine it again."""
    domain = conn.defineXML(domain_xml.decode())
    try:
        return str(domain.XMLDesc(0)).encode()
    finally:
        domain.undefine()


def qemu_devices(conn: Any, domain_xml: bytes) -> list[dict[str, Any]]:
    """The ``-device`` objects of the QEMU command line libvirt would run for the domain."""
    argv = shlex.split(str(conn.domainXMLToNative("qemu-argv", domain_xml.decode(), 0)))
    devices = []
    for flag, value in pairwise(argv):
        if flag == "-device" and value.startswith("{"):
            devices.append(json.loads(value))
    return devices


@dataclass(frozen=True)
class QemuTopology:
    """The PCI tree of a QEMU command line: who sits on which bus."""

    devices: Mapping[str, dict[str, Any]]

    @classmethod
    def of(cls, devices: Sequence[dict[str, Any]]) -> QemuTopology:
        return cls({str(d["id"]): d for d in devices if "id" in d})

    def path(self, device_id: str) -> Iterator[dict[str, Any]]:
        """The device, then each bus above it up to the root complex."""
        seen: set[str] = set()
        current: dict[str, Any] | None = self.devices.get(device_id)
        while current is not None and str(current.get("id")) not in seen:
            seen.add(str(current.get("id")))
            yield current
            current = self.devices.get(str(current.get("bus", "")))

    def numa_node(self, device_id: str) -> int | None:
        """The ``numa_node`` of the ``pxb-pcie`` above the device, None on the root complex."""
        for device in self.path(device_id):
            if device.get("driver") == "pxb-pcie":
                return int(device["numa_node"])
        return None

    def bus_ranges(self) -> list[tuple[str, int, int]]:
        """Each PCI hierarchy's bus numbers (first, last): the root complex and every pxb.

        A bridge (anything other devices sit on) takes one bus number inside
        the hierarchy it hangs below; a pxb-pcie starts its own at ``bus_nr``.
        """
        bridges = {str(d.get("bus")) for d in self.devices.values() if d.get("bus")}
        counts: dict[str, int] = {"pcie.0": 0}
        for device_id in bridges:
            if device_id not in self.devices:
                continue
            if self.devices[device_id].get("driver") == "pxb-pcie":
                counts.setdefault(device_id, 0)
                continue
            top = next(
                (
                    str(d["id"])
                    for d in list(self.path(device_id))[1:]
                    if d.get("driver") == "pxb-pcie"
                ),
                "pcie.0",
            )
            counts[top] = counts.get(top, 0) + 1
        ranges = []
        for top, count in counts.items():
            first = 0 if top == "pcie.0" else int(self.devices[top]["bus_nr"])
            ranges.append((top, first, first + count))
        return sorted(ranges, key=lambda r: r[1])


def topology_problems(
    topology: QemuTopology, expected: Mapping[str, tuple[str, int | None]]
) -> list[str]:
    """What is wrong with the VFs' QEMU devices, given alias -> (host address, guest cell).

    Empty when each VF is a ``vfio-pci`` device for its host address, under a
    ``pxb-pcie`` whose ``numa_node`` is the expected cell (or on no pxb when
    the cell is None), and no two bus-number ranges overlap or pass 255.
    """
    problems = []
    for alias, (host, cell) in expected.items():
        device = topology.devices.get(alias)
        if device is None or device.get("driver") != "vfio-pci" or device.get("host") != host:
            problems.append(f"{alias}: no vfio-pci device for {host}: {device}")
            continue
        node = topology.numa_node(alias)
        if node != cell:
            problems.append(f"{alias} ({host}) is on NUMA node {node}, expected {cell}")
    ranges = topology.bus_ranges()
    for (name, _, last), (other, first, _) in pairwise(ranges):
        if first <= last:
            problems.append(f"bus numbers of {name} (to {last}) overlap {other} (from {first})")
    if ranges and ranges[-1][2] > 255:
        problems.append(f"bus numbers of {ranges[-1][0]} run past 255: {ranges[-1]}")
    return problems


PCIE_PORTS = ("pcie-root-port", "ioh3420", "xio3130-downstream")
"""QEMU devices that take a PCIe chassis and slot (QEMU refuses two on one pair)."""
BUSES = ("pxb-pcie", "x3130-upstream", *PCIE_PORTS)


def chassis_slots(devices: Sequence[dict[str, Any]]) -> list[tuple[int, int]]:
    """The (chassis, slot) pair of each PCIe port on a QEMU command line."""
    return [
        (int(d.get("chassis", 0)), int(d.get("slot", 0)))
        for d in devices
        if d.get("driver") in PCIE_PORTS
    ]


def realize_buses(devices: Sequence[dict[str, Any]], cells: int, timeout: float = 60) -> str:
    """Start real QEMU (stopped, TCG) with just the domain's PCI buses; its error output.

    Only the expander buses and ports are kept (the rest needs host devices or
    files this machine lacks); QEMU creates them at start-up, which is where it
    refuses a chassis used twice ("Can't add chassis slot"), then quits.
    """
    command = [
        "qemu-system-x86_64",
        "-machine",
        "q35,accel=tcg",
        "-nodefaults",
        "-S",
        "-display",
        "none",
        "-monitor",
        "stdio",
        "-m",
        f"{128 * max(cells, 1)}M",
        "-smp",
        str(max(cells, 1)),
    ]
    for cell in range(cells):
        command += [
            "-object",
            f"memory-backend-ram,id=m{cell},size=128M",
            "-numa",
            f"node,nodeid={cell},cpus={cell},memdev=m{cell}",
        ]
    for device in devices:
        if device.get("driver") in BUSES:
            command += ["-device", json.dumps(device)]
    done = subprocess.run(
        command, input=b"quit\n", capture_output=True, timeout=timeout, check=False
    )
    return "" if done.returncode == 0 else done.stderr.decode(errors="replace").strip()
