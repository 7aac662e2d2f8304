"""The hook seam: what the transform is given for what discovery found."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from hook_sidecar import hook, transform
from hook_sidecar.config import DiscoveryConfig, HookSettings
from hook_sidecar.discovery import Discovery, HostNode
from hook_sidecar.errors import InvalidInput, PreconditionFailed
from hook_sidecar.hostdevs import AddedDevice, HostDevice, TransformOptions, TransformResult
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


# --- on_define_domain: the seam every front end calls ------------------------------------------
# The transform is replaced by a recorder, so these tests pin what the seam hands it and
# what it makes of the answer; the transform has its own tests.

DOMAIN = b"<domain type='kvm'><name>vm</name></domain>"
NEW_DOMAIN = b"<domain type='kvm'><name>vm</name><devices/></domain>"
ADDED = AddedDevice(A, "ua-qat-0", GUEST)
DEVICES_ANNOTATION = "qat.vm.kubevirt.io/devices"
MEMLOCK_WARNING = "has no device KubeVirt knows as VFIO"


def vmi_json(*, memlock: bool = True, annotations: dict[str, str] | None = None) -> bytes:
    domain: dict[str, Any] = {"resources": {"limits": {"qat.intel.com/generic": "1"}}}
    if annotations:
        domain = {}
    if memlock:
        domain["memory"] = {"reservedOverhead": {"memLock": "Required"}}
    vmi = {
        "metadata": {"name": "vm1", "namespace": "ns1", "annotations": annotations or {}},
        "spec": {"domain": domain},
    }
    return json.dumps(vmi).encode()


# Nothing of this machine's own: no DRA files, no sysfs (so no host NUMA node either).
NOWHERE = Path(__file__).resolve().parent / "no-such-directory"


def settings(**discovery: Any) -> HookSettings:
    return HookSettings(
        DiscoveryConfig(verify_sysfs="off", dra_root=NOWHERE, sysfs_root=NOWHERE, **discovery),
        TransformOptions(managed="yes"),
        guest_addresses={A: GUEST},
    )


@dataclass
class Recorder:
    """Stands in for ``transform.transform``: records its arguments, answers ``result``."""

    result: TransformResult
    calls: list[tuple[bytes, list[HostDevice], TransformOptions]] = field(default_factory=list)

    def __call__(
        self,
        domain_xml: bytes,
        devices: list[HostDevice],
        options: TransformOptions,
        host_cpus: object = None,
    ) -> TransformResult:
        self.calls.append((domain_xml, devices, options))
        return self.result


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    fake = Recorder(TransformResult(NEW_DOMAIN, added=(ADDED,), warnings=("placement note",)))
    monkeypatch.setattr(transform, "transform", fake)
    clock = iter([10.0, 10.25])  # started, finished: 250 ms
    monkeypatch.setattr(hook, "time", SimpleNamespace(perf_counter=lambda: next(clock)))
    return fake


def test_a_vmi_that_asks_gets_its_devices(recorder: Recorder) -> None:
    given = settings()
    outcome = hook.on_define_domain(DOMAIN, vmi_json(memlock=False), {"QAT0": str(A)}, given)
    assert recorder.calls == [(DOMAIN, [HostDevice(A, GUEST, None)], given.transform)]
    assert outcome.domain_xml == NEW_DOMAIN
    assert outcome.vmi_name == "ns1/vm1"
    assert outcome.result is recorder.result
    assert outcome.duration_ms == 250.0
    assert outcome.discovery.devices == (A,)
    assert outcome.discovery.source == "environment"
    assert outcome.discovery.reason == "resource qat.intel.com/generic: 1"
    # discovery's warnings first, then the transform's
    assert len(outcome.warnings) == 2
    assert MEMLOCK_WARNING in outcome.warnings[0]
    assert outcome.warnings == (*outcome.discovery.warnings, "placement note")


@pytest.mark.parametrize(
    "vmi", [b"", b"{}", vmi_json(annotations={"qat.vm.kubevirt.io/enabled": "false"})]
)
def test_a_vmi_that_asks_for_nothing_gets_its_bytes_back(recorder: Recorder, vmi: bytes) -> None:
    outcome = hook.on_define_domain(DOMAIN, vmi, {"QAT0": str(A)}, settings())
    assert recorder.calls == []
    assert outcome.domain_xml is DOMAIN
    assert outcome.result is None
    assert outcome.discovery.wanted is False
    assert outcome.warnings == ()
    assert outcome.duration_ms == 250.0


def test_no_vmi_at_all_injects_what_discovery_finds(recorder: Recorder) -> None:
    """None is the CLI without --vmi: nothing to ask, so nothing can say no."""
    outcome = hook.on_define_domain(DOMAIN, None, {"QAT0": str(A)}, settings())
    assert recorder.calls == [(DOMAIN, [HostDevice(A, GUEST, None)], settings().transform)]
    assert outcome.domain_xml == NEW_DOMAIN
    assert outcome.vmi_name == "-/-"
    assert outcome.discovery.reason == "no VMI given: injecting what discovery finds"


def test_skipped_when_nothing_is_found_passes_through(recorder: Recorder) -> None:
    outcome = hook.on_define_domain(DOMAIN, vmi_json(), {}, settings(on_missing="skip"))
    assert recorder.calls == []
    assert outcome.domain_xml is DOMAIN
    assert outcome.result is None
    assert len(outcome.warnings) == 1
    assert "but none was found in" in outcome.warnings[0]


MIGRATION_REFUSED = (
    "VMI ns1/vm1 has a QAT VF passed through ({}) and cannot be live-migrated; "
    "set spec.evictionStrategy: None, and stop and start the VM to move it"
)


@pytest.mark.parametrize(
    ("vmi", "reason"),
    [
        (vmi_json(), "resource qat.intel.com/generic: 1"),
        (vmi_json(annotations={DEVICES_ANNOTATION: str(A)}), f"annotation {DEVICES_ANNOTATION}"),
    ],
)
def test_a_migration_target_that_wants_a_vf_is_refused(
    recorder: Recorder, vmi: bytes, reason: str
) -> None:
    with pytest.raises(PreconditionFailed) as info:
        hook.on_define_domain(
            DOMAIN,
            vmi,
            {"QAT0": str(A)},
            settings(allow_vmi_devices=True),
            migration_target=True,
        )
    assert str(info.value) == MIGRATION_REFUSED.format(reason)
    assert recorder.calls == []


def test_the_resource_patterns_decide_on_a_migration_target(recorder: Recorder) -> None:
    """A VMI whose resource the patterns do not match migrates like any other."""
    outcome = hook.on_define_domain(
        DOMAIN,
        vmi_json(),
        {"QAT0": str(A)},
        settings(resource_patterns=("example.com/*",)),
        migration_target=True,
    )
    assert outcome.domain_xml is DOMAIN
    assert outcome.discovery.wanted is False
