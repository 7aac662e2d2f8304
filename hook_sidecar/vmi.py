"""What a VMI asks of the hook, read from the VMI object virt-launcher sends.

The hook is attached per VM but may sit in a shared image or a cluster-wide
plugin, so it must act only when the VMI clearly asks for a QAT VF and pass
every other domain through untouched. Everything here is pure over the parsed
VMI mapping.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from fnmatch import fnmatchcase
from typing import Any, NamedTuple

from hook_sidecar import boundedjson
from hook_sidecar.config import MAX_VMI_BYTES
from hook_sidecar.errors import InvalidInput

ENABLED_ANNOTATION = "qat.vm.kubevirt.io/enabled"
DEVICES_ANNOTATION = "qat.vm.kubevirt.io/devices"
GET_VMI = "kubectl get vmi NAME -o json"

Vmi = Mapping[str, Any]
FieldPath = tuple[str | int, ...]
"""Where a value sits in the VMI; turned into words only when a message needs it."""


def _too_large(raw: bytes | str) -> InvalidInput | None:
    if len(raw) > MAX_VMI_BYTES:
        return InvalidInput(
            f"VMI JSON is over {MAX_VMI_BYTES} bytes (etcd keeps a VMI under about 1.5 MiB); "
            f"pass the VirtualMachineInstance object ({GET_VMI})"
        )
    return None


def parse_vmi(raw: bytes | str) -> Vmi:
    """Parse the VMI JSON virt-launcher sends; an empty payload is an empty VMI (v1alpha1
    clients may send none)."""
    if not raw or not raw.strip():
        return {}
    error = _too_large(raw)
    if error is not None:
        raise error
    value = boundedjson.loads(raw, "VMI")
    if not isinstance(value, dict):
        raise InvalidInput(
            f"VMI JSON is {_KINDS.get(type(value), 'a number')}, expected an object "
            "(the VirtualMachineInstance as virt-launcher sends it)"
        )
    return value


def _template_vmi(vm: Mapping[str, Any], where: str) -> Vmi:
    """The VMI a VirtualMachine starts: its template, under the VirtualMachine's own name."""
    template = _mapping(spec(vm).get("template"), ("spec", "template"))
    if not template:
        raise InvalidInput(f"{where} is a VirtualMachine without spec.template; pass {GET_VMI}")
    meta = dict(_mapping(template.get("metadata"), ("spec", "template", "metadata")))
    vm_meta = metadata(vm)
    for key in ("name", "namespace"):
        if key in vm_meta:
            meta[key] = vm_meta[key]
    return {
        "apiVersion": vm.get("apiVersion"),
        "kind": "VirtualMachineInstance",
        "metadata": meta,
        "spec": _mapping(template.get("spec"), ("spec", "template", "spec")),
    }


def read_vmi_file(raw: bytes, where: str) -> tuple[Vmi, str | None]:
    """The VMI a file given to ``qat-hook`` describes, and a note when the file held a
    VirtualMachine (its ``spec.template`` is read).

    Stricter than what virt-launcher sends: an empty file, ``{}``, a List or an object
    of another kind is an error naming what was found, never a VMI that asks for nothing.
    YAML is not read (the hook has no YAML parser): the error says to pass JSON.
    """
    if not raw.strip():
        raise InvalidInput(f"{where} is empty; pass the VMI as JSON ({GET_VMI})")
    error = _too_large(raw)
    if error is not None:
        raise error
    try:
        value = boundedjson.loads(raw, f"VMI {where}")
    except boundedjson.NotJson as err:
        if err.at_start:
            raise InvalidInput(
                f"VMI {where} is not JSON (YAML is not read); pass {GET_VMI}"
            ) from None
        raise
    if not isinstance(value, dict):
        raise InvalidInput(
            f"VMI {where} is {_KINDS.get(type(value), 'a number')}, expected one "
            f"VirtualMachineInstance object ({GET_VMI})"
        )
    if not value:
        raise InvalidInput(f"VMI {where} is an empty object {{}}; pass {GET_VMI}")
    kind = _string(value.get("kind"), ("kind",))
    if kind == "VirtualMachine":
        return _template_vmi(value, where), (
            f"{where} is the VirtualMachine {display_name(value)}: "
            "reading its spec.template, the VMI it starts"
        )
    if kind.endswith("List"):
        items = value.get("items")
        count = f" of {len(items)} items" if isinstance(items, list) else ""
        raise InvalidInput(f"{where} is a {kind[:64]}{count}; pass one VMI ({GET_VMI})")
    if kind and kind != "VirtualMachineInstance":
        raise InvalidInput(
            f"{where} is a {kind[:64]}, not a VirtualMachineInstance or VirtualMachine; "
            f"pass {GET_VMI}"
        )
    if not kind and "spec" not in value and "metadata" not in value:
        raise InvalidInput(
            f"{where} has no kind, metadata or spec, so it is no VMI; pass {GET_VMI}"
        )
    return value, None


