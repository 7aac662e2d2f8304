"""The hook's output read by libvirt itself: its RNG schema, its parser and its QEMU driver.

These run in CI and must never be skipped there: ``make test`` installs
libvirt-python and libvirt0 (which carries the schemas and the test driver),
and ``scripts/libvirtd.sh`` starts libvirtd's QEMU driver, which defines the
NUMA-placed output and prints the QEMU devices it becomes.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from lxml import etree

from hook_sidecar.errors import InvalidInput
from hook_sidecar.hostdevs import HostDevice, TransformOptions, TransformResult
from hook_sidecar.libvirt_values import cpuset
from hook_sidecar.pci import PciAddress
from hook_sidecar.transform import transform
from hook_sidecar.validate import validate
from tests.ci import in_ci
from tests.conftest import EXAMPLES, run_cli
from tests.support.domains import GeneratedDomain, domains, pci_addresses
from tests.support.libvirt_qemu import (
    QemuTopology,
    chassis_slots,
    connect,
    define_and_undefine,
    for_define,
    host_nodes,
    qemu_devices,
    realize_buses,
    topology_problems,
)
from tests.support.libvirt_shapes import SHAPES, Shape, fixture

try:
    import libvirt  # noqa: F401
except ImportError:  # pragma: no cover - only on a machine without the test extra
    if in_ci():
        raise
    pytest.skip("libvirt-python is not installed (pip install '.[test]')", allow_module_level=True)


def test_example_passes_schema_and_parser(domain_xml: bytes) -> None:
    result = transform(
        domain_xml,
        [HostDevice(PciAddress.parse("3d:02.2")), HostDevice(PciAddress.parse("3d:02.3"))],
    )
    report = validate(result.xml, result.added)
    assert report.ok, report.lines
    assert any("valid against libvirt's domain.rng" in line for line in report.lines)
    assert any("hostdev ua-qat-1 kept with source 0000:3d:02.3" in line for line in report.lines)


def test_guest_address_and_managed_yes_pass(domain_xml: bytes) -> None:
    result = transform(
        domain_xml,
        [HostDevice(PciAddress.parse("3d:02.2"), PciAddress.parse("00:10.0"))],
        TransformOptions(managed="yes"),
    )
    report = validate(result.xml, result.added)
    assert report.ok, report.lines


def test_schema_rejects_a_broken_hostdev(domain_xml: bytes) -> None:
    """The check is real: libvirt's schema refuses a hostdev the hook must never write."""
    result = transform(domain_xml, [HostDevice(PciAddress.parse("3d:02.2"))])
    broken = result.xml.replace(b'managed="no"', b'managed="maybe"')
    report = validate(broken, result.added)
    assert not report.ok
    assert any("schema: libvirt rejected" in line for line in report.lines)


def test_parser_rejects_a_broken_domain(domain_xml: bytes) -> None:
    result = transform(domain_xml, [HostDevice(PciAddress.parse("3d:02.2"))])
    broken = result.xml.replace(b'<memory unit="b">4294967296</memory>', b"")
    report = validate(broken, result.added)
    assert not report.ok
    assert any(line.startswith("parser: libvirt could not define") for line in report.lines)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(domains(), st.lists(pci_addresses, min_size=1, max_size=3, unique=True))
def test_generated_domains_pass_libvirt(
    generated: GeneratedDomain, addresses: list[PciAddress]
) -> None:
    result = transform(generated.xml, [HostDevice(a) for a in addresses])
    report = validate(result.xml, result.added)
    assert report.ok, report.lines


# --- real libvirt's QEMU driver: NUMA placement becomes pxb-pcie / vfio-pci ---------


@pytest.fixture(scope="module")
def qemu() -> Any:
    conn = connect()
    yield conn
    conn.close()


def _expected(
    result: TransformResult, cells: Mapping[PciAddress, int | None]
) -> dict[str, tuple[str, int | None]]:
    return {added.alias: (str(added.address), cells[added.address]) for added in result.added}


