"""Find the PCI addresses of the QAT VFs assigned to this pod.

A KubeVirt sidecar container does not inherit the compute container's
device-plugin variables, so no single source works everywhere. Each source
is a small function over inputs passed in (environment mapping, VMI,
filesystem roots); they are consulted in a fixed order and the first that
yields devices wins. Later sources are still read (when cheap and local) so
that a disagreement, the usual sign of a wrong static pin, shows up in the
log. No grpc here: the server and the CLI are adapters over this module.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Literal

from hook_sidecar import vmi as vmis
from hook_sidecar.errors import InvalidInput, PreconditionFailed
from hook_sidecar.pci import PciAddress, PciAddressError

DEFAULT_DRA_ROOT = Path("/var/run/kubernetes.io/dra-device-attributes")
DEFAULT_SYSFS_ROOT = Path("/sys")
DEVICES_ENV = "QAT_HOOK_DEVICES"
PCI_BUS_ID_ATTRIBUTE = "resource.kubernetes.io/pciBusID"
README_SECTION = 'README section "How the VF\'s address reaches the sidecar"'

# Intel QAT virtual-function device ids (vendor 0x8086).
QAT_VF_DEVICE_IDS = frozenset(
    {0x0443, 0x37C9, 0x19E3, 0x18A1, 0x6F55, 0x4941, 0x4943, 0x4945, 0x4947, 0x4949}
)
INTEL_VENDOR_ID = 0x8086

OnMissing = Literal["fail", "skip"]
VerifySysfs = Literal["off", "warn", "strict"]


@dataclass(frozen=True)
class NumaInfo:
    """NUMA nodes kubelet reported for one device (PodResources source only)."""

    address: PciAddress
    nodes: tuple[int, ...]


@dataclass(frozen=True)
class Found:
    """What one source yielded: devices in injection order, and where exactly they came from."""

    source: str
    detail: str
    devices: tuple[PciAddress, ...]
    numa: tuple[NumaInfo, ...] = ()


@dataclass(frozen=True)
class Looked:
    """One source's answer: what it found (maybe nothing), where it looked, what went wrong.

    ``where`` feeds the "nothing found" message, which lists every place looked at.
    """

    found: Found | None
    where: str
    warnings: tuple[str, ...] = ()


Source = Callable[["Inputs"], Looked]


@dataclass(frozen=True)
class DiscoveryConfig:
    """Every knob of discovery; the CLI and the server fill it from flags and QAT_HOOK_* vars."""

    devices: tuple[PciAddress, ...] = ()
    resource_patterns: tuple[str, ...] = vmis.DEFAULT_RESOURCE_PATTERNS
    dra_root: Path = DEFAULT_DRA_ROOT
    sysfs_root: Path = DEFAULT_SYSFS_ROOT
    verify_sysfs: VerifySysfs = "warn"
    allow_vmi_devices: bool = False
    on_missing: OnMissing = "fail"
    extra_sources: tuple[tuple[str, Source], ...] = ()
    """Sources slotted in after the environment (the PodResources source lives here)."""


@dataclass(frozen=True)
class Inputs:
    vmi: vmis.Vmi
    env: Mapping[str, str]
    config: DiscoveryConfig


@dataclass(frozen=True)
class Discovery:
    """The outcome: inject ``devices`` (maybe none), with everything a user needs to check it."""

    wanted: bool
    reason: str
    devices: tuple[PciAddress, ...] = ()
    source: str | None = None
    detail: str = ""
    expected: int | None = None
    warnings: tuple[str, ...] = ()
    numa: tuple[NumaInfo, ...] = ()

    def as_json(self) -> dict[str, Any]:
        return {
            "wanted": self.wanted,
            "reason": self.reason,
            "devices": [str(address) for address in self.devices],
            "source": self.source,
            "detail": self.detail,
            "expected": self.expected,
            "warnings": list(self.warnings),
            "numa": [
                {"device": str(info.address), "nodes": list(info.nodes)} for info in self.numa
            ],
        }


# --- parsing helpers -------------------------------------------------------------


def parse_address_list(text: str, where: str) -> tuple[PciAddress, ...]:
    """A comma list of addresses; empty items (a trailing comma) are ignored."""
    addresses = []
    for item in text.split(","):
        if not item.strip():
            continue
        try:
            addresses.append(PciAddress.parse(item))
        except PciAddressError as err:
            raise InvalidInput(f"{where}: {err}") from None
    return tuple(addresses)


def mangle_resource(resource: str) -> str:
    """KubeVirt's variable suffix for a resource: upper case, ``/`` and ``.`` become ``_``."""
    return resource.upper().replace("/", "_").replace(".", "_")