_KINDS = {
    dict: "an object",
    list: "a list",
    str: "a string",
    bool: "a boolean",
    type(None): "null",
}


def _wrong_type(path: FieldPath, value: Any, expected: str) -> InvalidInput:
    kind = _KINDS.get(type(value), "a number")
    return InvalidInput(f"VMI field {_path(path)} is {kind}, expected {expected}")


def _mapping(value: Any, path: FieldPath) -> Mapping[str, Any]:
    """An object field: absent or null is empty; any other type is a broken VMI."""
    # JSON objects are dicts; a dict check is far cheaper than the Mapping ABC.
    if isinstance(value, dict):
        return value
    if value is None:
        return {}
    raise _wrong_type(path, value, "an object")


def _sequence(value: Any, path: FieldPath) -> Sequence[Any]:
    if isinstance(value, list):
        return value
    if value is None:
        return []
    raise _wrong_type(path, value, "a list")


def _string(value: Any, path: FieldPath) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    raise _wrong_type(path, value, "a string")


_path = boundedjson.field_path


def metadata(vmi: Vmi) -> Mapping[str, Any]:
    return _mapping(vmi.get("metadata"), ("metadata",))


def spec(vmi: Vmi) -> Mapping[str, Any]:
    return _mapping(vmi.get("spec"), ("spec",))


def annotations_of(vmi: Vmi) -> Mapping[str, Any]:
    return _mapping(metadata(vmi).get("annotations"), ("metadata", "annotations"))


def annotation(vmi: Vmi, name: str) -> str:
    """One annotation's value; annotations are strings in Kubernetes, anything else is broken."""
    return _string(annotations_of(vmi).get(name), ("metadata", "annotations", name))


def name_and_namespace(vmi: Vmi) -> tuple[str, str]:
    """The VMI's name and namespace ("" when absent): kubelet's pods are found by them."""
    meta = metadata(vmi)
    name = _string(meta.get("name"), ("metadata", "name"))
    return name, _string(meta.get("namespace"), ("metadata", "namespace"))


def display_name(vmi: Vmi) -> str:
    """``namespace/name`` for messages and logs; ``-`` parts when unknown or unusable."""
    meta = metadata(vmi) if isinstance(vmi.get("metadata"), dict) else {}
    name, namespace = meta.get("name"), meta.get("namespace")
    return (
        f"{namespace if isinstance(namespace, str) and namespace else '-'}/"
        f"{name if isinstance(name, str) and name else '-'}"
    )


def resource_matches(resource: str, patterns: Sequence[str]) -> bool:
    return any(fnmatchcase(resource, pattern) for pattern in patterns)


# Extended resources are whole numbers. ASCII digits only: ``\d`` and int() also take
# other scripts' digits, which Kubernetes never writes. 18 digits stay inside int64.
_QUANTITY = r"[0-9]{1,18}"  # compiled by re on first use