def _qemu_topology(qemu: Any, xml: bytes) -> QemuTopology:
    """Define the output with libvirt (then undefine it) and read its QEMU devices."""
    defined = for_define(xml, host_nodes())
    kept = etree.fromstring(define_and_undefine(qemu, defined))
    # libvirt kept every expander bus with its guest node and bus number.
    written = etree.fromstring(xml)
    for controller in written.iterfind("devices/controller[@model='pcie-expander-bus']"):
        again = kept.find(f"devices/controller[@index='{controller.get('index')}']")
        assert again is not None and again.get("model") == "pcie-expander-bus"
        assert again.findtext("target/node") == controller.findtext("target/node")
        assert again.xpath("string(target/@busNr)") == controller.xpath("string(target/@busNr)")
    return QemuTopology.of(qemu_devices(qemu, defined))


@pytest.mark.parametrize("name", ["numa-passthrough-2vf.xml", "kubevirt-hostdevs-1vf.xml"])
def test_shared_fixtures_become_vfio_pci_on_their_guest_node(qemu: Any, name: str) -> None:
    """KubeVirt's own domains: each VF on its cell's pxb-pcie, or on the root complex."""
    numa = name.startswith("numa")
    vfs = [HostDevice(PciAddress.parse("3d:01.0"), numa_node=0)]
    vfs.append(HostDevice(PciAddress.parse("b1:01.0"), numa_node=1))
    result = transform(fixture(name), vfs, TransformOptions(numa_placement="strict"))
    cells = {vf.address: (vf.numa_node if numa else None) for vf in vfs}
    assert {a.address: a.guest_cell for a in result.added} == cells
    expected = _expected(result, cells)
    if not numa:  # KubeVirt's own host device is still a vfio-pci device
        expected["ua-hostdevice-nic"] = ("0000:af:00.0", None)  # KubeVirt: ua-hostdevice-<name>
    topology = _qemu_topology(qemu, result.xml)
    assert topology_problems(topology, expected) == []


@pytest.mark.parametrize("shape", SHAPES, ids=[shape.name for shape in SHAPES])
def test_generated_numa_shapes_place_each_vf_on_its_cell(qemu: Any, shape: Shape) -> None:
    # The host CPU -> node map of the shape's host: this machine has one NUMA node, the
    # shapes need up to four (discovery reads the real map from sysfs).
    result = transform(
        shape.xml(), shape.devices(), TransformOptions(numa_placement="auto"), shape.host_cpus()
    )
    cells = {vf.address: shape.expected_cell(vf.numa_node) for vf in shape.devices()}
    assert {a.address: a.guest_cell for a in result.added} == cells
    assert len(result.warnings) == sum(1 for cell in cells.values() if cell is None)
    expected = _expected(result, cells)
    for number, cell in enumerate(shape.kubevirt_devices):  # KubeVirt's own, left in place
        expected[f"ua-hostdevice-{number}"] = (f"0000:5e:00.{number}", cell)
    topology = _qemu_topology(qemu, result.xml)
    assert topology_problems(topology, expected) == []


def test_without_numa_cells_placement_changes_nothing(qemu: Any) -> None:
    """A domain without guest cells gets today's hostdevs, whatever the mode."""
    xml = fixture("kubevirt-hostdevs-1vf.xml")
    vfs = [HostDevice(PciAddress.parse("3d:01.0"), numa_node=1)]
    outputs = {
        mode: transform(xml, vfs, TransformOptions(numa_placement=mode)).xml
        for mode in ("off", "auto", "strict")
    }
    assert len(set(outputs.values())) == 1
    topology = _qemu_topology(qemu, outputs["strict"])
    assert topology_problems(topology, {"ua-qat-0": ("0000:3d:01.0", None)}) == []


def test_numa_example_through_the_cli_becomes_vfio_pci_on_each_node(
    qemu: Any, tmp_path: Path
) -> None:
    """examples/numa as the README runs it: the CLI reads each VF's node from the sysfs tree."""
    out = tmp_path / "domain.xml"
    numa_example = EXAMPLES / "numa"
    done = run_cli(
        "transform",
        str(numa_example / "domain.xml"),
        "--vmi",
        str(numa_example / "vmi.json"),
        "--device",
        "0000:3d:01.0",
        "--device",
        "0000:b1:01.0",
        "--sysfs-root",
        str(numa_example / "sysfs"),
        "--verify-sysfs",
        "off",
        "--numa-placement",
        "strict",
        "-o",
        str(out),
    )
    assert done.returncode == 0, done.stderr.decode()
    assert b"warning" not in done.stderr
    topology = _qemu_topology(qemu, out.read_bytes())
    expected = {"ua-qat-0": ("0000:3d:01.0", 0), "ua-qat-1": ("0000:b1:01.0", 1)}
    assert topology_problems(topology, expected) == []