def _dedupe(addresses: Iterable[PciAddress]) -> tuple[PciAddress, ...]:
    return tuple(dict.fromkeys(addresses))


# --- the sources ---------------------------------------------------------------------


def from_override(inputs: Inputs) -> Looked:
    where = f"--device options and {DEVICES_ENV}"
    if inputs.config.devices:
        return Looked(Found("override", "--device", _dedupe(inputs.config.devices)), where)
    raw = inputs.env.get(DEVICES_ENV, "")
    devices = parse_address_list(raw, DEVICES_ENV)
    if devices:
        return Looked(Found("override", DEVICES_ENV, _dedupe(devices)), where)
    return Looked(None, f"{where} (not set)")


_QAT_VAR_RE = re.compile(r"^QAT(\d+)$")
_PREFIXES = ("PCI_RESOURCE_", "PCIDEVICE_")


def from_environment(inputs: Inputs) -> Looked:
    env = inputs.env
    patterns = [mangle_resource(p) for p in inputs.config.resource_patterns]
    used: list[str] = []
    devices: list[PciAddress] = []
    numbered = sorted(
        ((int(m.group(1)), name) for name in env if (m := _QAT_VAR_RE.match(name))),
    )
    for _, name in numbered:
        found = parse_address_list(env[name], f"variable {name}")
        if found:
            used.append(name)
            devices.extend(found)
    for prefix in _PREFIXES:
        for name in sorted(env):
            suffix = name[len(prefix) :]
            if name.startswith(prefix) and any(fnmatchcase(suffix, p) for p in patterns):
                found = parse_address_list(env[name], f"variable {name}")
                if found:
                    used.append(name)
                    devices.extend(found)
    shown = ", ".join(f"{prefix}{p}" for prefix in _PREFIXES for p in patterns)
    where = f"device-plugin variables QAT<N>, {shown}"
    if not devices:
        return Looked(None, f"{where} (none set in this container)")
    return Looked(Found("environment", ", ".join(used), _dedupe(devices)), where)


def _dra_metadata_files(root: Path, vmi: vmis.Vmi) -> tuple[list[Path], str]:
    claims = vmis.claim_directories(vmi)
    files: list[Path] = []
    for kind, index in (("resourceclaims", 0), ("resourceclaimtemplates", 1)):
        base = root / kind
        if not base.is_dir():
            continue
        for claim_dir in sorted(base.iterdir()):
            if claims is not None and claim_dir.name not in claims[index]:
                continue
            files.extend(sorted(claim_dir.glob("*/*-metadata.json")))
    scope = "all claims" if claims is None else "the claims the VMI names"
    return files, scope


def _pci_bus_ids(document: Any, path: Path) -> list[PciAddress]:
    if not isinstance(document, dict):
        raise InvalidInput(f"DRA metadata {path} is not a JSON object")
    addresses = []
    for request in document.get("requests") or []:
        for device in (request or {}).get("devices") or []:
            attribute = ((device or {}).get("attributes") or {}).get(PCI_BUS_ID_ATTRIBUTE)
            if not attribute:
                continue
            value = attribute.get("string") if isinstance(attribute, dict) else None
            if not isinstance(value, str):
                raise InvalidInput(
                    f"DRA metadata {path}: attribute {PCI_BUS_ID_ATTRIBUTE} has no string value"
                )
            try:
                addresses.append(PciAddress.parse(value))
            except PciAddressError as err:
                raise InvalidInput(f"DRA metadata {path}: {err}") from None
    return addresses


