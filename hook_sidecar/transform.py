"""The domain transform: add vfio ``<hostdev>`` elements to a libvirt domain XML.

Pure: bytes in, bytes out, no I/O and no grpc, so the CLI, the gRPC server and
the tests all run exactly the same code.

Why a tree and not a byte splice: every decision (is there a DTD, where does
``<devices>`` end, which devices exist) is taken on the document libxml2
parsed, whatever its encoding, and the output is that same tree written back
by lxml as UTF-8. Nothing is decided on raw bytes that libxml2 could read
differently (a UTF-16 DOCTYPE, an entity value that looks like ``</devices>``).
The price is that the output is lxml's spelling of the input (``<x/>`` for
Go's ``<x></x>``, an XML declaration); ``normalized`` writes the input the same
way, so a diff of the two shows exactly the added lines. As a last guard the
written bytes are read again and must hold every added device exactly once.

Bounds: the size cap is checked before parsing; libxml2 without ``huge_tree``
refuses nesting deeper than 256 and text nodes over 10 MB; at most
``MAX_OUTSIDE_NODES`` comments and PIs may stand outside ``<domain>`` (lxml
serialises those in quadratic time); no step walks the document more than a
constant number of times, so the cost grows linearly with the input.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from lxml import etree

from hook_sidecar.errors import InvalidInput, PreconditionFailed
from hook_sidecar.hostdevs import (
    AddedDevice,
    HostDevice,
    TransformOptions,
    TransformResult,
)
from hook_sidecar.pci import PciAddress, PciAddressError

if TYPE_CHECKING:
    from hook_sidecar.numa import Placement


class DomainXmlError(InvalidInput):
    """The domain XML is not something the hook can safely read."""


class NotWellFormed(DomainXmlError):
    """The bytes are not well-formed XML."""


class NotADomain(DomainXmlError):
    """Well-formed XML, but not a libvirt ``<domain>``."""


class UnsafeXml(DomainXmlError):
    """A DTD that declares or references anything: refused, never expanded or fetched."""


class TooLarge(DomainXmlError):
    """Larger than the configured cap; checked before parsing."""


class OutputCheckFailed(DomainXmlError):
    """The written domain, read again, does not hold each added device exactly once."""


class GuestAddressConflict(PreconditionFailed):
    """A requested guest PCI address is already taken in the domain."""


class DuplicateDevice(InvalidInput):
    """The same host PCI address was requested twice."""


# --- hardened parsing --------------------------------------------------------


def _parser() -> etree.XMLParser:
    """A fresh parser per document (under a microsecond): nothing shared between threads.

    No entity resolution and no network; lxml's defaults add no DTD loading or
    validation and no ``huge_tree``, so libxml2's own limits bound the nesting
    depth (256) and the node sizes (tests pin each of these). Comments, PIs,
    CDATA sections and whitespace are kept: the output carries them over.
    """
    return etree.XMLParser(resolve_entities=False, no_network=True, strip_cdata=False)


MAX_OUTSIDE_NODES = 1000
"""Comments and PIs before or after ``<domain>``: lxml writes those in quadratic time."""

_NO_DTD = (
    "entities and DTDs are never expanded or fetched: send the plain libvirt domain XML "
    "without a DOCTYPE"
)


def _parse(data: bytes) -> etree._ElementTree:
    """Parse hardened; any XML error becomes one line naming the spot."""
    if not data or data.isspace():
        raise NotWellFormed("the domain XML is empty; pass the libvirt domain document")
    try:
        return etree.fromstring(data, _parser()).getroottree()
    except etree.XMLSyntaxError as err:
        line, column = err.position
        # libxml2's message ends in the position (and may hold newlines); errors are one line.
        message = " ".join(err.msg.split(", line ")[0].split())
        raise NotWellFormed(
            f"domain XML is not well-formed at line {line}, column {column}: {message}"
        ) from None


def _drop_bare_doctype(tree: etree._ElementTree) -> None:
    """Drop a bare ``<!DOCTYPE name>``; refuse a DOCTYPE that declares or references anything.

    Decided on the parsed document: an external id, any entity declaration or
    reference, and any other declaration in the internal subset (an ATTLIST
    alone changes how libxml2 reads attribute values). The internal subset is
    judged by libxml2's own rendering of it: a DOCTYPE it writes bare declares
    nothing.
    """
    if next(tree.getroot().iter(etree.Entity), None) is not None:
        raise UnsafeXml(f"domain XML has entity references; {_NO_DTD}")
    docinfo: Any = tree.docinfo  # lxml-stubs lack doctype, system_url and iterentities
    dtd = docinfo.internalDTD  # None exactly when there is no DOCTYPE at all
    if dtd is None:
        return
    if docinfo.public_id or docinfo.system_url:
        raise UnsafeXml(f"domain XML has a DOCTYPE with an external id; {_NO_DTD}")
    if next(dtd.iterentities(), None) is not None:
        raise UnsafeXml(f"domain XML declares entities in its DOCTYPE; {_NO_DTD}")
    if etree.tostring(tree) != etree.tostring(tree, doctype=docinfo.doctype):
        raise UnsafeXml(f"domain XML has declarations in its DOCTYPE; {_NO_DTD}")
    docinfo.clear()


def _read(domain_xml: bytes, options: TransformOptions) -> etree._ElementTree:
    """The checked, parsed domain: size, well-formedness, DOCTYPE, root element."""
    if len(domain_xml) > options.max_bytes:
        raise TooLarge(
            f"domain XML is {len(domain_xml)} bytes, over the limit of {options.max_bytes}; "
            "raise --max-domain-bytes if this domain is genuine"
        )
    tree = _parse(domain_xml)
    root = tree.getroot()
    outside = itertools.chain(root.itersiblings(preceding=True), root.itersiblings())
    if len(list(itertools.islice(outside, MAX_OUTSIDE_NODES + 1))) > MAX_OUTSIDE_NODES:
        raise NotADomain(
            f"domain XML has more than {MAX_OUTSIDE_NODES} comments or processing instructions "
            "outside <domain>; remove them"
        )
    _drop_bare_doctype(tree)
    if root.tag != "domain":
        raise NotADomain(
            f"root element is <{root.tag}>, not <domain>; pass a libvirt domain XML "
            "(virsh dumpxml, or what virt-launcher sends)"
        )
    if not len(root):
        raise NotADomain("<domain> has no content; pass a complete libvirt domain XML")
    return tree


def _write(tree: etree._ElementTree) -> bytes:
    return etree.tostring(tree, encoding="UTF-8", xml_declaration=True)


# --- layout: indentation like the siblings ------------------------------------


def _whitespace(text: str | None) -> str | None:
    """``text`` when it is pure indentation ("" for none), else None (mixed content)."""
    if text is None:
        return ""
    return None if text.strip() else text


def _space_before(element: etree._Element) -> str:
    """The indentation written before ``element``, which has a parent ("" when none or mixed)."""
    previous = element.getprevious()
    text = previous.tail if previous is not None else next(element.iterancestors()).text
    return _whitespace(text) or ""


def _indent_unit(root: etree._Element) -> str:
    """One level of indentation as the document writes it.

    The indentation of ``<domain>``'s first child less that of ``</domain>``
    (the text after the last newline of each); two spaces when it cannot tell.
    A document written without whitespace never uses it.
    """
    first = _whitespace(root.text)
    if first and "\n" in first:
        inner = first.rpartition("\n")[2]
        outer = (_whitespace(root[-1].tail) or "").rpartition("\n")[2]
        if inner.startswith(outer) and len(inner) > len(outer):
            return inner[len(outer) :]
    return "  "


def _indent(element: etree._Element, sep: str, unit: str) -> None:
    """Indent a new element's subtree, given the whitespace ``sep`` written before it.

    Hand-written rather than ``etree.indent``: the document's own indentation
    (tabs, a newline style, an arbitrary base) is reproduced, not lxml's.
    Only missing whitespace is filled in; text an element carries is kept.
    """
    if not sep or not len(element):
        return
    inner = sep + unit
    if element.text is None:
        element.text = inner
    for child in element:
        _indent(child, inner, unit)
        if child.tail is None:
            child.tail = inner if child.getnext() is not None else sep


def _append(parent: etree._Element, children: Sequence[etree._Element], unit: str) -> None:
    """Append ``children`` after ``parent``'s last node, indented like their siblings.

    Mixed content (text beside the elements) gets no indentation at all. The
    last node is tracked rather than asked for: ``len()`` of an lxml element
    counts its children.
    """
    last = next(parent.iterchildren(reversed=True), None)
    if last is not None:
        closing = _whitespace(last.tail)  # the indentation of </parent>
        sep = _space_before(last) if closing is not None else ""
    else:
        closing = _whitespace(parent.text)
        outer = _space_before(parent) if closing is not None else ""
        sep = outer + unit if outer else ""
        if closing is not None:
            parent.text, closing = sep or None, outer
    for child in children:
        if last is not None and closing is not None:
            last.tail = sep or None
        parent.append(child)
        _indent(child, sep, unit)
        last = child
    if closing is not None:
        children[-1].tail = closing or None


def _address(parent: etree._Element, address: PciAddress, **extra: str) -> None:
    etree.SubElement(parent, "address", {**extra, **address.libvirt_attributes()})


def _hostdev(device: AddedDevice, managed: str) -> etree._Element:
    """The vfio ``<hostdev>`` for one device; the only markup the hook writes itself."""
    hostdev = etree.Element("hostdev", {"mode": "subsystem", "type": "pci", "managed": managed})
    etree.SubElement(hostdev, "driver", {"name": "vfio"})
    _address(etree.SubElement(hostdev, "source"), device.address)
    if device.guest_address is not None:
        _address(hostdev, device.guest_address, type="pci")
    etree.SubElement(hostdev, "alias", {"name": device.alias})
    return hostdev


# --- reading the existing domain ----------------------------------------------

# Compiled XPath: several times faster than the equivalent find paths on this path.
_HOST_SOURCES = etree.XPath(
    "devices/hostdev[@type='pci']/source/address"
    " | devices/interface[@type='hostdev']/source/address[@type='pci']"
)
_GUEST_ADDRESSES = etree.XPath("devices/*/address[@type='pci']")
_ALIASES = etree.XPath("devices/*/alias/@name")


def _nodes(query: etree.XPath, root: etree._Element) -> list[Any]:
    """Run a node-set query (lxml types every XPath result as one loose union)."""
    nodes: list[Any] = query(root)  # type: ignore[assignment]
    return nodes


def _address_of(element: etree._Element, what: str) -> PciAddress:
    try:
        return PciAddress.from_libvirt({str(k): str(v) for k, v in element.attrib.items()})
    except PciAddressError as err:
        raise NotADomain(
            f"{what} at line {element.sourceline} has an invalid PCI address: {err}"
        ) from None


def _describe(device: etree._Element) -> str:
    """A short name a user can find in the domain XML: tag, identifying attributes, alias."""
    attrs = " ".join(
        f"{key}='{device.get(key)}'" for key in ("type", "index", "model") if device.get(key)
    )
    text = f"<{etree.QName(device).localname}{' ' + attrs if attrs else ''}>"
    alias = device.find("alias")
    if alias is not None and alias.get("name"):
        text += f" (alias {alias.get('name')})"
    target = device.find("target")
    if target is not None and target.get("dev"):
        text += f" (target {target.get('dev')})"
    return f"{text} at line {device.sourceline}"


def _free_aliases(taken: Iterable[str], prefix: str) -> Iterator[str]:
    used = set(taken)
    number = 0
    while True:
        alias = f"{prefix}{number}"
        if alias not in used:
            yield alias
        number += 1


def _check_guest_addresses(root: etree._Element, wanted: Sequence[HostDevice]) -> None:
    """Refuse a guest address any device of the domain already has (disk, interface, ...)."""
    used = {
        _address_of(el, "a device's guest address"): el.getparent()
        for el in _nodes(_GUEST_ADDRESSES, root)
    }
    for device in wanted:
        if device.guest_address is None:
            continue
        holder = used.get(device.guest_address)
        if holder is not None:
            raise GuestAddressConflict(
                f"guest PCI address {device.guest_address} requested for {device.address} "
                f"is already used by {_describe(holder)}; choose a free guest address "
                "or drop the guest placement"
            )


def _check_unique(devices: Sequence[HostDevice]) -> None:
    seen: set[PciAddress] = set()
    guests: dict[PciAddress, PciAddress] = {}
    for device in devices:
        if device.address in seen:
            raise DuplicateDevice(f"PCI device {device.address} is listed twice; list each VF once")
        seen.add(device.address)
        if device.guest_address is not None:
            other = guests.get(device.guest_address)
            if other is not None:
                raise GuestAddressConflict(
                    f"guest PCI address {device.guest_address} is requested for both "
                    f"{other} and {device.address}; give each VF its own guest address"
                )
            guests[device.guest_address] = device.address


def _check_options(options: TransformOptions) -> None:
    if options.managed not in ("no", "yes"):
        raise InvalidInput(f"managed must be 'no' or 'yes', not {options.managed!r}")
    if options.numa_placement not in ("auto", "off", "strict"):
        raise InvalidInput(
            f"NUMA placement must be 'auto', 'off' or 'strict', not {options.numa_placement!r}"
        )


def _verify(xml: bytes, added: Sequence[AddedDevice]) -> None:
    """The last guard: read the written bytes again; each added device must be there once."""
    try:
        root = _parse(xml).getroot()
    except NotWellFormed as err:
        raise OutputCheckFailed(
            f"the written domain XML does not read back ({err}); nothing was returned: "
            "report this with the input domain"
        ) from None
    found: dict[str | None, list[dict[str, str]]] = {}
    for hostdev in root.iterfind("devices/hostdev"):
        alias, source = hostdev.find("alias"), hostdev.find("source/address")
        if alias is not None and source is not None:
            attrs = {str(key): str(value) for key, value in source.attrib.items()}
            found.setdefault(alias.get("name"), []).append(attrs)
    for device in added:
        sources = found.get(device.alias, []) if root.tag == "domain" else []
        count = sources.count(device.address.libvirt_attributes())
        if count != 1 or len(sources) != 1:
            raise OutputCheckFailed(
                f"the written domain XML holds {device.alias} for {device.address} "
                f"{count} times under /domain/devices, not once; nothing was returned: "
                "report this with the input domain"
            )


# --- the transform ------------------------------------------------------------


_DEFAULT_OPTIONS = TransformOptions()


def _placement(
    root: etree._Element, wanted: Sequence[HostDevice], options: TransformOptions
) -> Placement | None:
    """Guest NUMA placement of the devices without a guest address, when the domain has cells.

    ``numa`` is imported here: only a domain with guest NUMA cells needs it.
    """
    unplaced = [device for device in wanted if device.guest_address is None]
    if options.numa_placement == "off" or not unplaced or root.find("cpu/numa/cell") is None:
        return None
    from hook_sidecar import numa

    return numa.place(root, wanted, options.numa_placement)


def normalized(domain_xml: bytes, options: TransformOptions | None = None) -> bytes:
    """``domain_xml`` parsed and written exactly as ``transform`` writes its output.

    What ``--diff`` compares the output with: both sides are lxml's spelling, so
    only the added elements show.
    """
    return _write(_read(domain_xml, options or _DEFAULT_OPTIONS))


def transform(
    domain_xml: bytes,
    devices: Sequence[HostDevice],
    options: TransformOptions | None = None,
) -> TransformResult:
    """Return ``domain_xml`` with one vfio ``<hostdev>`` per device not already present.

    Idempotent: devices whose host address is already a hostdev source are
    skipped, and when nothing is left to add the input bytes come back as they
    were, so running the output through again gives the same bytes.
    """
    options = options or _DEFAULT_OPTIONS
    _check_options(options)
    _check_unique(devices)
    tree = _read(domain_xml, options)
    root = tree.getroot()

    present = {_address_of(el, "a host device source") for el in _nodes(_HOST_SOURCES, root)}
    wanted = [device for device in devices if device.address not in present]
    already = tuple(device.address for device in devices if device.address in present)
    if not wanted:
        return TransformResult(xml=domain_xml, already_present=already)

    placement = _placement(root, wanted, options)
    if placement is not None:
        wanted = [
            dataclasses.replace(
                device,
                guest_address=device.guest_address or placement.guest_addresses.get(device.address),
            )
            for device in wanted
        ]
    if any(device.guest_address for device in wanted):
        _check_guest_addresses(root, wanted)

    cells = placement.cells if placement is not None else {}
    aliases = _free_aliases(map(str, _nodes(_ALIASES, root)), options.alias_prefix)
    added = tuple(
        AddedDevice(device.address, next(aliases), device.guest_address, cells.get(device.address))
        for device in wanted
    )
    unit = _indent_unit(root)
    controllers = placement.controllers if placement is not None else ()
    new = [*controllers, *(_hostdev(device, options.managed) for device in added)]
    devices_element = root.find("devices")
    if devices_element is None:
        devices_element = etree.Element("devices")
        devices_element.extend(new)
        _append(root, [devices_element], unit)
    else:
        _append(devices_element, new, unit)
    xml = _write(tree)
    _verify(xml, added)
    warnings = placement.warnings if placement is not None else ()
    return TransformResult(xml=xml, added=added, already_present=already, warnings=warnings)
