"""The DRA source: device metadata files that kubelet mounts for the pod's claims (KEP-5304).

The files sit in a directory the pod shares, so they are read like untrusted
input: only regular files whose real path is inside the root (a claim
directory symlinked elsewhere is not followed), opened non-blocking (a FIFO
never hangs the call) and checked with fstat on the open descriptor, at most
``MAX_FILE_BYTES`` each and ``MAX_FILES`` in all. A file that fails any of
this, is not JSON, nests too deep or has the wrong shape becomes a warning
naming it; the other files still count. An attribute that is there but holds
no PCI address is an error, as a malformed variable is.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from typing import Any

from hook_sidecar import boundedjson
from hook_sidecar import vmi as vmis
from hook_sidecar.errors import InvalidInput
from hook_sidecar.pci import PciAddress, PciAddressError
from hook_sidecar.sources import Candidates, Lookup, SourceInput, dedupe

PCI_BUS_ID_ATTRIBUTE = "resource.kubernetes.io/pciBusID"
MAX_FILE_BYTES = 1024 * 1024
MAX_FILES = 256
# A metadata document nests 6 levels (requests[].devices[].attributes.<name>.string).
MAX_DEPTH = 16


class Unusable(Exception):
    """A metadata file the source skips; the message names the file and why."""


def _inside(path: str, real_root: str) -> bool:
    real = os.path.realpath(path)
    return os.path.commonpath((real, real_root)) == real_root


def _listing(folder: str, warnings: list[str]) -> list[str]:
    try:
        if not os.path.isdir(folder):
            return []
        return [os.path.join(folder, name) for name in sorted(os.listdir(folder))]
    except OSError as err:
        warnings.append(f"DRA metadata: skipped {folder}: {err.strerror}")
        return []


def _metadata_files(folders: list[str], real_root: str, warnings: list[str]) -> Iterator[str]:
    """``<claim>/<request>/*-metadata.json``; folders that lead out of the root are skipped."""
    for claim in folders:
        if not _inside(claim, real_root):
            warnings.append(f"DRA metadata: skipped {claim}: it leads out of {real_root}")
            continue
        for request in _listing(claim, warnings):
            if not _inside(request, real_root):
                warnings.append(f"DRA metadata: skipped {request}: it leads out of {real_root}")
                continue
            yield from (p for p in _listing(request, warnings) if p.endswith("-metadata.json"))


def _claim_folders(root: str, vmi: vmis.Vmi, warnings: list[str]) -> tuple[list[str], str]:
    claims = vmis.claim_directories(vmi)
    folders: list[str] = []
    for kind, index in (("resourceclaims", 0), ("resourceclaimtemplates", 1)):
        for claim in _listing(os.path.join(root, kind), warnings):
            if claims is None or os.path.basename(claim) in claims[index]:
                folders.append(claim)
    scope = "all claims" if claims is None else "the claims the VMI names"
    return folders, scope


def read_bounded(path: str | os.PathLike[str], real_root: str) -> bytes:
    """The bytes of a regular file inside the root, or ``Unusable`` saying why not."""
    path = os.fspath(path)
    if not _inside(path, real_root):
        raise Unusable(f"{path} leads out of {real_root}")
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY
    try:
        fd = os.open(os.path.realpath(path), flags)
    except OSError as err:
        raise Unusable(f"{path} cannot be opened: {err.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise Unusable(f"{path} is not a regular file")
        if info.st_size > MAX_FILE_BYTES:
            raise Unusable(f"{path} is {info.st_size} bytes, over the limit of {MAX_FILE_BYTES}")
        with os.fdopen(fd, "rb", closefd=False) as stream:
            data = stream.read(MAX_FILE_BYTES + 1)
    except OSError as err:
        raise Unusable(f"{path} cannot be read: {err.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_FILE_BYTES:  # grew since fstat
        raise Unusable(f"{path} is over the limit of {MAX_FILE_BYTES} bytes")
    return data


def _list(value: Any, path: str, field: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise Unusable(f"{path}: {field} is not a list")
    return value


def _object(value: Any, path: str, field: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise Unusable(f"{path}: {field} is not an object")
    return value


def pci_bus_ids(document: Any, path: str | os.PathLike[str]) -> list[PciAddress]:
    """Every device's ``resource.kubernetes.io/pciBusID``; shape problems are ``Unusable``."""
    path = os.fspath(path)
    top = _object(document, path, "the document")
    addresses = []
    for r, request in enumerate(_list(top.get("requests"), path, "requests")):
        devices = _object(request, path, f"requests[{r}]").get("devices")
        for d, device in enumerate(_list(devices, path, f"requests[{r}].devices")):
            where = f"requests[{r}].devices[{d}]"
            attributes = _object(device, path, where).get("attributes") or {}
            attribute = _object(attributes, path, f"{where}.attributes").get(PCI_BUS_ID_ATTRIBUTE)
            if attribute is None:
                continue
            value = attribute.get("string") if isinstance(attribute, dict) else None
            if not isinstance(value, str):
                raise Unusable(f"{path}: {where} attribute {PCI_BUS_ID_ATTRIBUTE} has no string")
            try:
                addresses.append(PciAddress.parse(value))
            except PciAddressError as err:
                raise InvalidInput(f"DRA metadata {path}: {err}") from None
    return addresses


def source(root: str | os.PathLike[str]) -> Callable[[SourceInput], Lookup]:
    """The DRA metadata under ``root``; only the claims the VMI names, when it names any."""
    top = os.fspath(root)
    where = f"DRA metadata under {top}"

    def look(call: SourceInput) -> Lookup:
        if not os.path.isdir(top):
            return Lookup(f"{where} (no such directory)")
        real_root = os.path.realpath(top)
        warnings: list[str] = []
        folders, scope = _claim_folders(top, call.vmi, warnings)
        devices: list[PciAddress] = []
        used = []
        for count, path in enumerate(_metadata_files(folders, real_root, warnings)):
            if count == MAX_FILES:
                warnings.append(f"DRA metadata: read only the first {MAX_FILES} files")
                break
            try:
                document = boundedjson.loads(read_bounded(path, real_root), "file", MAX_DEPTH)
                found = pci_bus_ids(document, path)
            except boundedjson.JsonLimitError as err:
                warnings.append(f"DRA metadata: skipped {path}: {err}")
                continue
            except Unusable as err:
                warnings.append(f"DRA metadata: skipped {err}")
                continue
            if found:
                used.append(os.path.relpath(path, top))
                devices.extend(found)
        if not devices:
            skipped = f"; {len(warnings)} problem(s): {warnings[0]}" if warnings else ""
            return Lookup(
                f"{where} ({scope}: no device with {PCI_BUS_ID_ATTRIBUTE}{skipped})",
                warnings=tuple(warnings),
                problem=f"{warnings[0]} ({len(warnings)} problem(s) in all)" if warnings else None,
            )
        return Lookup(where, Candidates("dra", ", ".join(used), dedupe(devices)), tuple(warnings))

    return look