def from_dra(inputs: Inputs) -> Looked:
    root = inputs.config.dra_root
    where = f"DRA metadata under {root}"
    if not root.is_dir():
        return Looked(None, f"{where} (no such directory)")
    files, scope = _dra_metadata_files(root, inputs.vmi)
    devices: list[PciAddress] = []
    used = []
    for path in files:
        try:
            document = json.loads(path.read_bytes())
        except (OSError, ValueError) as err:
            raise InvalidInput(f"DRA metadata {path} cannot be read: {err}") from None
        found = _pci_bus_ids(document, path)
        if found:
            used.append(str(path.relative_to(root)))
            devices.extend(found)
    if not devices:
        return Looked(None, f"{where} ({scope}: no device with {PCI_BUS_ID_ATTRIBUTE})")
    return Looked(Found("dra", ", ".join(used), _dedupe(devices)), where)


def from_vmi_annotation(inputs: Inputs) -> Looked:
    where = f"VMI annotation {vmis.DEVICES_ANNOTATION}"
    raw = str(vmis.annotations_of(inputs.vmi).get(vmis.DEVICES_ANNOTATION, ""))
    if not inputs.config.allow_vmi_devices:
        return Looked(
            None, f"{where} (ignored: start the sidecar with --allow-vmi-devices to use it)"
        )
    devices = parse_address_list(raw, f"annotation {vmis.DEVICES_ANNOTATION}")
    if not devices:
        return Looked(None, f"{where} (not set)")
    return Looked(Found("vmi-annotation", vmis.DEVICES_ANNOTATION, _dedupe(devices)), where)


def sources(config: DiscoveryConfig) -> list[tuple[str, Source]]:
    """The sources in the order they are consulted."""
    return [
        ("override", from_override),
        ("environment", from_environment),
        *config.extra_sources,
        ("dra", from_dra),
        ("vmi-annotation", from_vmi_annotation),
    ]


# --- sysfs verification ---------------------------------------------------------------


def _read_hex(path: Path) -> int | None:
    try:
        return int(path.read_text().strip(), 16)
    except (OSError, ValueError):
        return None


def sysfs_problems(address: PciAddress, sysfs_root: Path) -> list[str]:
    """Why ``address`` does not look like a QAT VF bound to vfio-pci, if it does not."""
    device = sysfs_root / "bus" / "pci" / "devices" / str(address)
    if not device.exists():
        return [f"{address} does not exist under {device.parent}"]
    problems = []
    vendor = _read_hex(device / "vendor")
    device_id = _read_hex(device / "device")
    if vendor != INTEL_VENDOR_ID or device_id not in QAT_VF_DEVICE_IDS:
        shown = f"{vendor or 0:04x}:{device_id or 0:04x}"
        problems.append(f"{address} is PCI device {shown}, not a known Intel QAT VF")
    try:
        driver = os.path.basename(os.readlink(device / "driver"))
    except OSError:
        driver = "no driver"
    if driver != "vfio-pci":
        problems.append(
            f"{address} is bound to {driver}, not vfio-pci; the device plugin or the node "
            "setup must bind it to vfio-pci"
        )
    return problems


# --- putting it together --------------------------------------------------------------


def _disagreement(winner: Found, other: Found) -> str:
    return (
        f"{other.source} ({other.detail}) lists {', '.join(map(str, other.devices))} but "
        f"{winner.source} ({winner.detail}) won with {', '.join(map(str, winner.devices))}; "
        "if the winner is a static pin it may not match the device plugin's allocation"
    )


