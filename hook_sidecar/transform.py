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

import copy
import dataclasses
import itertools
import threading
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


_per_thread = threading.local()


def _parser() -> etree.XMLParser:
    """This thread's hardened parser for the input; built once per thread.

    Reused rather than built per document: lxml documents a parser as safe
    but slower to share between threads (it locks), and reusing one in a
    thread keeps its libxml2 context instead of setting up a new one each
    time. lxml resets the context and error log before every parse, and
    documents use the thread's string dictionary either way, so nothing of
    one document reaches the next.

    No entity resolution and no network; lxml's defaults add no DTD loading
    or validation and no ``huge_tree``, so libxml2's own limits bound the
    nesting depth (256) and the node sizes (tests pin each of these).
    Comments, PIs, CDATA sections and whitespace are kept: the output
    carries them over.
    """
    parser: etree.XMLParser | None = getattr(_per_thread, "input", None)
    if parser is None:
        parser = _per_thread.input = etree.XMLParser(
            resolve_entities=False, no_network=True, strip_cdata=False
        )
    return parser


def _guard_parser() -> etree.XMLParser:
    """This thread's parser for the last guard: as hardened, and lean.

    The guard only counts elements, so it lets libxml2 drop what cannot hold
    one: blank text between elements, comments and PIs. Nothing else
    differs: it refuses what the input parser refuses (a repeated ``xml:id``
    included) and reads the same elements.
    """
    parser: etree.XMLParser | None = getattr(_per_thread, "guard", None)
    if parser is None:
        parser = _per_thread.guard = etree.XMLParser(
            resolve_entities=False,
            no_network=True,
            remove_blank_text=True,
            remove_comments=True,
            remove_pis=True,
        )
    return parser


MAX_OUTSIDE_NODES = 1000
"""Comments and PIs before or after ``<domain>``: lxml writes those in quadratic time."""

_NO_DTD = (
    "entities and DTDs are never expanded or fetched: send the plain libvirt domain XML "
    "without a DOCTYPE"
)


