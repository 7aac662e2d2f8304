"""Guest NUMA placement: the decisions ``numa.place`` makes, read off the parsed domain.

What real libvirt makes of the result (pxb-pcie, root ports, vfio-pci, bus
ranges) is checked in test_libvirt.py; these tests pin each decision.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from lxml import etree

from hook_sidecar import numa
from hook_sidecar.errors import PreconditionFailed
from hook_sidecar.hostdevs import HostDevice, TransformOptions
from hook_sidecar.numa import PlacementFailed, cpuset, place, read_host_cpu_nodes
from hook_sidecar.pci import PciAddress
from hook_sidecar.transform import transform
from tests.libvirt_shapes import Shape, fixture

VF0 = PciAddress.parse("3d:01.0")
VF1 = PciAddress.parse("b1:01.0")
TWO_NODES = {cpu: cpu // 32 for cpu in range(64)}  # the fixture's host


def numa_domain() -> etree._Element:
    return etree.fromstring(fixture("numa-passthrough-2vf.xml"))


def controllers(placement: numa.Placement) -> list[dict[str, str | None]]:
    """Each new controller as the facts libvirt reads from it."""
    found = []
    for element in placement.controllers:
        target = element.find("target")
        address = element.find("address")
        found.append(
            {
                "index": element.get("index"),
                "model": element.get("model"),
                "busNr": target.get("busNr") if target is not None else None,
                "node": target.findtext("node") if target is not None else None,
                "bus": address.get("bus") if address is not None else None,
                "slot": address.get("slot") if address is not None else None,
            }
        )
    return found


def test_each_vf_gets_a_root_port_on_its_cells_expander_bus() -> None:
    placement = place(
        numa_domain(), [HostDevice(VF0, numa_node=0), HostDevice(VF1, numa_node=1)], "strict"
    )
    assert controllers(placement) == [
        {"index": "1", "model": "pcie-expander-bus", "busNr": "254", "node": "0"}
        | {"bus": None, "slot": None},
        {"index": "2", "model": "pcie-root-port", "busNr": None, "node": None}
        | {"bus": "0x01", "slot": "0x00"},
        {"index": "3", "model": "pcie-expander-bus", "busNr": "252", "node": "1"}
        | {"bus": None, "slot": None},
        {"index": "4", "model": "pcie-root-port", "busNr": None, "node": None}
        | {"bus": "0x03", "slot": "0x00"},
    ]
    assert placement.guest_addresses == {VF0: PciAddress(0, 2, 0, 0), VF1: PciAddress(0, 4, 0, 0)}
    assert placement.cells == {VF0: 0, VF1: 1}
    assert placement.warnings == ()


def test_controllers_are_written_in_libvirts_namespace_less_form() -> None:
    placement = place(numa_domain(), [HostDevice(VF0, numa_node=0)], "auto")
    written = [etree.tostring(element).decode() for element in placement.controllers]
    assert written == [
        '<controller type="pci" index="1" model="pcie-expander-bus"><model name="pxb-pcie"/>'
        '<target busNr="254"><node>0</node></target></controller>',
        '<controller type="pci" index="2" model="pcie-root-port"><model name="pcie-root-port"/>'
        '<target chassis="2" port="0x0"/><address type="pci" domain="0x0000" bus="0x01" '
        'slot="0x00" function="0x0"/></controller>',
    ]


def test_vfs_of_one_cell_share_its_expander_bus() -> None:
    vfs = [HostDevice(VF0, numa_node=1), HostDevice(VF1, numa_node=1)]
    found = controllers(place(numa_domain(), vfs, "strict"))
    assert [c["model"] for c in found] == ["pcie-expander-bus", "pcie-root-port", "pcie-root-port"]
    assert found[0]["busNr"] == "253"  # the bus itself and one bus per root port: 253..255
    assert [(c["bus"], c["slot"]) for c in found[1:]] == [("0x01", "0x00"), ("0x01", "0x01")]


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


def test_pinning_fallback_reads_this_hosts_sysfs_by_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    shape = Shape("pinned", backing=(1, 0), vfs=(1,), memnode=False)
    asked: list[bool] = []

    def fake_sysfs() -> dict[int, int]:  # stands in for a two-node host's sysfs
        asked.append(True)
        return shape.host_cpus()

    monkeypatch.setattr(numa, "read_host_cpu_nodes", fake_sysfs)
    placement = place(etree.fromstring(shape.xml()), shape.devices(), "strict")
    assert asked == [True]
    assert list(placement.cells.values()) == [0]


def test_memnode_mapping_does_not_read_sysfs(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse() -> dict[int, int]:
        raise AssertionError("sysfs read although the memnode mapping answers")

    monkeypatch.setattr(numa, "read_host_cpu_nodes", refuse)
    assert place(numa_domain(), [HostDevice(VF0, numa_node=1)], "strict").cells == {VF0: 1}


def test_read_host_cpu_nodes_from_a_sysfs_tree(tmp_path: Path) -> None:
    base = tmp_path / "devices" / "system" / "node"
    for node, cpus in ((0, "0-3,8"), (1, "4-7\n"), (3, "")):
        (base / f"node{node}").mkdir(parents=True)
        (base / f"node{node}" / "cpulist").write_text(cpus)
    (base / "possible").write_text("0-3\n")
    assert read_host_cpu_nodes(tmp_path) == {0: 0, 1: 0, 2: 0, 3: 0, 8: 0, 4: 1, 5: 1, 6: 1, 7: 1}
    assert read_host_cpu_nodes(tmp_path / "missing") == {}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0-3,^2,8", {0, 1, 3, 8}),
        (" 5 ", {5}),
        ("2-2", {2}),
        ("3-1", None),
        ("0-99999999", None),
        ("16384", None),
        ("a", None),
        ("", None),
        ("1,,2", None),
    ],
)
def test_cpuset_reads_libvirts_syntax_within_bounds(text: str, expected: set[int] | None) -> None:
    assert cpuset(text) == (None if expected is None else frozenset(expected))


def test_auto_warns_and_leaves_vfs_without_facts_unplaced() -> None:
    vfs = [HostDevice(VF0, numa_node=None), HostDevice(VF1, numa_node=7)]
    placement = place(
        numa_domain(), [*vfs, HostDevice(PciAddress.parse("3d:01.1"), None, 0)], "auto", TWO_NODES
    )
    assert placement.cells == {PciAddress.parse("3d:01.1"): 0}
    assert len(placement.warnings) == 2
    assert "0000:3d:01.0" in placement.warnings[0] and "unknown" in placement.warnings[0]
    assert "0000:b1:01.0" in placement.warnings[1] and "node 7" in placement.warnings[1]


def test_strict_fails_with_one_line_naming_every_vf() -> None:
    vfs = [HostDevice(VF0, numa_node=None), HostDevice(VF1, numa_node=7)]
    with pytest.raises(PlacementFailed) as failure:
        place(numa_domain(), vfs, "strict", TWO_NODES)
    message = str(failure.value)
    assert isinstance(failure.value, PreconditionFailed)
    assert "\n" not in message
    assert "0000:3d:01.0" in message and "0000:b1:01.0" in message
    assert "--numa-placement auto" in message


def test_off_and_domains_without_cells_place_nothing() -> None:
    vfs = [HostDevice(VF0, numa_node=0)]
    assert place(numa_domain(), vfs, "off") == numa.Placement()
    plain = etree.fromstring(fixture("kubevirt-hostdevs-1vf.xml"))
    assert place(plain, vfs, "strict") == numa.Placement()


def test_machine_without_expander_buses_is_a_missing_fact() -> None:
    root = numa_domain()
    os_type = root.find("os/type")
    assert os_type is not None
    os_type.set("machine", "pc-i440fx-7.2")
    placement = place(root, [HostDevice(VF0, numa_node=0)], "auto")
    assert placement.cells == {} and "q35" in placement.warnings[0]
    with pytest.raises(PlacementFailed, match="q35"):
        place(root, [HostDevice(VF0, numa_node=0)], "strict")


def test_operator_guest_addresses_are_kept_free() -> None:
    """A VF with its own guest address is not placed, and no root port takes its bus."""
    operator = HostDevice(VF1, PciAddress(0, 1, 0, 0), numa_node=1)
    placement = place(numa_domain(), [operator, HostDevice(VF0, numa_node=0)], "strict")
    assert VF1 not in placement.guest_addresses
    assert all(c["index"] != "1" for c in controllers(placement))


def test_place_never_changes_the_document() -> None:
    root = numa_domain()
    before = etree.tostring(root)
    place(root, [HostDevice(VF0, numa_node=0), HostDevice(VF1, numa_node=1)], "strict")
    assert etree.tostring(root) == before


def test_kubevirt_expander_bus_with_room_is_reused() -> None:
    shape = Shape("room", backing=(0, 1), vfs=(1,), kubevirt_devices=(0, 1), kubevirt_room=1)
    root = etree.fromstring(shape.xml())
    kubevirt = {
        e.findtext("target/node"): e.get("index")
        for e in root.iterfind("devices/controller[@model='pcie-expander-bus']")
    }
    found = controllers(place(root, shape.devices(), "strict"))
    assert [c["model"] for c in found] == ["pcie-root-port"]
    assert found[0]["bus"] == f"0x{int(str(kubevirt['1'])):02x}"
    assert found[0]["slot"] == "0x01"  # KubeVirt's own root port holds slot 0


def test_full_kubevirt_expander_bus_gets_a_new_one_below_it() -> None:
    """KubeVirt sizes each bus range exactly: a new bus for the cell, numbered below all."""
    shape = Shape("tight", backing=(0, 1), vfs=(0,), kubevirt_devices=(0, 1))
    root = etree.fromstring(shape.xml())
    numbers = [int(str(e.get("busNr"))) for e in root.iterfind("devices/controller/target")]
    found = controllers(place(root, shape.devices(), "strict"))
    assert [c["model"] for c in found] == ["pcie-expander-bus", "pcie-root-port"]
    assert found[0]["node"] == "0"
    assert int(found[0]["busNr"] or 0) == min(numbers) - 2
    assert int(found[0]["index"] or 0) == 5  # after KubeVirt's four controllers


def test_no_bus_numbers_left_is_reported() -> None:
    root = numa_domain()
    devices = root.find("devices")
    assert devices is not None
    devices.append(
        etree.fromstring(
            '<controller type="pci" index="9" model="pcie-expander-bus">'
            '<target busNr="12"><node>1</node></target></controller>'
        )
    )
    placement = place(root, [HostDevice(VF0, numa_node=0)], "auto")
    assert placement.controllers == () and "bus numbers" in placement.warnings[0]


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
    budget = numa._Budget()
    assert numa.cpuset("0-16383", budget=budget) is not None
    assert budget.left == numa.MAX_EXPANDED - 16384
    budget.left = 10
    assert numa.cpuset("0-10", budget=budget) is None


def _with_controllers(markup: str) -> etree._Element:
    root = numa_domain()
    devices = root.find("devices")
    assert devices is not None
    for element in etree.fromstring(f"<x>{markup}</x>"):
        devices.append(element)
    return root


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


@pytest.mark.parametrize(("vfs", "reused"), [(1, True), (2, False)])
def test_bus_room_counts_every_controller_nested_under_the_expander(vfs: int, reused: bool) -> None:
    """busNr 250 leaves 250..255: the bus, four nested controllers, room for one more."""
    devices = [HostDevice(PciAddress(0, 0x3D, 1, f), numa_node=1) for f in range(vfs)]
    found = controllers(place(_with_controllers(NESTED), devices, "strict"))
    if reused:
        assert found == [
            {"index": "9", "model": "pcie-root-port", "busNr": None, "node": None}
            | {"bus": "0x01", "slot": "0x01"}
        ]
    else:
        assert found[0] | {"index": None} == {
            "index": None,
            "model": "pcie-expander-bus",
            "busNr": str(250 - 1 - vfs),
            "node": "1",
            "bus": None,
            "slot": None,
        }


def test_host_node_backing_two_cells_goes_to_the_lowest() -> None:
    root = numa_domain()
    memnode = root.find("numatune/memnode[@cellid='1']")
    assert memnode is not None
    memnode.set("nodeset", "0-1")  # cell 1 also draws memory from host node 0
    assert place(root, [HostDevice(VF0, numa_node=0)], "strict").cells == {VF0: 0}


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


def test_a_bus_named_by_a_device_address_is_not_reused_as_an_index() -> None:
    """libvirt adds a controller for bus 0x01 named by a device: index 1 is taken."""
    root = _with_controllers("")
    disk = root.find("devices/disk")
    assert disk is not None
    etree.SubElement(
        disk, "address", {"type": "pci", "domain": "0x0000", "bus": "0x01", "slot": "0x00"}
    )
    found = controllers(place(root, [HostDevice(VF0, numa_node=0)], "strict"))
    assert [c["index"] for c in found] == ["2", "3"]


def test_root_port_chassis_avoids_one_written_out() -> None:
    root = _with_controllers(
        '<controller type="pci" index="1" model="pcie-root-port"><target chassis="3"/></controller>'
    )
    placement = place(root, [HostDevice(VF0, numa_node=0)], "strict")
    port = placement.controllers[-1]
    assert port.get("index") == "3"
    chassis = port.find("target")
    assert chassis is not None and chassis.get("chassis") != "3"


def test_reuse_keeps_new_indexes_below_every_bus_number() -> None:
    """An expander numbered 10 with index 9 taken: a root port indexed 10 would collide."""
    root = _with_controllers(
        '<controller type="pci" index="9" model="pcie-expander-bus">'
        '<target busNr="10"><node>1</node></target></controller>'
    )
    placement = place(root, [HostDevice(VF1, numa_node=1)], "auto")
    assert placement.controllers == () and "bus numbers" in placement.warnings[0]


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


# --- the fast paths give what the full syntax gives ------------------------------------


def _number_by_pattern(text: str | None) -> int | None:
    """``numa._number`` without its fast path: the pattern alone."""
    if text is None:
        return None
    match = numa._NUMBER.fullmatch(text)
    if match is None:
        return None
    value = match.group(1)
    return int(value[2:], 16) if value[:2].lower() == "0x" else int(value, 10)


NUMBERS = [
    "0",
    "7",
    "007",
    "123456789",
    "1234567890",
    "0x1f",
    " 3",
    "3 ",
    "",
    "-1",
    "+1",
    "1_0",
    "\u0663",
    "\u00b2",
    "\uff11",
    "3\n",
    "99999",
    "100000",
    " 12 ",
    "\t0100\n",
]


@pytest.mark.parametrize("text", NUMBERS)
def test_number_fast_path_matches_the_pattern(text: str) -> None:
    assert numa._number(text) == _number_by_pattern(text)


def _cpuset_by_loop(text: str | None, limit: int, budget: numa._Budget) -> frozenset[int] | None:
    """``numa.cpuset`` without its single-id fast path: the item loop alone."""
    if text is None or not text.strip():
        return None
    wanted: set[int] = set()
    excluded: set[int] = set()
    for item in text.split(",", limit):
        match = numa._CPUSET_ITEM.fullmatch(item)
        if match is None:
            return None
        first = int(match.group(2))
        last = int(match.group(3)) if match.group(3) is not None else first
        if last < first or last >= limit:
            return None
        budget.left -= last - first + 1
        if budget.left < 0:
            return None
        (excluded if match.group(1) else wanted).update(range(first, last + 1))
    return frozenset(wanted - excluded)


@pytest.mark.parametrize("text", [*NUMBERS, "16383", "16384", "65535", "4-7", "^3", "3,4"])
@pytest.mark.parametrize("limit", [numa.MAX_CPUS, numa.MAX_NODES, 8])
@pytest.mark.parametrize("left", [0, 1, 5])
def test_single_cpu_fast_path_matches_the_full_syntax(text: str, limit: int, left: int) -> None:
    """A lone id skips the loop; what it returns and spends must be what the loop would."""
    fast, slow = numa._Budget(left=left), numa._Budget(left=left)
    assert cpuset(text, limit, fast) == _cpuset_by_loop(text, limit, slow)
    assert fast.left == slow.left


def test_single_cpu_fast_path_spends_and_honours_the_budget() -> None:
    budget = numa._Budget(left=1)
    assert cpuset("5", budget=budget) == frozenset({5}) and budget.left == 0
    assert cpuset("5", budget=budget) is None
    assert cpuset("16384") is None and cpuset("16383") == frozenset({16383})
    assert cpuset("1024", numa.MAX_NODES) is None


def test_queries_ignore_namespaced_and_non_pci_controllers() -> None:
    """The compiled queries read what ``iterfind`` did: plain tags, type pci only."""
    root = numa_domain()
    devices = root.find("devices")
    assert devices is not None
    devices.append(
        etree.fromstring(
            b'<q:controller xmlns:q="urn:q" type="pci" index="200" model="pcie-expander-bus">'
            b'<q:target busNr="10"><q:node>0</q:node></q:target></q:controller>'
        )
    )
    devices.append(
        etree.fromstring(
            b'<controller type="usb" index="201" model="pcie-expander-bus">'
            b'<target busNr="12"><node>0</node></target></controller>'
        )
    )
    placement = place(root, [HostDevice(VF0, numa_node=0)], "auto")
    assert [c["model"] for c in controllers(placement)] == ["pcie-expander-bus", "pcie-root-port"]
    assert controllers(placement)[0]["busNr"] == "254"  # not below the ignored ones


@pytest.mark.parametrize(("index", "bus_nr", "cell"), [(1, 254, 0), (17, 200, 3), (255, 9, 12)])
def test_expander_template_is_the_built_element(index: int, bus_nr: int, cell: int) -> None:
    for _ in range(2):
        got = numa._expander_element(index, bus_nr, cell)
        assert etree.tostring(got) == etree.tostring(numa._build_expander(index, bus_nr, cell))


@pytest.mark.parametrize(
    ("index", "chassis", "bus", "slot"), [(2, 2, 1, 0), (30, 7, 0xFE, 0x1F), (9, 255, 16, 3)]
)
def test_root_port_template_is_the_built_element(
    index: int, chassis: int, bus: int, slot: int
) -> None:
    for _ in range(2):
        got = numa._root_port_element(index, chassis, bus, slot)
        expected = numa._build_root_port(index, chassis, bus, slot)
        assert etree.tostring(got) == etree.tostring(expected)


def test_controller_templates_are_never_handed_out() -> None:
    first = numa._root_port_element(3, 3, 1, 0)
    first[2].set("bus", "0x77")
    first.append(etree.Element("extra"))
    second = numa._root_port_element(4, 4, 1, 1)
    assert second[2].get("bus") == "0x01" and second.find("extra") is None
    assert numa._template("root-port").get("index") == "0"


def test_one_query_reads_every_fact_by_tag() -> None:
    root = numa_domain()
    facts = numa._read_facts(root)
    assert set(facts) == set(numa._FACT_TAGS)
    assert [c.get("id") for c in facts["cell"]] == ["0", "1"]
    assert [m.get("cellid") for m in facts["memnode"]] == ["0", "1"]
    assert [p.get("vcpu") for p in facts["vcpupin"]] == ["0", "1", "2", "3"]
    assert facts["controller"] == [] and facts["address"] == []
    assert [t.get("machine") for t in facts["type"]] == ["q35"]


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


def test_a_new_thread_places_the_same_way() -> None:
    import threading

    data = fixture("numa-passthrough-2vf.xml")
    devices = [HostDevice(VF0, numa_node=0), HostDevice(VF1, numa_node=1)]
    here = transform(data, devices, TransformOptions(numa_placement="auto"))
    there: list[object] = []
    thread = threading.Thread(
        target=lambda: there.append(
            transform(data, devices, TransformOptions(numa_placement="auto"))
        )
    )
    thread.start()
    thread.join()
    assert there == [here]


@pytest.mark.parametrize(("vfs", "reused"), [(1, True), (2, False)])
def test_nested_controllers_are_read_whatever_their_child_order(vfs: int, reused: bool) -> None:
    """libvirt writes model and target before address: each child is found by its tag."""
    written_by_libvirt = NESTED.replace('">' + "<address", '"><model name="x"/><target/><address')
    assert written_by_libvirt.count("<model") >= 4
    devices = [HostDevice(PciAddress(0, 0x3D, 1, f), numa_node=1) for f in range(vfs)]
    found = controllers(place(_with_controllers(written_by_libvirt), devices, "strict"))
    assert (found[0]["model"] == "pcie-root-port") is reused
