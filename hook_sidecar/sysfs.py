"""What sysfs says about a VF: is it a QAT VF bound to vfio-pci, and on which host NUMA node.

Read under a configurable root so tests (and a sidecar with sysfs mounted
elsewhere) never depend on the machine's own devices. Every path is built
from a parsed ``PciAddress``, so no input can steer it elsewhere.
"""

from __future__ import annotations

import os
import re

from hook_sidecar.libvirt_values import Budget, cpuset, number
from hook_sidecar.pci import PciAddress

INTEL_VENDOR_ID = 0x8086

# Intel QAT virtual-function device ids, as Intel's QAT device plugin lists them
# (intel-device-plugins-for-kubernetes, cmd/qat_plugin/dpdkdrv/dpdkdrv.go, qatDeviceDriver),
# with the kernel VF driver each one binds to there.
QAT_VF_DEVICE_IDS = frozenset(
    {
        0x0442,  # dh895xccvf (DH895xCC), in the plugin's list
        0x0443,  # dh895xccvf (DH895xCC), in the plugin's list
        0x37C9,  # c6xxvf (C62x), in the plugin's list
        0x19E3,  # c3xxxvf (C3xxx), in the plugin's list
        0x18A1,  # c4xxxvf (C4xxx), in the plugin's list
        0x6F55,  # d15xxvf (D15xx), in the plugin's list
        0x4941,  # 4xxxvf (4xxx), in the plugin's list
        0x4943,  # 4xxxvf (401xx), in the plugin's list
        0x4945,  # 4xxxvf (402xx), in the plugin's list
        0x4947,  # 420xxvf (420xx), in the plugin's list
        0x4949,  # 6xxxvf (6xxx, QAT Gen6): Linux's adf_6xxx driver; newer than that plugin list
    }
)

# Patterns, compiled by re on first use: a sidecar serving a VMI without a VF never reads sysfs.
_HEX_ID = r"0x[0-9a-fA-F]{1,4}"
_NODE = r"-?[0-9]{1,4}"


def device_dir(address: PciAddress, root: str | os.PathLike[str]) -> str:
    return os.path.join(root, "bus", "pci", "devices", str(address))


def _read_small(path: str) -> str | None:
    """A sysfs attribute is one short line: its first 64 bytes, or None when unreadable."""
    try:
        with open(path, "rb") as stream:
            return stream.read(64).decode("ascii", "replace").strip()
    except OSError:
        return None


def _hex_id(path: str) -> int | None:
    text = _read_small(path)
    return int(text, 16) if text is not None and re.fullmatch(_HEX_ID, text) else None


def problems(address: PciAddress, root: str | os.PathLike[str]) -> list[str]:
    """Why ``address`` does not look like a QAT VF bound to vfio-pci, if it does not."""
    device = device_dir(address, root)
    if not os.path.exists(device):
        return [f"{address} does not exist under {os.path.dirname(device)}"]
    found = []
    vendor = _hex_id(os.path.join(device, "vendor"))
    device_id = _hex_id(os.path.join(device, "device"))
    if vendor != INTEL_VENDOR_ID or device_id not in QAT_VF_DEVICE_IDS:
        shown = f"{vendor or 0:04x}:{device_id or 0:04x}"
        found.append(f"{address} is PCI device {shown}, not a known Intel QAT VF")
    try:
        driver = os.path.basename(os.readlink(os.path.join(device, "driver")))
    except OSError:
        driver = "no driver"
    if driver != "vfio-pci":
        found.append(
            f"{address} is bound to {driver}, not vfio-pci; the device plugin or the node "
            "setup must bind it to vfio-pci"
        )
    return found


def numa_node(address: PciAddress, root: str | os.PathLike[str]) -> tuple[int | None, str]:
    """The VF's host NUMA node from ``numa_node`` (-1: none), and words saying where from."""
    path = os.path.join(device_dir(address, root), "numa_node")
    text = _read_small(path)
    if text is None:
        return None, f"no {path}"
    if not re.fullmatch(_NODE, text):
        return None, f"{path} holds {text!r}"
    node = int(text)
    if node < 0:
        return None, f"{path} is {node}: the host reports no NUMA node"
    return node, "sysfs"


MAX_NODES = 1024
"""NUMA node numbers read: below this, more than any host has."""


def host_cpu_nodes(root: str | os.PathLike[str]) -> dict[int, int]:
    """This host's CPU -> NUMA node map, from ``devices/system/node/node*/cpulist``.

    Guest NUMA placement needs it when a domain maps its cells to host nodes
    only through vCPU pinning. Empty when sysfs shows no nodes. Bounded: at
    ``MAX_NODES`` nodes, 64 KiB per file, and one cpuset budget.
    """
    base = os.path.join(root, "devices", "system", "node")
    cpus: dict[int, int] = {}
    budget = Budget()
    try:
        entries = sorted(os.listdir(base))
    except OSError:
        return cpus
    for name in entries:
        node = number(name[4:]) if name.startswith("node") else None
        if node is None or node >= MAX_NODES:
            continue
        try:
            with open(os.path.join(base, name, "cpulist"), "rb") as handle:
                text = handle.read(65536).decode("ascii", "replace")
        except OSError:
            continue
        for cpu in cpuset(text, budget=budget) or ():
            cpus.setdefault(cpu, node)
    return cpus