def _parse(data: bytes, parser: etree.XMLParser | None = None) -> etree._ElementTree:
    """Parse hardened; any XML error becomes one line naming the spot."""
    if not data or data.isspace():
        raise NotWellFormed("the domain XML is empty; pass the libvirt domain document")
    try:
        return etree.fromstring(data, parser or _parser()).getroottree()
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
    nothing. Without any DOCTYPE there is nothing to look for: libxml2 reads
    an entity reference that nothing declares as not well-formed (a test pins
    it), so only a document with a DOCTYPE is walked for entity references.
    """
    docinfo: Any = tree.docinfo  # lxml-stubs lack doctype, system_url and iterentities
    dtd = docinfo.internalDTD  # None exactly when there is no DOCTYPE at all
    if dtd is None:
        return
    if next(tree.getroot().iter(etree.Entity), None) is not None:
        raise UnsafeXml(f"domain XML has entity references; {_NO_DTD}")
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
    if (root.getprevious() is not None or root.getnext() is not None) and len(
        list(itertools.islice(outside, MAX_OUTSIDE_NODES + 1))
    ) > MAX_OUTSIDE_NODES:
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
    children = list(element)
    last = len(children) - 1
    for position, child in enumerate(children):
        if len(child):
            _indent(child, inner, unit)
        if child.tail is None:
            child.tail = sep if position == last else inner


@dataclasses.dataclass(frozen=True)
class _Layout:
    """Where new children of one parent go: the whitespace before each and before its end tag.

    ``closing`` is None for mixed content (text beside the elements), which
    gets no indentation at all; ``sep`` is then "".
    """

    sep: str
    closing: str | None


def _layout(parent: etree._Element, unit: str) -> _Layout:
    """The layout for new children of ``parent``; an empty parent gets its opening whitespace."""
    last = next(parent.iterchildren(reversed=True), None)
    if last is not None:
        closing = _whitespace(last.tail)  # the indentation of </parent>
        return _Layout(_space_before(last) if closing is not None else "", closing)
    closing = _whitespace(parent.text)
    outer = _space_before(parent) if closing is not None else ""
    sep = outer + unit if outer else ""
    if closing is None:
        return _Layout(sep, None)
    parent.text = sep or None
    return _Layout(sep, outer)


def _attach(parent: etree._Element, children: Sequence[etree._Element], layout: _Layout) -> None:
    """Append ``children`` (already indented for ``layout.sep``) after ``parent``'s last node.

    The last node is tracked rather than asked for: ``len()`` of an lxml
    element counts its children.
    """
    last = next(parent.iterchildren(reversed=True), None)
    for child in children:
        if last is not None and layout.closing is not None:
            last.tail = layout.sep or None
        parent.append(child)
        last = child
    if layout.closing is not None:
        children[-1].tail = layout.closing or None


def _address(parent: etree._Element, address: PciAddress, **extra: str) -> None:
    etree.SubElement(parent, "address", {**extra, **address.libvirt_attributes()})


def _build_hostdev(device: AddedDevice, managed: str) -> etree._Element:
    """The vfio ``<hostdev>`` for one device; the only markup the hook writes itself."""
    hostdev = etree.Element("hostdev", {"mode": "subsystem", "type": "pci", "managed": managed})
    etree.SubElement(hostdev, "driver", {"name": "vfio"})
    _address(etree.SubElement(hostdev, "source"), device.address)
    if device.guest_address is not None:
        _address(hostdev, device.guest_address, type="pci")
    etree.SubElement(hostdev, "alias", {"name": device.alias})
    return hostdev


_TEMPLATE_DEVICE = PciAddress(0, 0, 0, 0)
MAX_TEMPLATES = 16
"""Prepared ``<hostdev>`` shapes kept per thread (one per managed, guest address, indentation)."""
MAX_TEMPLATE_SPACE = 64
"""Indentation longer than this (sep and unit together) is never kept in a template."""


def _overwrite(element: etree._Element, address: PciAddress) -> None:
    for key, value in address.libvirt_attributes().items():
        element.set(key, value)


def _hostdev(device: AddedDevice, managed: str, sep: str = "", unit: str = "") -> etree._Element:
    """``_build_hostdev`` of ``device``, indented for ``sep``: a prepared template copied.

    Building five elements and validating their attributes costs about as much
    as a fifth of a parse; a copy of a prepared ``<hostdev>`` of the same shape
    (managed, with or without a guest address, this indentation) with its
    address and alias attributes overwritten in place is the same element for
    a little over half of that. Overwriting keeps each attribute where the
    template has it, so the order is ``_build_hostdev``'s (a test compares
    the two for every shape). Templates are per thread and never leave it;
    only copies go into a document.
    """
    guest = device.guest_address
    key = (managed, guest is not None, sep, unit)
    templates: dict[tuple[str, bool, str, str], etree._Element] | None = getattr(
        _per_thread, "templates", None
    )
    if templates is None:
        templates = _per_thread.templates = {}
    template = templates.get(key)
    if template is None:
        template = _build_hostdev(
            AddedDevice(_TEMPLATE_DEVICE, "", None if guest is None else _TEMPLATE_DEVICE), managed
        )
        _indent(template, sep, unit)
        if len(sep) + len(unit) <= MAX_TEMPLATE_SPACE:
            if len(templates) >= MAX_TEMPLATES:
                templates.clear()
            templates[key] = template
    hostdev = copy.copy(template)
    # driver, source, [address,] alias: the fixed shape _build_hostdev writes.
    children = list(hostdev)
    _overwrite(children[1][0], device.address)
    if guest is not None:
        _overwrite(children[2], guest)
    children[-1].set("name", device.alias)
    return hostdev


# --- reading the existing domain ----------------------------------------------

# Compiled XPath: several times faster than the equivalent find paths on this path.
_DOMAIN_FACTS = etree.XPath(
    "devices[1]"
    " | devices/hostdev[@type='pci']/source/address"
    " | devices/interface[@type='hostdev']/source/address[@type='pci']"
    " | devices/*/alias/@name"
    " | cpu/numa/cell[1]",
    smart_strings=False,
)
"""What the transform reads of the input, in one query (each query has a set-up cost).

