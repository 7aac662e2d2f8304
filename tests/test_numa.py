"""Guest NUMA placement: the decisions ``numa.place`` makes, read off the parsed domain.

What real libvirt and QEMU make of the result (pxb-pcie, root ports, chassis,
vfio-pci, bus ranges, cpusets) is checked in test_libvirt.py; these tests pin
each decision and how the host's CPU -> node map reaches it.
"""

from __future__ import annotations

import difflib
import json
import threading
from pathlib import Path

import pytest
from lxml import etree

from hook_sidecar import sysfs
from hook_sidecar.config import DiscoveryConfig, HookSettings
from hook_sidecar.errors import PreconditionFailed
from hook_sidecar.hook import on_define_domain
from hook_sidecar.hostdevs import ExpanderBus, HostDevice, Placement, RootPort, TransformOptions
from hook_sidecar.libvirt_values import MAX_EXPANDED, MAX_NODES, Budget, cpuset, number
from hook_sidecar.numa import PlacementFailed, place
from hook_sidecar.pci import PciAddress
from hook_sidecar.transform import normalized, transform
from tests.support.libvirt_shapes import Shape, fixture

VF0 = PciAddress.parse("3d:01.0")
VF1 = PciAddress.parse("b1:01.0")
TWO_NODES = {cpu: cpu // 32 for cpu in range(64)}  # the fixture's host


def numa_domain() -> etree._Element:
    return etree.fromstring(fixture("numa-passthrough-2vf.xml"))


def with_controllers(markup: str) -> etree._Element:
    root = numa_domain()
    devices = root.find("devices")
    assert devices is not None
    for element in etree.fromstring(f"<x>{markup}</x>"):
        devices.append(element)
    return root


# --- where each VF goes --------------------------------------------------------------------


def test_each_vf_gets_a_root_port_on_its_cells_expander_bus() -> None:
    placement = place(
        numa_domain(), [HostDevice(VF0, numa_node=0), HostDevice(VF1, numa_node=1)], "strict"
    )
    assert placement == Placement(
        guest_addresses={VF0: PciAddress(0, 2, 0, 0), VF1: PciAddress(0, 4, 0, 0)},
        cells={VF0: 0, VF1: 1},
        controllers=(
            ExpanderBus(index=1, bus_nr=254, cell=0),
            RootPort(index=2, chassis=2, bus=1, slot=0),
            ExpanderBus(index=3, bus_nr=252, cell=1),
            RootPort(index=4, chassis=4, bus=3, slot=0),
        ),
    )


def test_controllers_are_written_in_libvirts_form() -> None:
    domain = fixture("numa-passthrough-2vf.xml")
    result = transform(domain, [HostDevice(VF0, numa_node=0)])
    added = [
        line[1:]
        for line in difflib.unified_diff(
            normalized(domain).decode().splitlines(), result.xml.decode().splitlines(), n=0
        )
        if line.startswith("+") and not line.startswith("+++")
    ]
    assert added[:11] == [
        '\t\t<controller type="pci" index="1" model="pcie-expander-bus">',
        '\t\t\t<model name="pxb-pcie"/>',
        '\t\t\t<target busNr="254">',
        "\t\t\t\t<node>0</node>",
        "\t\t\t</target>",
        "\t\t</controller>",
        '\t\t<controller type="pci" index="2" model="pcie-root-port">',
        '\t\t\t<model name="pcie-root-port"/>',
        '\t\t\t<target chassis="2" port="0x0"/>',
        '\t\t\t<address type="pci" domain="0x0000" bus="0x01" slot="0x00" function="0x0"/>',
        "\t\t</controller>",
    ]


def test_vfs_of_one_cell_share_its_expander_bus() -> None:
    vfs = [HostDevice(VF0, numa_node=1), HostDevice(VF1, numa_node=1)]
    assert place(numa_domain(), vfs, "strict").controllers == (
        ExpanderBus(index=1, bus_nr=253, cell=1),  # the bus and one per root port: 253..255
        RootPort(index=2, chassis=2, bus=1, slot=0),
        RootPort(index=3, chassis=3, bus=1, slot=1),
    )


def test_memnode_maps_host_node_to_cell_not_the_node_number() -> None:
    """Cell 0 is backed by host node 1 here: a VF on node 1 belongs on cell 0."""
    shape = Shape("crosswise", backing=(1, 0), vfs=(1, 0))
    placement = place(etree.fromstring(shape.xml()), shape.devices(), "strict", {})
    assert [placement.cells[d.address] for d in shape.devices()] == [0, 1]


def test_pinning_maps_host_node_when_there_is_no_memnode() -> None:
    shape = Shape("pinned", backing=(1, 0, 2), vfs=(0, 2, 1), memnode=False)
    root = etree.fromstring(shape.xml())
    assert root.find("numatune/memnode") is None
    placement = place(root, shape.devices(), "strict", shape.host_cpus())
    assert [placement.cells[d.address] for d in shape.devices()] == [1, 2, 0]


def test_without_the_host_cpu_map_pinning_places_nothing() -> None:
    shape = Shape("pinned", backing=(1, 0), vfs=(1,), memnode=False)
    placement = place(etree.fromstring(shape.xml()), shape.devices(), "auto")
    assert placement.cells == {} and "node 1 backs no guest NUMA cell" in placement.warnings[0]


def sysfs_tree(root: Path, cpulists: dict[int, str], vfs: dict[PciAddress, int]) -> Path:
    """A sysfs tree with NUMA nodes and each VF's numa_node (a host's real layout)."""
    for node, cpus in cpulists.items():
        (root / "devices" / "system" / "node" / f"node{node}").mkdir(parents=True)
        (root / "devices" / "system" / "node" / f"node{node}" / "cpulist").write_text(cpus)
    for address, node in vfs.items():
        (root / "bus" / "pci" / "devices" / str(address)).mkdir(parents=True)
        (root / "bus" / "pci" / "devices" / str(address) / "numa_node").write_text(f"{node}\n")
    return root


def test_the_hook_maps_nodes_by_pinning_with_this_hosts_sysfs(tmp_path: Path) -> None:
    """Discovery reads the host's CPU -> node map under the sysfs root, like each VF's node."""
    shape = Shape("pinned", backing=(1, 0), vfs=(1, 0), memnode=False)
    vfs = {device.address: device.numa_node or 0 for device in shape.devices()}
    root = sysfs_tree(tmp_path, {0: "0-31\n", 1: "32-63\n"}, vfs)
    settings = HookSettings(
        DiscoveryConfig(devices=tuple(vfs), verify_sysfs="off", sysfs_root=root),
        TransformOptions(numa_placement="strict"),
        guest_addresses={},
    )
    vmi = json.loads(fixture("numa-passthrough-2vf.json"))
    outcome = on_define_domain(shape.xml(), json.dumps(vmi).encode(), {}, settings)
    assert outcome.result is not None
    assert [added.guest_cell for added in outcome.result.added] == [0, 1]
    assert outcome.discovery.host_cpus == TWO_NODES


def test_host_cpu_nodes_are_read_from_a_sysfs_tree(tmp_path: Path) -> None:
    sysfs_tree(tmp_path, {0: "0-3,8", 1: "4-7\n", 3: "", 2000: "9"}, {})
    (tmp_path / "devices" / "system" / "node" / "possible").write_text("0-3\n")
    (tmp_path / "devices" / "system" / "node" / "nodeX").mkdir()
    (tmp_path / "devices" / "system" / "node" / "node4").mkdir()  # no cpulist
    found = sysfs.host_cpu_nodes(tmp_path)
    assert found == {0: 0, 1: 0, 2: 0, 3: 0, 8: 0, 4: 1, 5: 1, 6: 1, 7: 1}
    assert sysfs.host_cpu_nodes(tmp_path / "missing") == {}


def test_host_cpu_nodes_keep_a_cpus_first_node_and_stay_bounded(tmp_path: Path) -> None:
    sysfs_tree(tmp_path, {0: "0-1", 1: "1-2", 2: "0-16383", 3: "0-16383"}, {})
    found = sysfs.host_cpu_nodes(tmp_path)
    assert found[0] == 0 and found[1] == 0 and found[2] == 1
    assert len(found) == 16384
    (tmp_path / "devices" / "system" / "node" / "node0" / "cpulist").write_text("9" * 70000)
    # Read to 64 KiB only, so no cpuset at all: CPU 0 now belongs to the next node naming it.
    assert sysfs.host_cpu_nodes(tmp_path)[0] == 2


# --- libvirt's syntax -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0-3,^2,8", {0, 1, 3, 8}),
        ("^0,0", {0}),  # ^ clears only what was set before it
        ("0,^0", set()),
        (" 5 ", {5}),
        ("2-2", {2}),
        ("0 - 2 , 4", {0, 1, 2, 4}),
        ("01", {1}),
        ("1,", {1}),
        ("1, ", {1}),
        ("1,\u00a0", None),
        ("\u00a01", None),
        ("1\u00a0", None),
        ("1\u00a0-2", None),
        ("1-\u00a02", None),
        ("1-2\u00a0", None),
        (",", None),
        ("1, ,", None),
        ("0," * 20000 + "1", {0, 1}),
        ("3-1", None),
        ("^1-2", None),
        ("^ 1", None),
        ("+1", None),
        ("-1", None),
        (",1", None),
        ("0-99999999", None),
        ("1-" + "9" * 5000, None),
        ("16384", None),
        ("16383", {16383}),
        ("\u0663", None),
        ("a", None),
        ("", None),
        (" ", None),
        (None, None),
        ("1,,2", None),
    ],
)
def test_cpuset_reads_libvirts_syntax_within_bounds(
    text: str | None, expected: set[int] | None
) -> None:
    assert cpuset(text) == (None if expected is None else frozenset(expected))


