"""``qat-hook discover``'s presentation: the exact text and JSON for each kind of outcome."""

from __future__ import annotations

from hook_sidecar import report
from hook_sidecar.discovery import Discovery, HostNode
from hook_sidecar.pci import PciAddress

A, B, C = (PciAddress.parse(a) for a in ("3d:02.2", "3d:02.3", "3d:02.4"))

FOUND = Discovery(
    wanted=True,
    reason="resource qat.intel.com/generic: 3",
    devices=(A, B, C),
    source="environment",
    detail="QAT0, QAT1, QAT2",
    expected=3,
    warnings=("first", "second"),
    host_nodes={A: HostNode(1, "sysfs"), B: HostNode(None, "no numa_node")},
)
NOT_WANTED = Discovery(wanted=False, reason="the VMI requests nothing", warnings=("skipped",))


def test_describe_an_injection() -> None:
    assert report.describe(FOUND) == "\n".join(
        [
            "inject 3 device(s): resource qat.intel.com/generic: 3",
            "  source:   environment (QAT0, QAT1, QAT2)",
            "  expected: 3",
            "  device:   0000:3d:02.2  host NUMA node 1 (sysfs)",
            "  device:   0000:3d:02.3  host NUMA node unknown (no numa_node)",
            "  device:   0000:3d:02.4  host NUMA node unknown",
        ]
    )


def test_describe_escapes_what_is_not_ours() -> None:
    """A DRA file name with a newline cannot start a line of its own."""
    found = Discovery(
        wanted=True, reason="r", devices=(A,), source="dra", detail="c/r/x\ninject 9 device(s)"
    )
    lines = report.describe(found).splitlines()
    assert lines[1] == "  source:   dra (c/r/x\\ninject 9 device(s))"
    assert len(lines) == 4


def test_describe_with_guest_cells() -> None:
    lines = report.describe(FOUND, {A: 0, B: None}).splitlines()
    assert lines[3:6] == [
        "  device:   0000:3d:02.2  host NUMA node 1 (sysfs), guest NUMA cell 0",
        "  device:   0000:3d:02.3  host NUMA node unknown (no numa_node), "
        "not placed on a guest NUMA cell",
        "  device:   0000:3d:02.4  host NUMA node unknown, not placed on a guest NUMA cell",
    ]


def test_describe_without_an_expected_count() -> None:
    found = Discovery(wanted=True, reason="r", devices=(A,), source="override", detail="d")
    assert report.describe(found).splitlines()[2] == "  expected: -"


def test_describe_no_injection() -> None:
    assert report.describe(NOT_WANTED) == "no injection: the VMI requests nothing"


def test_json_of_an_injection() -> None:
    assert report.as_json(FOUND) == {
        "wanted": True,
        "reason": "resource qat.intel.com/generic: 3",
        "devices": ["0000:3d:02.2", "0000:3d:02.3", "0000:3d:02.4"],
        "source": "environment",
        "detail": "QAT0, QAT1, QAT2",
        "expected": 3,
        "warnings": ["first", "second"],
        "numa": [
            {"device": "0000:3d:02.2", "host_node": 1, "from": "sysfs"},
            {"device": "0000:3d:02.3", "host_node": None, "from": "no numa_node"},
            {"device": "0000:3d:02.4", "host_node": None, "from": None},
        ],
    }


def test_json_with_guest_cells() -> None:
    assert report.as_json(FOUND, {A: 0})["numa"] == [
        {"device": "0000:3d:02.2", "host_node": 1, "from": "sysfs", "guest_cell": 0},
        {"device": "0000:3d:02.3", "host_node": None, "from": "no numa_node", "guest_cell": None},
        {"device": "0000:3d:02.4", "host_node": None, "from": None, "guest_cell": None},
    ]


def test_json_of_no_injection() -> None:
    assert report.as_json(NOT_WANTED) == {
        "wanted": False,
        "reason": "the VMI requests nothing",
        "devices": [],
        "source": None,
        "detail": "",
        "expected": None,
        "warnings": ["skipped"],
        "numa": [],
    }
