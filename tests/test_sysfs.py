"""sysfs as a fake tree: exact problems and NUMA answers, and bounded attribute reads."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hook_sidecar import sysfs
from hook_sidecar.pci import PciAddress

A = PciAddress.parse("3d:02.2")


def device(root: Path, **attributes: str) -> Path:
    folder = root / "bus" / "pci" / "devices" / str(A)
    folder.mkdir(parents=True)
    for name, value in attributes.items():
        (folder / name).write_text(value)
    return folder


def bind(root: Path, folder: Path, driver: str) -> None:
    target = root / "bus" / "pci" / "drivers" / driver
    target.mkdir(parents=True)
    os.symlink(target, folder / "driver")


def test_a_good_vf_has_no_problem(tmp_path: Path) -> None:
    bind(tmp_path, device(tmp_path, vendor="0x8086\n", device="0x4941\n"), "vfio-pci")
    assert sysfs.problems(A, tmp_path) == []


def test_problems_in_full(tmp_path: Path) -> None:
    bind(tmp_path, device(tmp_path, vendor="0x15b3\n", device="0x1018\n"), "mlx5_core")
    assert sysfs.problems(A, tmp_path) == [
        "0000:3d:02.2 is PCI device 15b3:1018, not a known Intel QAT VF",
        "0000:3d:02.2 is bound to mlx5_core, not vfio-pci; the device plugin or the node "
        "setup must bind it to vfio-pci",
    ]


def test_unreadable_ids_and_no_driver(tmp_path: Path) -> None:
    device(tmp_path)
    assert sysfs.problems(A, tmp_path) == [
        "0000:3d:02.2 is PCI device 0000:0000, not a known Intel QAT VF",
        "0000:3d:02.2 is bound to no driver, not vfio-pci; the device plugin or the node "
        "setup must bind it to vfio-pci",
    ]


def test_missing_device(tmp_path: Path) -> None:
    folder = tmp_path / "bus" / "pci" / "devices"
    assert sysfs.problems(A, tmp_path) == [f"0000:3d:02.2 does not exist under {folder}"]


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("1\n", 1),
        ("0", 0),
        ("1" + " " * 63 + "9", 1),  # only the first 64 bytes are read
        ("-1\n", None),
        ("x\n", None),
        ("\xff", None),
    ],
)
def test_numa_node(tmp_path: Path, text: str, answer: int | None) -> None:
    device(tmp_path, numa_node=text)
    assert sysfs.numa_node(A, tmp_path)[0] == answer


def test_numa_node_words(tmp_path: Path) -> None:
    path = f"{tmp_path}/bus/pci/devices/0000:3d:02.2/numa_node"
    assert sysfs.numa_node(A, tmp_path) == (None, f"no {path}")
    folder = device(tmp_path, numa_node="-1\n")
    assert sysfs.numa_node(A, tmp_path) == (None, f"{path} is -1: the host reports no NUMA node")
    (folder / "numa_node").write_bytes(b"\xffx\n")
    assert sysfs.numa_node(A, tmp_path) == (None, f"{path} holds '\ufffdx'")
    (folder / "numa_node").write_text("3\n")
    assert sysfs.numa_node(A, tmp_path) == (3, "sysfs")