def test_nodesets_stop_at_the_node_bound() -> None:
    assert cpuset("1023", MAX_NODES) == frozenset({1023})
    assert cpuset("1024", MAX_NODES) is None


def test_a_budget_bounds_what_one_document_expands_to() -> None:
    budget = Budget()
    assert budget.left == MAX_EXPANDED
    assert cpuset("0-16383", budget=budget) is not None
    assert budget.left == MAX_EXPANDED - 16384
    budget.left = 10
    assert cpuset("0-10", budget=budget) is None
    budget = Budget(left=1)
    assert cpuset("5", budget=budget) == frozenset({5}) and budget.left == 0
    assert cpuset("5", budget=budget) is None


@pytest.mark.parametrize(
    ("text", "decimal", "base0"),
    [
        ("0", 0, 0),
        ("7", 7, 7),
        ("010", 10, 8),
        ("0x1f", None, 31),
        ("0X1F", None, 31),
        (" 12", 12, 12),
        ("\t+3", 3, 3),
        ("12 ", None, None),
        ("", None, None),
        ("0x", None, None),
        ("08", 8, None),
        ("-1", None, None),
        ("1_0", None, None),
        ("\u0663", None, None),
        ("\u00a012", None, None),
        ("1234567890", 1234567890, 1234567890),
        ("012345670", 12345670, 2739128),
        ("0xabcdef", None, 11259375),
        ("9" * 5000, None, None),
        ("2147483647", 2147483647, 2147483647),
        ("2147483648", None, None),
        (None, None, None),
    ],
)
def test_numbers_read_as_strtol_reads_them(
    text: str | None, decimal: int | None, base0: int | None
) -> None:
    assert number(text) == decimal
    assert number(text, 0) == base0


# --- when nothing is placed -------------------------------------------------------------------


