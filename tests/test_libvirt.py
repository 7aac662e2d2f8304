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
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from hook_sidecar import numa
from hook_sidecar.hostdevs import HostDevice, TransformOptions, TransformResult
from hook_sidecar.pci import PciAddress
from hook_sidecar.transform import transform
from hook_sidecar.validate import validate
from tests.ci import in_ci
from tests.conftest import EXAMPLES, run_cli
from tests.domains import GeneratedDomain, domains, pci_addresses
from tests.libvirt_qemu import (
    QemuTopology,
    connect,
    define_and_undefine,
    for_define,
    host_nodes,
    qemu_devices,
    topology_problems,
)
from tests.libvirt_shapes import SHAPES, Shape, fixture

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
        expected["ua-hostdevice-0"] = ("0000:af:00.0", None)
    topology = _qemu_topology(qemu, result.xml)
    assert topology_problems(topology, expected) == []


@pytest.mark.parametrize("shape", SHAPES, ids=[shape.name for shape in SHAPES])
def test_generated_numa_shapes_place_each_vf_on_its_cell(
    qemu: Any, shape: Shape, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Stand-in for sysfs only: this machine has one NUMA node, the shapes need up to
    # four, and the vCPU-pinning fallback reads the host's CPU -> node map from sysfs.
    monkeypatch.setattr(numa, "read_host_cpu_nodes", lambda *_: shape.host_cpus())
    result = transform(shape.xml(), shape.devices(), TransformOptions(numa_placement="auto"))
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