def _quantity(path: FieldPath, value: Any) -> int:
    """A device count, from a JSON number or a quantity string."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 10**18:
        return value
    if isinstance(value, str) and re.fullmatch(_QUANTITY, text := value.strip(" ")):
        return int(text)
    shown = repr(value) if len(repr(value)) <= 40 else f"{repr(value)[:40]}..."
    raise InvalidInput(
        f"VMI field {_path(path)} has quantity {shown}; "
        "device resources take a whole number such as 1"
    )


class Request(NamedTuple):
    """Whether the VMI wants a VF, how many, and the words that say why."""

    wanted: bool
    expected: int | None
    reason: str


def requested_resources(vmi: Vmi, patterns: Sequence[str]) -> dict[str, int]:
    """Matching device resources and their counts; limits win over requests, as kubelet does."""
    domain = _mapping(spec(vmi).get("domain"), ("spec", "domain"))
    resources = _mapping(domain.get("resources"), ("spec", "domain", "resources"))
    counts: dict[str, int] = {}
    for section in ("requests", "limits"):
        where = ("spec", "domain", "resources", section)
        for name, value in _mapping(resources.get(section), where).items():
            if resource_matches(name, patterns):
                counts[name] = _quantity((*where, name), value)
    return counts


def read_request(vmi: Vmi, patterns: Sequence[str], allow_vmi_devices: bool) -> Request:
    """Decide whether the hook should act on this VMI at all."""
    enabled = annotation(vmi, ENABLED_ANNOTATION).strip().lower()
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
    if allow_vmi_devices and annotation(vmi, DEVICES_ANNOTATION).strip():
        return Request(True, None, f"annotation {DEVICES_ANNOTATION}")
    return Request(False, None, "the VMI requests no QAT resource and has no QAT annotation")


def claim_directories(vmi: Vmi) -> tuple[frozenset[str], frozenset[str]] | None:
    """The DRA metadata directories of the claims the VMI names, or None if it names none.

    kubelet writes claims under ``resourceclaims/<claim object name>`` and claims
    made from templates under ``resourceclaimtemplates/<pod claim name>``.
    """
    claims = _sequence(spec(vmi).get("resourceClaims"), ("spec", "resourceClaims"))
    if not claims:
        return None
    direct: set[str] = set()
    templated: set[str] = set()
    for index, item in enumerate(claims):
        where = ("spec", "resourceClaims", index)
        claim = _mapping(item, where)
        claim_name = _string(claim.get("resourceClaimName"), (*where, "resourceClaimName"))
        template = _string(
            claim.get("resourceClaimTemplateName"), (*where, "resourceClaimTemplateName")
        )
        pod_claim = _string(claim.get("name"), (*where, "name"))
        if claim_name:
            direct.add(claim_name)
        if template and pod_claim:
            templated.add(pod_claim)
    return frozenset(direct), frozenset(templated)


_LIVE_MIGRATE = {"LiveMigrate", "LiveMigrateIfPossible"}


def _knows_vfio(devices: Mapping[str, Any]) -> bool:
    """Whether KubeVirt itself raises qemu's memlock limit: it does for these device kinds."""
    where = ("spec", "domain", "devices")
    if _sequence(devices.get("hostDevices"), (*where, "hostDevices")):
        return True
    if _sequence(devices.get("gpus"), (*where, "gpus")):
        return True
    interfaces = _sequence(devices.get("interfaces"), (*where, "interfaces"))
    return any(
        "sriov" in _mapping(interface, (*where, "interfaces", index))
        for index, interface in enumerate(interfaces)
    )


def preflight_warnings(vmi: Vmi) -> list[str]:
    """Problems KubeVirt will not catch because it does not know the hook adds a device."""
    warnings = []
    vmi_spec = spec(vmi)
    domain = _mapping(vmi_spec.get("domain"), ("spec", "domain"))
    devices = _mapping(domain.get("devices"), ("spec", "domain", "devices"))
    memory = _mapping(domain.get("memory"), ("spec", "domain", "memory"))
    overhead = _mapping(
        memory.get("reservedOverhead"), ("spec", "domain", "memory", "reservedOverhead")
    )
    if overhead.get("memLock") != "Required" and not _knows_vfio(devices):
        warnings.append(
            f"VMI {display_name(vmi)} has no device KubeVirt knows as VFIO and does not set "
            "spec.domain.memory.reservedOverhead.memLock: Required, so qemu's locked-memory "
            "limit stays low and the guest fails DMA mapping at boot; add "
            "spec.domain.memory.reservedOverhead.memLock: Required "
            "(feature gate ReservedOverheadMemlock)"
        )
    strategy = _string(vmi_spec.get("evictionStrategy"), ("spec", "evictionStrategy"))
    if strategy in _LIVE_MIGRATE:
        warnings.append(
            f"VMI {display_name(vmi)} has evictionStrategy {strategy}, but a VM with a host "
            "PCI device cannot live-migrate, so node drains will block on it; "
            "set spec.evictionStrategy: None or External"
        )
    return warnings
