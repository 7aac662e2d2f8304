"""The shape every device source shares, and the sources that read only the call's input.

A source is a function over the call's input (the VMI and the environment
snapshot), closed over its own settings when discovery is configured. It
answers with a ``Lookup``: the devices it found, if any, where it looked (the
"nothing found" message lists every place), and warnings. Sources that read
files or kubelet live in ``dra`` and ``podresources``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from fnmatch import fnmatchcase
from types import MappingProxyType
from typing import NamedTuple

from hook_sidecar import boundedjson
from hook_sidecar import vmi as vmis
from hook_sidecar.errors import InvalidInput
from hook_sidecar.pci import PciAddress, PciAddressError

DEVICES_ENV = "QAT_HOOK_DEVICES"
LISTED_AT_MOST = 8


class SourceInput(NamedTuple):
    """What one callback gives every source."""

    vmi: vmis.Vmi
    env: Mapping[str, str]


class Candidates(NamedTuple):
    """Devices one source yielded, in injection order, and exactly where they came from."""

    source: str
    detail: str
    devices: tuple[PciAddress, ...]
    numa_nodes: Mapping[PciAddress, tuple[int, ...]] = MappingProxyType({})
    """Host NUMA nodes per device, when the source itself reports them (kubelet does)."""


class Lookup(NamedTuple):
    """One source's answer: what it found (maybe nothing), where it looked, what went wrong."""

    where: str
    found: Candidates | None = None
    warnings: tuple[str, ...] = ()
    problem: str | None = None
    """What is wrong with this source and how to fix it, when it is set up but broken: the
    first one is what the "nothing found" error tells the user to do first."""


class Source(NamedTuple):
    """A configured source.

    ``remote`` sources (a network call) are asked only while nothing has been
    found; local ones are also read after a winner, so that a disagreement, the
    usual sign of a wrong static pin, reaches the log.
    """

    name: str
    look: Callable[[SourceInput], Lookup]
    remote: bool = False


def dedupe(addresses: Iterable[PciAddress]) -> tuple[PciAddress, ...]:
    """First occurrence wins: the same VF named twice is injected once, in its first place."""
    return tuple(dict.fromkeys(addresses))


def addresses_text(addresses: Sequence[PciAddress]) -> str:
    """A list of addresses for a message, cut so a message stays one readable line."""
    shown = ", ".join(str(address) for address in addresses[:LISTED_AT_MOST])
    more = len(addresses) - LISTED_AT_MOST
    return f"{shown} and {more} more" if more > 0 else shown


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


def override(
    devices: Sequence[PciAddress], origin: str = "--device"
) -> Callable[[SourceInput], Lookup]:
    """Operator-pinned devices: already parsed from ``origin`` (``--device`` or
    ``QAT_HOOK_DEVICES``), else ``QAT_HOOK_DEVICES`` read from the call's environment."""
    where = f"--device options and {DEVICES_ENV}"

    def look(call: SourceInput) -> Lookup:
        if devices:
            return Lookup(where, Candidates("override", origin, dedupe(devices)))
        raw = call.env.get(DEVICES_ENV)
        if raw is None:
            return Lookup(f"{where} (not set)")
        pinned = parse_address_list(raw, DEVICES_ENV)
        if pinned:
            return Lookup(where, Candidates("override", DEVICES_ENV, dedupe(pinned)))
        return Lookup(
            f"{where} ({DEVICES_ENV} set but empty)",
            problem=f"{DEVICES_ENV} is set but empty: set it to the VF's address "
            "(for example 0000:3d:02.2) or remove it",
        )

    return look


_QAT_VAR = r"QAT([0-9]{1,6})"
_PREFIXES = ("PCI_RESOURCE_", "PCIDEVICE_")
DEVICE_INFO_SUFFIX = "_INFO"
"""The SR-IOV device plugin sets ``PCIDEVICE_<RESOURCE>_INFO`` beside ``PCIDEVICE_<RESOURCE>``:
a JSON object keyed by device id (the PCI address), each holding that device's details."""


def _device_info_addresses(info: object, name: str) -> tuple[PciAddress, ...]:
    if not isinstance(info, dict):
        raise InvalidInput(f"variable {name} is not a device-info object keyed by PCI address")
    addresses = []
    for key in info:
        try:
            addresses.append(PciAddress.parse(key))
        except PciAddressError as err:
            raise InvalidInput(f"variable {name}: device-info key {err}") from None
    return tuple(addresses)


def _addresses_of(env: Mapping[str, str], name: str) -> tuple[PciAddress, ...]:
    """A variable's addresses; a device-info variable is read by its own shape."""
    value = env[name]
    if name.startswith("PCIDEVICE_") and name.endswith(DEVICE_INFO_SUFFIX):
        if name[: -len(DEVICE_INFO_SUFFIX)] in env:
            return ()  # it repeats its companion's addresses, with details the hook needs not
        try:
            info = boundedjson.loads(value, f"variable {name}", max_depth=8)
        except boundedjson.NotJson:
            pass  # not device-info: an address list like any PCIDEVICE_ variable
        else:
            return _device_info_addresses(info, name)
    return parse_address_list(value, f"variable {name}")


def environment(patterns: Sequence[str]) -> Callable[[SourceInput], Lookup]:
    """Device-plugin variables in the hook's own container: QAT<N>, PCI_RESOURCE_*, PCIDEVICE_*."""
    mangled = [mangle_resource(pattern) for pattern in patterns]
    shown = ", ".join(f"{prefix}{pattern}" for prefix in _PREFIXES for pattern in mangled)
    where = f"device-plugin variables QAT<N>, {shown}"

    def look(call: SourceInput) -> Lookup:
        env = call.env
        numbered = sorted(
            (int(match[1]), name) for name in env if (match := re.fullmatch(_QAT_VAR, name))
        )
        names = [name for _, name in numbered]
        for prefix in _PREFIXES:
            names.extend(
                name
                for name in sorted(env)
                if name.startswith(prefix)
                and any(fnmatchcase(name[len(prefix) :], pattern) for pattern in mangled)
            )
        used: list[str] = []
        devices: list[PciAddress] = []
        for name in names:
            found = _addresses_of(env, name)
            if found:
                used.append(name)
                devices.extend(found)
        if not devices:
            return Lookup(f"{where} (none set in this container)")
        return Lookup(where, Candidates("environment", ", ".join(used), dedupe(devices)))

    return look


def vmi_annotation(allowed: bool) -> Callable[[SourceInput], Lookup]:
    """The tenant-written annotation; trusted only when the operator says so."""
    where = f"VMI annotation {vmis.DEVICES_ANNOTATION}"

    def look(call: SourceInput) -> Lookup:
        if not allowed:
            return Lookup(
                f"{where} (ignored: start the sidecar with --allow-vmi-devices to use it)"
            )
        raw = vmis.annotation(call.vmi, vmis.DEVICES_ANNOTATION)
        devices = parse_address_list(raw, f"annotation {vmis.DEVICES_ANNOTATION}")
        if not devices:
            return Lookup(f"{where} (not set)")
        return Lookup(where, Candidates("vmi-annotation", vmis.DEVICES_ANNOTATION, dedupe(devices)))

    return look