# --- chassis numbers: real QEMU refuses two PCIe ports on one chassis -------------------------


@st.composite
def domains_with_root_ports(draw: st.DrawFn) -> tuple[bytes, list[HostDevice]]:
    """KubeVirt's guest-NUMA domain with root ports of its own, some with a chassis spelled out.

    Every port's chassis (its index when not written) is its own. Written chassis favour
    the numbers the hook's new ports would take, in decimal, hex or octal as libvirt reads
    them.
    """
    indexes = sorted(draw(st.sets(st.integers(1, 24), min_size=1, max_size=10)))
    top = indexes[-1]
    used: set[int] = set()
    ports = []
    for index in indexes:
        chassis = draw(
            st.one_of(
                st.none(),
                st.just(index),
                st.integers(top + 1, top + 6),
                st.integers(200, 255),
            ).filter(lambda c: c is None or c not in used)
        )
        effective = index if chassis is None else chassis
        if effective in used:
            chassis, effective = None, index
        if effective in used:
            continue
        used.add(effective)
        spelled = "" if chassis is None else draw(st.sampled_from(["{}", "0x{:x}", "0{:o}"]))
        target = f'<target chassis="{spelled.format(chassis)}"/>' if chassis is not None else ""
        ports.append(
            f'<controller type="pci" index="{index}" model="pcie-root-port">{target}</controller>'
        )
    # Only these ports on the PCI buses, so libvirt adds no port of its own (it would give
    # that port its index as chassis, which a chassis written out here may already be).
    domain = etree.fromstring(fixture("numa-passthrough-2vf.xml"))
    holder = domain.find("devices")
    assert holder is not None
    for device in list(holder):
        holder.remove(device)
    for markup in (
        '<controller type="usb" index="0" model="none"/>',
        '<memballoon model="none"/>',
        *ports,
    ):
        holder.append(etree.fromstring(markup))
    xml = etree.tostring(domain)
    nodes = draw(st.lists(st.sampled_from([0, 1]), min_size=1, max_size=4))
    devices = [HostDevice(PciAddress(0, 0x3D, 1, f), numa_node=n) for f, n in enumerate(nodes)]
    return xml, devices


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(domains_with_root_ports())
def test_new_root_ports_never_share_a_chassis_in_qemu(
    qemu: Any, generated: tuple[bytes, list[HostDevice]]
) -> None:
    """libvirt turns the output into QEMU devices; QEMU itself creates every PCIe port.

    A domain QEMU already refuses is no test of the hook's choices: it is skipped.
    """
    xml, devices = generated
    before = qemu_devices(qemu, for_define(xml, host_nodes()))
    assume(len(set(chassis_slots(before))) == len(chassis_slots(before)))
    result = transform(xml, devices, TransformOptions(numa_placement="strict"))
    assert all(added.guest_cell is not None for added in result.added)
    qemu_line = qemu_devices(qemu, for_define(result.xml, host_nodes()))
    pairs = chassis_slots(qemu_line)
    assert len(pairs) == len(set(pairs)), pairs
    assert realize_buses(qemu_line, cells=2) == ""


def test_a_port_without_chassis_keeps_its_index_as_chassis_in_qemu(qemu: Any) -> None:
    """The fact the placement relies on, as libvirt states it: chassis = index when unset."""
    xml = fixture("numa-passthrough-2vf.xml").replace(
        b"\t</devices>",
        b'<controller type="pci" index="3" model="pcie-root-port"/>'
        b'<controller type="pci" index="4" model="pcie-root-port"><target chassis="010"/>'
        b"</controller>\n\t</devices>",
    )
    ports = {
        d["id"]: d["chassis"]
        for d in qemu_devices(qemu, for_define(xml, host_nodes()))
        if d.get("driver") == "pcie-root-port"
    }
    assert ports["pci.3"] == 3 and ports["pci.4"] == 8  # chassis is read as C reads "010"


# --- libvirt's cpuset and nodeset syntax, as libvirt reads it -----------------------------------