def discover(
    vmi: vmis.Vmi,
    env: Mapping[str, str],
    config: DiscoveryConfig,
    *,
    require_request: bool = True,
) -> Discovery:
    """Decide whether to inject and what; raise when the VMI asks and cannot be served.

    ``require_request=False`` is the CLI without ``--vmi``: there is no VMI to ask,
    so whatever is found is injected.
    """
    if require_request:
        request = vmis.read_request(vmi, config.resource_patterns, config.allow_vmi_devices)
    else:
        request = vmis.Request(True, None, "no VMI given: injecting what discovery finds")
    if not request.wanted:
        return Discovery(wanted=False, reason=request.reason)

    inputs = Inputs(vmi=vmi, env=env, config=config)
    warnings = list(vmis.preflight_warnings(vmi)) if vmi else []
    winner: Found | None = None
    looked: list[str] = []
    for name, source in sources(config):
        if winner is not None and name == "podresources":
            continue  # a network call only to compare: not worth a slower VM start
        try:
            answer = source(inputs)
        except InvalidInput as err:
            if winner is None:
                raise
            warnings.append(f"ignored {name} source: {err}")
            continue
        looked.append(answer.where)
        warnings.extend(answer.warnings)
        found = answer.found
        if found is None:
            continue
        if winner is None:
            winner = found
        elif set(found.devices) != set(winner.devices):
            warnings.append(_disagreement(winner, found))

    if winner is None:
        message = (
            f"VMI {vmis.display_name(vmi)} asks for a QAT VF ({request.reason}) but no "
            f"device address was found. Looked at: {'; '.join(looked)}. See the "
            f"{README_SECTION}."
        )
        if config.on_missing == "skip":
            warnings.append(message + " Passing the domain through (--on-missing skip).")
            return Discovery(
                wanted=False,
                reason=request.reason,
                expected=request.expected,
                warnings=tuple(warnings),
            )
        raise PreconditionFailed(message)

    if request.expected is not None and request.expected != len(winner.devices):
        raise PreconditionFailed(
            f"VMI {vmis.display_name(vmi)} asks for {request.expected} QAT VF(s) "
            f"({request.reason}) but {len(winner.devices)} were found in {winner.source} "
            f"({winner.detail}): {', '.join(map(str, winner.devices))}; make the VMI's "
            "request and the sidecar's device source agree"
        )

    if config.verify_sysfs != "off":
        problems = [p for a in winner.devices for p in sysfs_problems(a, config.sysfs_root)]
        if problems and config.verify_sysfs == "strict":
            raise PreconditionFailed(
                "sysfs check failed (--verify-sysfs strict): " + "; ".join(problems)
            )
        warnings.extend(f"sysfs: {problem}" for problem in problems)

    return Discovery(
        wanted=True,
        reason=request.reason,
        devices=winner.devices,
        source=winner.source,
        detail=winner.detail,
        expected=request.expected,
        warnings=tuple(warnings),
        numa=winner.numa,
    )


def env_snapshot(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables discovery reads, copied once so a call sees one consistent view."""
    source = os.environ if environ is None else environ
    return {
        name: value
        for name, value in source.items()
        if name.startswith(("QAT", "PCI_RESOURCE_", "PCIDEVICE_", "POD_"))
    }


def describe(discovery: Discovery) -> str:
    """A short human summary, as ``qat-hook discover`` prints it."""
    lines = []
    if not discovery.wanted:
        lines.append(f"no injection: {discovery.reason}")
    else:
        lines.append(f"inject {len(discovery.devices)} device(s): {discovery.reason}")
        lines.append(f"  source:   {discovery.source} ({discovery.detail})")
        lines.append(f"  expected: {discovery.expected if discovery.expected is not None else '-'}")
        for address in discovery.devices:
            numa = next((n.nodes for n in discovery.numa if n.address == address), ())
            suffix = f"  (NUMA node {', '.join(map(str, numa))})" if numa else ""
            lines.append(f"  device:   {address}{suffix}")
    lines.extend(f"warning: {warning}" for warning in discovery.warnings)
    return "\n".join(lines)