Its parts are told apart by what they return: the ``<devices>`` element, host
source ``<address>`` elements (a PCI hostdev's, or an SR-IOV hostdev
interface's), alias names (strings) and guest NUMA ``<cell>`` elements.
"""
_GUEST_ADDRESSES = etree.XPath("devices/*/address[@type='pci']")


@dataclasses.dataclass
class _Facts:
    devices: etree._Element | None = None  # the first <devices>
    host_sources: list[etree._Element] = dataclasses.field(default_factory=list)
    aliases: list[str] = dataclasses.field(default_factory=list)
    has_cells: bool = False


def _facts(root: etree._Element) -> _Facts:
    facts = _Facts()
    for node in _nodes(_DOMAIN_FACTS, root):
        if isinstance(node, str):
            facts.aliases.append(node)
        elif node.tag == "address":
            facts.host_sources.append(node)
        elif node.tag == "devices":
            facts.devices = node
        else:
            facts.has_cells = True
    return facts


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


_WRITTEN_HOSTDEVS = etree.XPath(
    "/domain/devices/hostdev/alias | /domain/devices/hostdev/source/address"
)
"""The aliases and source addresses of each ``<hostdev>`` right under ``/domain/devices``.

None when the root is not ``<domain>``. In document order, so the first of
each kind per hostdev is what ``find("alias")`` and ``find("source/address")``
would give.
"""


def _verify(xml: bytes, added: Sequence[AddedDevice]) -> None:
    """The last guard: read the written bytes again; each added device must be there once.

    A real second parse of the bytes returned (with the lean guard parser),
    then one compiled query for every hostdev's aliases and source addresses,
    grouped by hostdev: its first alias names it, its first source address
    says which device it is.
    """
    try:
        root = _parse(xml, _guard_parser()).getroot()
    except NotWellFormed as err:
        raise OutputCheckFailed(
            f"the written domain XML does not read back ({err}); nothing was returned: "
            "report this with the input domain"
        ) from None
    names: dict[etree._Element, str | None] = {}
    addresses: dict[etree._Element, etree._Element] = {}
    for node in _nodes(_WRITTEN_HOSTDEVS, root):
        if node.tag == "alias":
            names.setdefault(node.getparent(), node.get("name"))
        else:
            addresses.setdefault(node.getparent().getparent(), node)
    found: dict[str | None, list[dict[str, str]]] = {}
    for hostdev, name in names.items():
        source = addresses.get(hostdev)
        if source is not None:
            attrs = {str(key): str(value) for key, value in source.attrib.items()}
            found.setdefault(name, []).append(attrs)
    for device in added:
        sources = found.get(device.alias, [])
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
    root: etree._Element, wanted: Sequence[HostDevice], options: TransformOptions, has_cells: bool
) -> Placement | None:
    """Guest NUMA placement of the devices without a guest address, when the domain has cells.

    ``numa`` is imported here: only a domain with guest NUMA cells needs it.
    """
    unplaced = [device for device in wanted if device.guest_address is None]
    if options.numa_placement == "off" or not unplaced or not has_cells:
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
    xml, added, already, warnings = _edit(domain_xml, devices, options)
    if added:
        # The edited tree is gone by now: the guard's parse reuses its memory.
        _verify(xml, added)
    return TransformResult(xml=xml, added=added, already_present=already, warnings=warnings)


def _edit(
    domain_xml: bytes, devices: Sequence[HostDevice], options: TransformOptions
) -> tuple[bytes, tuple[AddedDevice, ...], tuple[PciAddress, ...], tuple[str, ...]]:
    """Parse, decide and write: the output (the input when nothing is added) and what was done.

    Everything that holds the parsed tree lives in this frame, so the tree is
    freed when it returns, before the last guard parses the output.
    """
    tree = _read(domain_xml, options)
    root = tree.getroot()

    facts = _facts(root)
    present = {_address_of(el, "a host device source") for el in facts.host_sources}
    wanted = [device for device in devices if device.address not in present]
    already = tuple(device.address for device in devices if device.address in present)
    if not wanted:
        return domain_xml, (), already, ()

    placement = _placement(root, wanted, options, facts.has_cells)
    if placement is not None and placement.guest_addresses:
        wanted = [
            dataclasses.replace(device, guest_address=placement.guest_addresses[device.address])
            if device.guest_address is None and device.address in placement.guest_addresses
            else device
            for device in wanted
        ]
    if any(device.guest_address for device in wanted):
        _check_guest_addresses(root, wanted)

    cells = placement.cells if placement is not None else {}
    aliases = _free_aliases(facts.aliases, options.alias_prefix)
    added = tuple(
        AddedDevice(device.address, next(aliases), device.guest_address, cells.get(device.address))
        for device in wanted
    )
    unit = _indent_unit(root)
    devices_element = facts.devices
    if devices_element is None:
        # Appended empty (nothing inside to indent) to a <domain> that has content.
        devices_element = etree.Element("devices")
        _attach(root, [devices_element], _layout(root, unit))
    layout = _layout(devices_element, unit)
    controllers = placement.controllers if placement is not None else ()
    for controller in controllers:
        _indent(controller, layout.sep, unit)
    hostdevs = [_hostdev(device, options.managed, layout.sep, unit) for device in added]
    _attach(devices_element, [*controllers, *hostdevs], layout)
    warnings = placement.warnings if placement is not None else ()
    return _write(tree), added, already, warnings
