"""The hook seam: what the transform is given for what discovery found."""

from __future__ import annotations

import pytest

from hook_sidecar import hook
from hook_sidecar.discovery import Discovery, HostNode
from hook_sidecar.errors import InvalidInput
from hook_sidecar.hostdevs import HostDevice
from hook_sidecar.pci import PciAddress

A, B, C = (PciAddress.parse(a) for a in ("3d:02.2", "3d:02.3", "3d:02.4"))
GUEST = PciAddress.parse("00:10.0")


def test_each_device_gets_its_guest_address_and_host_node() -> None:
    decided = Discovery(
        wanted=True,
        reason="test",
        devices=(A, B, C),
        host_nodes={A: HostNode(1, "sysfs"), B: HostNode(None, "no numa_node")},
    )
    assert hook.host_devices(decided, {B: GUEST}) == [
        HostDevice(A, None, 1),
        HostDevice(B, GUEST, None),
        HostDevice(C, None, None),
    ]


def test_guest_address_for_a_device_not_injected_is_refused() -> None:
    decided = Discovery(wanted=True, reason="test", devices=(A,))
    with pytest.raises(InvalidInput) as info:
        hook.host_devices(decided, {C: GUEST})
    message = str(info.value)
    assert "0000:3d:02.4, which is not among the devices to inject (0000:3d:02.2)" in message
    assert "--" not in message  # the core does not name a flag