def test_auto_warns_and_leaves_vfs_without_facts_unplaced() -> None:
    vfs = [HostDevice(VF0, numa_node=None), HostDevice(VF1, numa_node=7)]
    placement = place(
        numa_domain(), [*vfs, HostDevice(PciAddress.parse("3d:01.1"), None, 0)], "auto", TWO_NODES
    )
    assert placement.cells == {PciAddress.parse("3d:01.1"): 0}
    assert placement.warnings == (
        "NUMA placement: VF 0000:3d:01.0 left without NUMA affinity: its host NUMA node is "
        "unknown (sysfs numa_node is -1 or unreadable, and kubelet reported no topology for it)",
        "NUMA placement: VF 0000:b1:01.0 left without NUMA affinity: its host NUMA node 7 "
        "backs no guest NUMA cell (no numatune memnode holds it and no vCPU is pinned only "
        "to its CPUs)",
    )


def test_strict_fails_with_one_line_naming_every_vf() -> None:
    vfs = [HostDevice(VF0, numa_node=None), HostDevice(VF1, numa_node=-1)]
    with pytest.raises(PlacementFailed) as failure:
        place(numa_domain(), vfs, "strict", TWO_NODES)
    assert isinstance(failure.value, PreconditionFailed)
    assert str(failure.value).startswith(
        "strict NUMA placement cannot place VF 0000:3d:01.0: its host NUMA node is unknown"
    )
    assert "; VF 0000:b1:01.0: its host NUMA node is unknown" in str(failure.value)
    assert str(failure.value).endswith(
        "; fix that, or use --numa-placement auto to start the VM without NUMA affinity for the VF"
    )
    assert "\n" not in str(failure.value)


def test_off_and_domains_without_cells_place_nothing() -> None:
    vfs = [HostDevice(VF0, numa_node=0)]
    assert place(numa_domain(), vfs, "off") == Placement()
    plain = etree.fromstring(fixture("kubevirt-hostdevs-1vf.xml"))
    assert place(plain, vfs, "strict") == Placement()
    assert place(numa_domain(), [HostDevice(VF0, PciAddress(0, 9, 0, 0), 0)], "strict") == (
        Placement()
    )


@pytest.mark.parametrize("machine", ["pc-i440fx-7.2", "", None])
def test_machine_without_expander_buses_is_a_missing_fact(machine: str | None) -> None:
    root = numa_domain()
    os_type = root.find("os/type")
    assert os_type is not None
    if machine is None:
        del os_type.attrib["machine"]
    else:
        os_type.set("machine", machine)
    placement = place(root, [HostDevice(VF0, numa_node=0)], "auto")
    shown = repr(machine) if machine else "'unset (pc)'"
    assert placement == Placement(
        warnings=(
            f"NUMA placement: VF 0000:3d:01.0 left without NUMA affinity: machine type {shown} "
            "has no PCIe expander bus; use q35",
        )
    )
    with pytest.raises(PlacementFailed, match="q35"):
        place(root, [HostDevice(VF0, numa_node=0)], "strict")


@pytest.mark.parametrize("machine", ["pc-q35-7.2", "q35", "virt-8.0"])
def test_q35_and_virt_machines_hold_expander_buses(machine: str) -> None:
    root = numa_domain()
    os_type = root.find("os/type")
    assert os_type is not None
    os_type.set("machine", machine)
    assert place(root, [HostDevice(VF0, numa_node=0)], "strict").cells == {VF0: 0}


def test_no_bus_numbers_left_is_reported() -> None:
    root = with_controllers(
        '<controller type="pci" index="9" model="pcie-expander-bus">'
        '<target busNr="12"><node>1</node></target></controller>'
    )
    placement = place(root, [HostDevice(VF0, numa_node=0)], "auto")
    assert placement.controllers == ()
    assert placement.warnings == (
        "NUMA placement: VF 0000:3d:01.0 left without NUMA affinity: no PCI bus numbers are "
        "left below 12 for a new expander bus",
    )


# --- what is already in the domain ---------------------------------------------------------------


def test_operator_guest_addresses_are_kept_free() -> None:
    """A VF with its own guest address is not placed, and no root port takes its bus."""
    operator = HostDevice(VF1, PciAddress(0, 1, 0, 0), numa_node=1)
    placement = place(numa_domain(), [operator, HostDevice(VF0, numa_node=0)], "strict")
    assert VF1 not in placement.guest_addresses
    assert [c.index for c in placement.controllers] == [2, 3]


def test_place_never_changes_the_document() -> None:
    root = numa_domain()
    before = etree.tostring(root)
    place(root, [HostDevice(VF0, numa_node=0), HostDevice(VF1, numa_node=1)], "strict")
    assert etree.tostring(root) == before


def test_kubevirt_expander_bus_with_room_is_reused() -> None:
    shape = Shape("room", backing=(0, 1), vfs=(1,), kubevirt_devices=(0, 1), kubevirt_room=1)
    root = etree.fromstring(shape.xml())
    kubevirt = {
        e.findtext("target/node"): int(str(e.get("index")))
        for e in root.iterfind("devices/controller[@model='pcie-expander-bus']")
    }
    (port,) = place(root, shape.devices(), "strict").controllers
    assert isinstance(port, RootPort)
    assert (port.bus, port.slot) == (kubevirt["1"], 1)  # KubeVirt's own root port holds slot 0


def test_full_kubevirt_expander_bus_gets_a_new_one_below_it() -> None:
    """KubeVirt sizes each bus range exactly: a new bus for the cell, numbered below all."""
    shape = Shape("tight", backing=(0, 1), vfs=(0,), kubevirt_devices=(0, 1))
    root = etree.fromstring(shape.xml())
    numbers = [int(str(e.get("busNr"))) for e in root.iterfind("devices/controller/target")]
    expander, port = place(root, shape.devices(), "strict").controllers
    assert expander == ExpanderBus(index=5, bus_nr=min(numbers) - 2, cell=0)
    assert isinstance(port, RootPort) and port.bus == 5


