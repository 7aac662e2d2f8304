"""What a VMI asks of the hook, read from the VMI object virt-launcher sends.

The hook is attached per VM but may sit in a shared image or a cluster-wide
plugin, so it must act only when the VMI clearly asks for a QAT VF and pass
every other domain through untouched. Everything here is pure over the parsed
VMI mapping.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from hook_sidecar.errors import InvalidInput

ENABLED_ANNOTATION = "qat.vm.kubevirt.io/enabled"
DEVICES_ANNOTATION = "qat.vm.kubevirt.io/devices"
DEFAULT_RESOURCE_PATTERNS = ("qat.intel.com/*",)

Vmi = Mapping[str, Any]


def parse_vmi(raw: bytes | str) -> Vmi:
    """Parse the VMI JSON; an empty payload is an empty VMI (v1alpha1 clients may send none)."""
    if not raw or not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as err:
        raise InvalidInput(f"VMI is not valid JSON: {err}") from None
    if not isinstance(value, dict):
        raise InvalidInput(
            f"VMI JSON is a {type(value).__name__}, expected an object "
            "(the VirtualMachineInstance as virt-launcher sends it)"
        )
    return value


def _mapping(value: Any) -> Mapping[str, Any]:
    # JSON objects are dicts; a dict check is far cheaper than the Mapping ABC.
    return value if isinstance(value, dict) else {}


def _sequence(value: Any) -> Sequence[Any]:
    return value if isinstance(value, list) else []


def metadata(vmi: Vmi) -> Mapping[str, Any]:
    return _mapping(vmi.get("metadata"))


def spec(vmi: Vmi) -> Mapping[str, Any]:
    return _mapping(vmi.get("spec"))


def annotations_of(vmi: Vmi) -> Mapping[str, Any]:
    return _mapping(metadata(vmi).get("annotations"))


def display_name(vmi: Vmi) -> str:
    """``namespace/name`` for messages and logs; ``-`` parts when unknown."""
    meta = metadata(vmi)
    return f"{meta.get('namespace') or '-'}/{meta.get('name') or '-'}"


def resource_matches(resource: str, patterns: Sequence[str]) -> bool:
    return any(fnmatchcase(resource, pattern) for pattern in patterns)


_QUANTITY_RE = re.compile(r"^\s*(\d+)\s*$")


def _quantity(resource: str, value: Any) -> int:
    """Extended resources are whole numbers; anything else is a broken VMI."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    match = _QUANTITY_RE.match(str(value))
    if match is None:
        raise InvalidInput(
            f"VMI resource {resource} has quantity {value!r}; "
            "device resources take a whole number such as 1"
        )
    return int(match.group(1))


@dataclass(frozen=True)
class Request:
    """Whether the VMI wants a VF, how many, and the words that say why."""

    wanted: bool
    expected: int | None
    reason: str


def requested_resources(vmi: Vmi, patterns: Sequence[str]) -> dict[str, int]:
    """Matching device resources and their counts; limits win over requests, as kubelet does."""
    resources = _mapping(_mapping(spec(vmi).get("domain")).get("resources"))
    counts: dict[str, int] = {}
    for section in ("requests", "limits"):
        for name, value in _mapping(resources.get(section)).items():
            if resource_matches(str(name), patterns):
                counts[str(name)] = _quantity(str(name), value)
    return counts


def read_request(vmi: Vmi, patterns: Sequence[str], allow_vmi_devices: bool) -> Request:
    """Decide whether the hook should act on this VMI at all."""
    notes = annotations_of(vmi)
    enabled = str(notes.get(ENABLED_ANNOTATION, "")).strip().lower()
    if enabled == "false":
        return Request(False, None, f'annotation {ENABLED_ANNOTATION}: "false" opts out')
    counts = requested_resources(vmi, patterns)
    if counts:
        total = sum(counts.values())
        listed = ", ".join(f"{name}: {count}" for name, count in sorted(counts.items()))
        if total == 0:
            return Request(False, None, f"resource {listed} asks for no device")
        return Request(True, total, f"resource {listed}")
    if enabled == "true":
        return Request(True, None, f'annotation {ENABLED_ANNOTATION}: "true"')
    if allow_vmi_devices and str(notes.get(DEVICES_ANNOTATION, "")).strip():
        return Request(True, None, f"annotation {DEVICES_ANNOTATION}")
    return Request(False, None, "the VMI requests no QAT resource and has no QAT annotation")


def claim_directories(vmi: Vmi) -> tuple[frozenset[str], frozenset[str]] | None:
    """The DRA metadata directories of the claims the VMI names, or None if it names none.

    kubelet writes claims under ``resourceclaims/<claim object name>`` and claims
    made from templates under ``resourceclaimtemplates/<pod claim name>``.
    """
    claims = _sequence(spec(vmi).get("resourceClaims"))
    if not claims:
        return None
    direct: set[str] = set()
    templated: set[str] = set()
    for claim in claims:
        claim = _mapping(claim)
        if claim.get("resourceClaimName"):
            direct.add(str(claim["resourceClaimName"]))
        if claim.get("resourceClaimTemplateName") and claim.get("name"):
            templated.add(str(claim["name"]))
    return frozenset(direct), frozenset(templated)


_LIVE_MIGRATE = {"LiveMigrate", "LiveMigrateIfPossible"}


def preflight_warnings(vmi: Vmi) -> list[str]:
    """Problems KubeVirt will not catch because it does not know the hook adds a device."""
    warnings = []
    vmi_spec = spec(vmi)
    domain = _mapping(vmi_spec.get("domain"))
    devices = _mapping(domain.get("devices"))
    memlock = _mapping(_mapping(domain.get("memory")).get("reservedOverhead")).get("memLock")
    known_vfio = (
        _sequence(devices.get("hostDevices"))
        or _sequence(devices.get("gpus"))
        or any("sriov" in _mapping(i) for i in _sequence(devices.get("interfaces")))
    )
    if memlock != "Required" and not known_vfio:
        warnings.append(
            f"VMI {display_name(vmi)} has no device KubeVirt knows as VFIO and does not set "
            "spec.domain.memory.reservedOverhead.memLock: Required, so qemu's locked-memory "
            "limit stays low and the guest fails DMA mapping at boot; add "
            "spec.domain.memory.reservedOverhead.memLock: Required "
            "(feature gate ReservedOverheadMemlock)"
        )
    strategy = vmi_spec.get("evictionStrategy")
    if strategy in _LIVE_MIGRATE:
        warnings.append(
            f"VMI {display_name(vmi)} has evictionStrategy {strategy}, but a VM with a host "
            "PCI device cannot live-migrate, so node drains will block on it; "
            "set spec.evictionStrategy: None or External"
        )
    return warnings