CPUSET_TOKENS = st.sampled_from(["0", "1", "2", "3", "7", "01", "16383", "16384", "99999", "^"])
CPUSET_GLUE = st.sampled_from([",", "-", " ", "", ", ", " - ", "+", "\t", ",,", "\u00a0"])


@st.composite
def cpuset_texts(draw: st.DrawFn) -> str:
    parts = draw(st.lists(st.tuples(CPUSET_TOKENS, CPUSET_GLUE), min_size=1, max_size=5))
    return "".join(token + glue for token, glue in parts).rstrip("+")


def libvirt_cpuset(conn: Any, text: str) -> frozenset[int] | None:
    """What libvirt reads from ``<vcpu cpuset=...>``: its canonical form, or None if refused."""
    import libvirt

    domain = etree.fromstring(fixture("kubevirt-hostdevs-1vf.xml"))
    vcpu = domain.find("vcpu")
    assert vcpu is not None
    vcpu.set("cpuset", text)
    try:
        kept = etree.fromstring(define_and_undefine(conn, for_define(etree.tostring(domain), [0])))
    except libvirt.libvirtError:
        return None
    read = kept.find("vcpu")
    assert read is not None
    if read.get("cpuset") is None:  # libvirt drops a cpuset that holds every CPU
        return frozenset(range(16384))
    return cpuset(read.get("cpuset"))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cpuset_texts())
def test_cpusets_read_as_libvirt_reads_them(qemu: Any, text: str) -> None:
    ours = cpuset(text)
    theirs = libvirt_cpuset(qemu, text)
    # libvirt refuses an empty set here ("^0" alone); the hook reads it as no CPUs at all.
    assert (ours or None) == theirs, (text, ours, theirs)


@pytest.mark.parametrize("text", ["^0,0", "0-3,^2", "1,", " 1 ", "0 - 2 , 3", "01"])
def test_cpuset_examples_as_libvirt_reads_them(qemu: Any, text: str) -> None:
    assert cpuset(text) == libvirt_cpuset(qemu, text)


# --- attributes in a namespace: libvirt reads them by their local name ----------------------

NAMESPACED_HOSTDEV = (
    b'<hostdev mode="subsystem" q:type="pci" managed="no" xmlns:q="urn:q"><driver name="vfio"/>'
    b'<source><address domain="0x0000" bus="0x3d" slot="0x02" function="0x2"/></source></hostdev>'
)
TWO_BUSES = (
    b'<hostdev mode="subsystem" type="pci" managed="no" xmlns:q="urn:q"><driver name="vfio"/>'
    b'<source><address domain="0x0000" q:bus="0x3e" bus="0x3d" slot="0x02" function="0x2"/>'
    b"</source></hostdev>"
)


def libvirt_hostdev_sources(conn: Any, domain: bytes) -> list[str]:
    kept = etree.fromstring(define_and_undefine(conn, for_define(domain, host_nodes())))
    return [
        str(PciAddress.from_libvirt({str(k): str(v) for k, v in a.attrib.items()}))
        for a in kept.iterfind("devices/hostdev[@type='pci']/source/address")
    ]


@pytest.mark.parametrize(
    ("hostdev", "libvirt_reads"),
    [(NAMESPACED_HOSTDEV, "0000:3d:02.2"), (TWO_BUSES, "0000:3e:02.2")],
    ids=["prefixed type", "prefixed bus before a plain one"],
)
def test_namespaced_attributes_libvirt_reads_are_refused(
    qemu: Any, hostdev: bytes, libvirt_reads: str
) -> None:
    """libvirt reads ``q:type`` as ``type`` and the first ``bus`` whatever its prefix.

    A hook that read only plain attributes would add 3d:02.2 a second time (libvirt:
    "Hostdev already exists") or take 3e:02.2 for it; the hook refuses such a domain.
    """
    domain = fixture("kubevirt-hostdevs-1vf.xml").replace(
        b"\t</devices>", hostdev + b"\t</devices>"
    )
    assert libvirt_reads in libvirt_hostdev_sources(qemu, domain)
    with pytest.raises(InvalidInput, match="in a namespace; libvirt and KubeVirt read it as"):
        transform(domain, [HostDevice(PciAddress.parse("3d:02.2"))])