NESTED = (
    '<controller type="pci" index="1" model="pcie-expander-bus">'
    '<target busNr="250"><node>1</node></target></controller>'
    + "".join(
        f'<controller type="pci" index="{index}" model="{model}">'
        f'<address type="pci" domain="0x0000" bus="{parent}" slot="0x0{slot}" function="0x0"/>'
        "</controller>"
        for index, model, parent, slot in (
            (2, "pcie-root-port", 1, 0),
            (3, "pcie-switch-upstream-port", 2, 0),
            (4, "pcie-switch-downstream-port", 3, 0),
            (5, "pcie-switch-downstream-port", 3, 1),
        )
    )
    # A hostile cycle: two controllers naming each other as their bus.
    + "".join(
        f'<controller type="pci" index="{index}" model="pci-bridge">'
        f'<address type="pci" bus="{other}"/></controller>'
        for index, other in ((7, 8), (8, 7))
    )
)


@pytest.mark.parametrize("written_by_libvirt", [False, True])
@pytest.mark.parametrize(("vfs", "reused"), [(1, True), (2, False)])
def test_bus_room_counts_every_controller_nested_under_the_expander(
    vfs: int, reused: bool, written_by_libvirt: bool
) -> None:
    """busNr 250 leaves 250..255: the bus, four nested controllers, room for one more.

    libvirt writes model and target before address: each child is found by its tag.
    """
    markup = NESTED
    if written_by_libvirt:
        markup = NESTED.replace('">' + "<address", '"><model name="x"/><target/><address')
    devices = [HostDevice(PciAddress(0, 0x3D, 1, f), numa_node=1) for f in range(vfs)]
    found = place(with_controllers(markup), devices, "strict").controllers
    if reused:
        assert found == (RootPort(index=9, chassis=9, bus=1, slot=1),)
    else:
        assert found[0] == ExpanderBus(index=9, bus_nr=250 - 1 - vfs, cell=1)


def test_host_node_backing_two_cells_goes_to_the_lowest() -> None:
    root = numa_domain()
    memnode = root.find("numatune/memnode[@cellid='1']")
    assert memnode is not None
    memnode.set("nodeset", "0-1")  # cell 1 also draws memory from host node 0
    assert place(root, [HostDevice(VF0, numa_node=0)], "strict").cells == {VF0: 0}


def test_a_nodeset_is_read_in_order() -> None:
    """``^1,1`` names node 1, as libvirt reads it: cell 1 is backed by node 1."""
    root = numa_domain()
    memnode = root.find("numatune/memnode[@cellid='1']")
    assert memnode is not None
    memnode.set("nodeset", "^1,1")
    assert place(root, [HostDevice(VF0, numa_node=1)], "strict").cells == {VF0: 1}
    memnode.set("nodeset", "1,^1")  # no node at all: the pinning still says cell 1
    assert place(root, [HostDevice(VF0, numa_node=1)], "strict", TWO_NODES).cells == {VF0: 1}
    assert place(root, [HostDevice(VF0, numa_node=1)], "auto").cells == {}


def test_pinning_counts_only_vcpus_pinned_wholly_to_the_node() -> None:
    """A vCPU floating over both host nodes says nothing about either."""
    shape = Shape("floating", backing=(1, 0), vfs=(1,), memnode=False)
    root = etree.fromstring(shape.xml())
    for pin in root.iterfind("cputune/vcpupin"):
        if pin.get("vcpu") in ("0", "1"):  # cell 0: pinned to node 1 and node 0 CPUs
            pin.set("cpuset", "0-63")
    placement = place(root, shape.devices(), "auto", shape.host_cpus())
    assert placement.cells == {}
    assert "node 1 backs no guest NUMA cell" in placement.warnings[0]


def test_pinning_ties_go_to_the_lowest_cell() -> None:
    shape = Shape("both", backing=(1, 1), vfs=(1,), memnode=False)
    placement = place(etree.fromstring(shape.xml()), shape.devices(), "strict", shape.host_cpus())
    assert list(placement.cells.values()) == [0]


def test_cells_without_an_id_are_numbered_by_position() -> None:
    root = numa_domain()
    for cell in root.iterfind("cpu/numa/cell"):
        del cell.attrib["id"]
    assert place(root, [HostDevice(VF0, numa_node=1)], "strict").cells == {VF0: 1}


def test_cpusets_of_one_document_expand_within_a_budget() -> None:
    """Thousands of vcpupins each naming every CPU: past the budget they are ignored."""
    shape = Shape("pinned", backing=(1, 0), vfs=(1,), memnode=False)
    root = etree.fromstring(shape.xml())
    cputune = root.find("cputune")
    assert cputune is not None
    for vcpu in range(64, 64 + 200):
        etree.SubElement(cputune, "vcpupin", {"vcpu": str(vcpu), "cpuset": "0-16383"})
    placement = place(root, shape.devices(), "auto", shape.host_cpus())
    # The real pins come first and are read; the flood runs out of budget and is dropped,
    # so it neither hangs nor moves the VF off the cell its node backs.
    assert placement.cells == {shape.devices()[0].address: 0}


def test_a_bus_named_by_a_device_address_is_not_reused_as_an_index() -> None:
    """libvirt adds a controller for bus 0x01 named by a device: index 1 is taken."""
    root = numa_domain()
    disk = root.find("devices/disk")
    assert disk is not None
    etree.SubElement(
        disk, "address", {"type": "pci", "domain": "0x0000", "bus": "0x01", "slot": "0x00"}
    )
    found = place(root, [HostDevice(VF0, numa_node=0)], "strict").controllers
    assert [c.index for c in found] == [2, 3]


def test_reuse_keeps_new_indexes_below_every_bus_number() -> None:
    """An expander numbered 10 with index 9 taken: a root port indexed 10 would collide."""
    root = with_controllers(
        '<controller type="pci" index="9" model="pcie-expander-bus">'
        '<target busNr="10"><node>1</node></target></controller>'
    )
    placement = place(root, [HostDevice(VF1, numa_node=1)], "auto")
    assert placement.controllers == () and "bus numbers" in placement.warnings[0]


def test_namespaced_and_non_pci_controllers_are_not_libvirts() -> None:
    """libvirt reads ``./devices/controller`` of type pci only, in no namespace."""
    root = with_controllers(
        '<q:controller xmlns:q="urn:q" type="pci" index="200" model="pcie-expander-bus">'
        '<q:target busNr="10"><q:node>0</q:node></q:target></q:controller>'
        '<controller type="usb" index="201" model="pcie-expander-bus">'
        '<target busNr="12"><node>0</node></target></controller>'
    )
    expander, _ = place(root, [HostDevice(VF0, numa_node=0)], "auto").controllers
    assert expander == ExpanderBus(index=1, bus_nr=254, cell=0)  # not below the ignored ones


# --- chassis numbers: QEMU refuses two ports on one chassis ------------------------------------


def test_a_new_root_port_avoids_a_chassis_written_out() -> None:
    root = with_controllers(
        '<controller type="pci" index="1" model="pcie-root-port"><target chassis="3"/></controller>'
    )
    port = place(root, [HostDevice(VF0, numa_node=0)], "strict").controllers[-1]
    # Its own index (3) is taken: the highest free number, which libvirt never gives a port
    # it adds itself (those take their index, and indexes stay below the bus numbers).
    assert port == RootPort(index=3, chassis=255, bus=2, slot=0)


def test_a_new_root_port_avoids_a_chassis_an_existing_port_has_implicitly() -> None:
    """libvirt gives a port without ``chassis`` its index: that number is taken too.

    Ports 1..3 without chassis hold 1..3; the port at index 4 spells chassis 5, so the
    new port's own index (5) is taken and the lowest free number is 4.
    """
    root = with_controllers(
        "".join(
            f'<controller type="pci" index="{index}" model="pcie-root-port"/>'
            for index in (1, 2, 3)
        )
        + '<controller type="pci" index="4" model="pcie-root-port">'
        '<target chassis="0x05"/></controller>'
    )
    expander, port = place(root, [HostDevice(VF0, numa_node=0)], "strict").controllers
    assert expander.index == 5
    assert port == RootPort(index=6, chassis=6, bus=5, slot=0)
    root = with_controllers(
        "".join(
            f'<controller type="pci" index="{index}" model="pcie-root-port">'
            f'<target chassis="{chassis}"/></controller>'
            for index, chassis in ((1, "6"), (2, "010"))
        )
        + '<controller type="pci" index="3" model="pcie-root-port"/>'
    )
    # Taken: 6, 010 (octal 8, as libvirt reads it), 3; the new port's index 5 is free.
    ports = [c for c in place(root, [HostDevice(VF0, numa_node=0)], "strict").controllers]
    assert ports[-1] == RootPort(index=5, chassis=5, bus=4, slot=0)


def test_two_new_ports_never_share_a_chassis() -> None:
    taken = "".join(
        f'<controller type="pci" index="{index}" model="pcie-root-port">'
        f'<target chassis="{chassis}"/></controller>'
        for index, chassis in ((1, 5), (2, 6), (3, 1))
    )
    vfs = [HostDevice(PciAddress(0, 0x3D, 1, f), numa_node=0) for f in range(3)]
    ports = [c for c in place(with_controllers(taken), vfs, "strict").controllers]
    assert [(p.index, getattr(p, "chassis", None)) for p in ports] == [
        (4, None),
        (5, 255),
        (6, 254),
        (7, 7),
    ]


def test_a_chassis_is_found_among_many_taken() -> None:
    taken = "".join(
        f'<controller type="pci" index="{index}" model="pcie-root-port"/>'
        for index in range(1, 160)
    ) + "".join(
        f'<controller type="pci" index="{index}" model="pcie-root-port">'
        f'<target chassis="{index - 159}"/></controller>'
        for index in range(160, 200)
    )
    placement = place(with_controllers(taken), [HostDevice(VF0, numa_node=0)], "auto")
    # 1..159 are chassis of existing ports (implicit or written); the new port's 201 is free.
    assert placement.controllers[-1] == RootPort(index=201, chassis=201, bus=200, slot=0)


# --- through the transform -----------------------------------------------------------------------


def test_transform_output_again_adds_and_moves_nothing() -> None:
    vfs = [HostDevice(VF0, numa_node=0), HostDevice(VF1, numa_node=1)]
    options = TransformOptions(numa_placement="strict")
    once = transform(fixture("numa-passthrough-2vf.xml"), vfs, options)
    again = transform(once.xml, vfs, options)
    assert again.xml == once.xml
    assert again.added == () and set(again.already_present) == {VF0, VF1}


def test_transform_writes_the_placement() -> None:
    vfs = [HostDevice(VF0, numa_node=1)]
    result = transform(fixture("numa-passthrough-2vf.xml"), vfs, TransformOptions())
    root = etree.fromstring(result.xml)
    hostdev = root.find("devices/hostdev/alias[@name='ua-qat-0']/..")
    assert hostdev is not None
    address = hostdev.find("address")
    assert address is not None and address.get("bus") == "0x02"
    port = root.find("devices/controller[@index='2']")
    assert port is not None and port.get("model") == "pcie-root-port"
    assert root.findtext("devices/controller[@index='1']/target/node") == "1"
    assert result.added[0].guest_cell == 1


def test_transform_keeps_an_operator_address_apart_from_placed_vfs() -> None:
    """The transform hands place() every wanted VF, so an operator's address stays free.

    Given only the VFs without an address, place() would put a root port on the very bus
    the operator named and libvirt refuses "double use of PCI Address".
    """
    guest = PciAddress(0, 2, 0, 0)  # what placement gives the first new root port
    vfs = [HostDevice(VF1, guest, numa_node=1), HostDevice(VF0, numa_node=0)]
    result = transform(fixture("numa-passthrough-2vf.xml"), vfs, TransformOptions())
    addresses = [device.guest_address for device in result.added]
    assert addresses[0] == guest
    assert addresses[1] is not None and addresses[1] != guest
    assert result.added[1].guest_cell == 0


def test_auto_places_the_vfs_it_can_and_leaves_the_others() -> None:
    """A VF without a host node beside one with: the one is placed, the other warned about."""
    result = transform(
        fixture("numa-passthrough-2vf.xml"),
        [HostDevice(VF0, numa_node=0), HostDevice(VF1)],
        TransformOptions(numa_placement="auto"),
    )
    placed, unplaced = result.added
    assert placed.guest_cell == 0 and placed.guest_address is not None
    assert unplaced.guest_cell is None and unplaced.guest_address is None
    assert len(result.warnings) == 1 and str(VF1) in result.warnings[0]


def test_the_host_cpu_map_reaches_placement_through_the_transform() -> None:
    shape = Shape("pinned", backing=(1, 0), vfs=(1,), memnode=False)
    options = TransformOptions(numa_placement="auto")
    assert (
        transform(shape.xml(), shape.devices(), options, shape.host_cpus()).added[0].guest_cell == 0
    )
    assert transform(shape.xml(), shape.devices(), options).added[0].guest_cell is None


def test_calls_from_many_threads_place_alike() -> None:
    data = fixture("numa-passthrough-2vf.xml")
    devices = [HostDevice(VF0, numa_node=0), HostDevice(VF1, numa_node=1)]
    here = transform(data, devices)
    there: list[object] = []
    threads = [
        threading.Thread(target=lambda: there.append(transform(data, devices))) for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert there == [here] * 3


# --- controllers as libvirt writes them, and the edges of a bus ------------------------------


def test_an_expander_is_read_in_libvirts_child_order_and_number_bases() -> None:
    """libvirt writes <model> before <target>; busNr is read as C reads it (0x0c is 12)."""
    root = with_controllers(
        '<controller type="pci" index="9" model="pcie-expander-bus"><model name="pxb-pcie"/>'
        '<target busNr="0x0c"><!-- KubeVirt --><node>1</node></target></controller>'
    )
    placement = place(root, [HostDevice(VF0, numa_node=0)], "auto")
    assert placement.warnings == (
        "NUMA placement: VF 0000:3d:01.0 left without NUMA affinity: no PCI bus numbers are "
        "left below 12 for a new expander bus",
    )


def test_an_expanders_guest_node_is_read_past_a_comment() -> None:
    root = with_controllers(
        '<controller type="pci" index="1" model="pcie-expander-bus">'
        '<target busNr="200"><!-- cell --><node>1</node></target></controller>'
    )
    assert place(root, [HostDevice(VF1, numa_node=1)], "strict").controllers == (
        RootPort(index=2, chassis=2, bus=1, slot=0),
    )


def test_a_lower_expander_has_room_only_up_to_the_next_one() -> None:
    """KubeVirt's tight ranges: cell 1's bus ends where cell 0's begins, so it is full."""
    shape = Shape("tight", backing=(0, 1), vfs=(1,), kubevirt_devices=(0, 1))
    expander, _ = place(etree.fromstring(shape.xml()), shape.devices(), "strict").controllers
    assert isinstance(expander, ExpanderBus) and expander.cell == 1


def test_a_bus_takes_32_root_ports_in_slots_0_to_31() -> None:
    vfs = [HostDevice(PciAddress(0, 0x3D, slot, 0), numa_node=0) for slot in range(32)]
    placement = place(numa_domain(), vfs, "strict")
    ports = [c for c in placement.controllers if isinstance(c, RootPort)]
    assert [p.slot for p in ports] == list(range(32))
    assert len(placement.guest_addresses) == 32 and len(placement.controllers) == 33


def test_a_bus_with_slot_0_taken_is_not_reused_for_32_vfs() -> None:
    root = with_controllers(
        '<controller type="pci" index="1" model="pcie-expander-bus">'
        '<target busNr="200"><node>0</node></target></controller>'
        '<controller type="pci" index="2" model="pcie-root-port">'
        '<address type="pci" domain="0x0000" bus="0x01" slot="0x00" function="0x0"/></controller>'
    )
    vfs = [HostDevice(PciAddress(0, 0x3D, slot, 0), numa_node=0) for slot in range(32)]
    controllers = place(root, vfs, "strict").controllers
    assert controllers[0] == ExpanderBus(index=3, bus_nr=167, cell=0)
    assert max(c.slot for c in controllers if isinstance(c, RootPort)) == 31


def test_the_highest_free_chassis_skips_every_taken_number() -> None:
    """The new port's index (5) is spelled out by another port, and so are 255 and 253."""
    root = with_controllers(
        "".join(
            f'<controller type="pci" index="{index}" model="pcie-root-port">'
            f'<target chassis="{chassis}"/></controller>'
            for index, chassis in ((1, "5"), (2, "0xff"), (3, "253"))
        )
    )
    port = place(root, [HostDevice(VF0, numa_node=0)], "strict").controllers[-1]
    assert port == RootPort(index=5, chassis=254, bus=4, slot=0)


def test_a_chassis_spelled_in_octal_is_the_number_libvirt_reads() -> None:
    """``010`` is chassis 8 (C's base-0 reading), the index the new port gets."""
    root = with_controllers(
        "".join(
            f'<controller type="pci" index="{index}" model="pcie-root-port"/>'
            for index in range(1, 6)
        )
        + '<controller type="pci" index="6" model="pcie-root-port"><target chassis="010"/>'
        "</controller>"
    )
    port = place(root, [HostDevice(VF0, numa_node=0)], "strict").controllers[-1]
    assert port == RootPort(index=8, chassis=255, bus=7, slot=0)


@pytest.mark.parametrize(("vfs", "reused"), [(31, True), (32, False)])
def test_a_bus_with_slot_0_taken_takes_31_more(vfs: int, reused: bool) -> None:
    root = with_controllers(
        '<controller type="pci" index="1" model="pcie-expander-bus">'
        '<target busNr="200"><node>0</node></target></controller>'
        '<controller type="pci" index="2" model="pcie-root-port">'
        '<address type="pci" domain="0x0000" bus="0x01" slot="0x00" function="0x0"/></controller>'
    )
    devices = [HostDevice(PciAddress(0, 0x3D, slot, 0), numa_node=0) for slot in range(vfs)]
    buses = {c.bus for c in place(root, devices, "strict").controllers if isinstance(c, RootPort)}
    assert (buses == {1}) is reused


def test_only_pci_addresses_in_pci_domain_0_name_a_bus() -> None:
    """A bus in another PCI domain, or an address of another type, takes no index here."""
    root = numa_domain()
    disk = root.find("devices/disk")
    assert disk is not None
    etree.SubElement(
        disk, "address", {"type": "pci", "domain": "0x0001", "bus": "0x01", "slot": "0x00"}
    )
    interface = root.find("devices/interface")
    assert interface is not None
    etree.SubElement(interface, "address", {"type": "drive", "bus": "2"})
    found = place(root, [HostDevice(VF0, numa_node=0)], "strict").controllers
    assert [c.index for c in found] == [1, 2]
    disk.find("address").attrib.pop("domain")  # type: ignore[union-attr]
    found = place(root, [HostDevice(VF0, numa_node=0)], "strict").controllers
    assert [c.index for c in found] == [2, 3]  # no domain attribute: domain 0


def test_controllers_outside_devices_are_not_libvirts() -> None:
    root = numa_domain()
    metadata = root.find("metadata")
    assert metadata is not None
    metadata.append(
        etree.fromstring(
            '<controller type="pci" index="40" model="pcie-expander-bus">'
            '<target busNr="100"><node>0</node></target></controller>'
        )
    )
    expander, _ = place(root, [HostDevice(VF0, numa_node=0)], "strict").controllers
    assert expander == ExpanderBus(index=1, bus_nr=254, cell=0)


def test_an_operator_slot_on_a_reused_bus_stays_free() -> None:
    root = with_controllers(
        '<controller type="pci" index="1" model="pcie-expander-bus">'
        '<target busNr="200"><node>0</node></target></controller>'
    )
    operator = HostDevice(VF1, PciAddress(0, 1, 0, 0), numa_node=0)
    found = place(root, [operator, HostDevice(VF0, numa_node=0)], "strict").controllers
    assert found == (RootPort(index=2, chassis=2, bus=1, slot=1),)


# --- many VFs, few bus numbers ----------------------------------------------------------------


def test_33_vfs_of_one_cell_get_two_expander_buses() -> None:
    vfs = [
        HostDevice(PciAddress(0, 0x3D, slot, f), numa_node=0)
        for slot in range(5)
        for f in (0, 1, 2, 3, 4, 5, 6)
    ][:33]
    controllers = place(numa_domain(), vfs, "strict").controllers
    expanders = [c for c in controllers if isinstance(c, ExpanderBus)]
    assert expanders == [ExpanderBus(1, 223, 0), ExpanderBus(2, 221, 0)]
    assert [c.slot for c in controllers if isinstance(c, RootPort) and c.bus == 2] == [0]


@pytest.mark.parametrize(("bus_nr", "placed"), [(13, False), (14, True)])
def test_a_new_expander_needs_its_bus_numbers_above_every_index(bus_nr: int, placed: bool) -> None:
    """Index 9 taken: a new expander (index 10, root port 11) needs buses 12 and 13 free."""
    root = with_controllers(
        '<controller type="pci" index="9" model="pcie-expander-bus">'
        f'<target busNr="{bus_nr}"><node>1</node></target></controller>'
    )
    placement = place(root, [HostDevice(VF0, numa_node=0)], "auto")
    assert (placement.cells == {VF0: 0}) is placed
    if placed:
        assert placement.controllers[0] == ExpanderBus(index=10, bus_nr=12, cell=0)


def test_a_chunk_that_fits_is_placed_after_one_that_does_not() -> None:
    root = with_controllers(
        '<controller type="pci" index="9" model="pcie-expander-bus">'
        '<target busNr="20"><node>1</node></target></controller>'
    )
    vfs = [HostDevice(PciAddress(0, 0x3D + f // 8, f % 8, 0), numa_node=0) for f in range(33)]
    placement = place(root, vfs, "auto")
    assert list(placement.cells) == [vfs[32].address]
    assert len(placement.warnings) == 32


# --- what libvirt reads of the guest NUMA facts, and what it does not -------------------------


def flooded(where: str) -> etree._Element:
    """A pinning-only domain whose cpusets exhaust the budget before the real facts."""
    shape = Shape("pinned", backing=(1, 0), vfs=(1,), memnode=False)
    root = etree.fromstring(shape.xml())
    if where == "cells":
        numa = root.find("cpu/numa")
        assert numa is not None
        for ident in range(2, 20):
            etree.SubElement(numa, "cell", {"id": str(ident), "cpus": "0-16383"})
        numatune = root.find("numatune")
        assert numatune is not None
        etree.SubElement(numatune, "memnode", {"cellid": "0", "nodeset": "1"})
    elif where == "memnodes":
        numatune = root.find("numatune")
        assert numatune is not None
        for _ in range(300):
            etree.SubElement(numatune, "memnode", {"cellid": "99", "nodeset": "0-1023"})
    else:
        cputune = root.find("cputune")
        assert cputune is not None
        for vcpu in range(100, 120):
            cputune.insert(0, etree.Element("vcpupin", {"vcpu": str(vcpu), "cpuset": "0-16383"}))
    return root


@pytest.mark.parametrize("where", ["cells", "memnodes", "pins"])
def test_facts_past_the_budget_are_not_read(where: str) -> None:
    """Cells, then memnodes, then pins share one budget: past it, the rest are ignored."""
    shape = Shape("pinned", backing=(1, 0), vfs=(1,), memnode=False)
    placement = place(flooded(where), shape.devices(), "auto", shape.host_cpus())
    assert placement.cells == {}
    assert "backs no guest NUMA cell" in placement.warnings[0]


def test_numa_facts_elsewhere_in_the_domain_are_not_libvirts() -> None:
    plain = etree.fromstring(fixture("kubevirt-hostdevs-1vf.xml"))
    plain.append(etree.fromstring('<metadata><numa><cell id="0" cpus="0"/></numa></metadata>'))
    assert place(plain, [HostDevice(VF0, numa_node=0)], "strict") == Placement()
    root = numa_domain()
    numatune, cputune = root.find("numatune"), root.find("cputune")
    assert numatune is not None and cputune is not None
    etree.SubElement(numatune, "memnodex", {"cellid": "0", "nodeset": "1"})
    assert place(root, [HostDevice(VF1, numa_node=1)], "strict").cells == {VF1: 1}
    for memnode in root.findall("numatune/memnode"):
        numatune.remove(memnode)
    # vCPUs 0 and 1 (cell 0) are pinned to node 0; these would pin them to node 1 (a tie,
    # so cell 0) if read as vcpupins.
    for vcpu, cpu in ((0, 40), (1, 41)):
        etree.SubElement(cputune, "emulatorpin", {"vcpu": str(vcpu), "cpuset": str(cpu)})
    root.append(
        etree.fromstring(
            '<metadata><vcpupin vcpu="0" cpuset="40"/><vcpupin vcpu="1" cpuset="41"/></metadata>'
        )
    )
    assert place(root, [HostDevice(VF1, numa_node=1)], "strict", TWO_NODES).cells == {VF1: 1}


def test_cell_ids_are_read_not_their_positions() -> None:
    """Cell 1 written first: its vCPUs 0-1 are pinned to node 1, so a node-1 VF goes to cell 1."""
    shape = Shape("pinned", backing=(1, 0), vfs=(1,), memnode=False)
    root = etree.fromstring(shape.xml())
    cells = root.findall("cpu/numa/cell")
    cells[0].set("id", "1")
    cells[1].set("id", "0")
    placement = place(root, shape.devices(), "strict", shape.host_cpus())
    assert placement.cells == {shape.devices()[0].address: 1}


def test_a_memnode_for_a_cell_that_does_not_exist_is_ignored() -> None:
    root = numa_domain()
    memnode = root.find("numatune/memnode[@cellid='1']")
    assert memnode is not None
    memnode.set("cellid", "7")  # cell 1 is now mapped by its pinning (node 1 CPUs) alone
    assert place(root, [HostDevice(VF1, numa_node=1)], "strict", TWO_NODES).cells == {VF1: 1}


@pytest.mark.parametrize(
    "os", ["", "<os/>", "<os><loader/></os>", '<os><loader/><type machine="q35">hvm</type></os>']
)
def test_the_machine_type_is_os_type_machine(os: str) -> None:
    root = numa_domain()
    for old in root.findall("os"):
        root.remove(old)
    if os:
        root.insert(3, etree.fromstring(os))
    placement = place(root, [HostDevice(VF0, numa_node=0)], "auto")
    assert (placement.cells == {VF0: 0}) is ("q35" in os)


# --- the host's CPU -> node map, bounded ---------------------------------------------------------


def test_host_cpu_nodes_read_only_numbered_node_directories(tmp_path: Path) -> None:
    sysfs_tree(tmp_path, {0: "0", 1024: "10", 5: "5\n"}, {})
    for name, cpus in (("abcd7", "9"), ("node4", None), ("node6", "6\xff"), ("node7", "7")):
        (tmp_path / "devices" / "system" / "node" / name).mkdir()
        if cpus is not None:
            (tmp_path / "devices" / "system" / "node" / name / "cpulist").write_bytes(
                cpus.encode("latin-1")
            )
    assert sysfs.host_cpu_nodes(tmp_path) == {0: 0, 5: 5, 7: 7}


def test_host_cpu_nodes_read_64_kib_of_each_list(tmp_path: Path) -> None:
    sysfs_tree(tmp_path, {0: "0," * 32768 + "5", 1: "1"}, {})
    assert sysfs.host_cpu_nodes(tmp_path) == {0: 0, 1: 1}


def test_host_cpu_nodes_share_one_budget(tmp_path: Path) -> None:
    """17 lists of nearly every CPU exhaust it: node9 (sorted last) is not read."""
    sysfs_tree(tmp_path, {node: "0-16382" for node in range(10, 27)} | {9: "16383"}, {})
    found = sysfs.host_cpu_nodes(tmp_path)
    assert 16383 not in found and found[0] == 10


def test_controllers_below_an_expander_are_counted_in_any_order() -> None:
    """Root ports written before their expander, a bridge on a bus no controller makes.

    busNr 250 leaves 250..255: the bus, four ports, room for one more root port.
    """
    ports = "".join(
        f'<controller type="pci" index="{index}" model="pcie-root-port">'
        f'<address type="pci" domain="0x0000" bus="0x09" slot="0x0{index}" function="0x0"/>'
        "</controller>"
        for index in (2, 3, 4, 5)
    )
    root = with_controllers(
        ports + '<controller type="pci" index="6" model="pci-bridge">'
        '<address type="pci" domain="0x0000" bus="0x20" slot="0x00" function="0x0"/></controller>'
        '<controller type="pci" index="9" model="pcie-expander-bus">'
        '<target busNr="250"><node>1</node></target></controller>'
    )
    one = place(root, [HostDevice(VF1, numa_node=1)], "strict").controllers
    assert [(c.index, getattr(c, "bus", None)) for c in one] == [(33, 9)]
    two = [HostDevice(PciAddress(0, 0xB1, 1, f), numa_node=1) for f in range(2)]
    assert isinstance(place(root, two, "strict").controllers[0], ExpanderBus)


def test_cells_are_read_past_interconnects_and_comments() -> None:
    """libvirt's <numa> also holds <interconnects> (latencies, bandwidths); neither it nor a
    comment is a cell, nor takes a cell's place in the numbering."""
    shape = Shape("pinned", backing=(1, 0, 2), vfs=(0, 2, 1), memnode=False)
    root = etree.fromstring(shape.xml())
    numa = root.find("cpu/numa")
    assert numa is not None
    numa.insert(0, etree.Comment(" cells follow "))
    numa.append(
        etree.fromstring(
            '<interconnects><latency initiator="0" target="1" type="access" value="5"/>'
            "</interconnects>"
        )
    )
    placement = place(root, shape.devices(), "strict", shape.host_cpus())
    assert [placement.cells[d.address] for d in shape.devices()] == [1, 2, 0]
