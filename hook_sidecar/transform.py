"""The domain transform: add vfio ``<hostdev>`` elements to a libvirt domain XML.

Pure: bytes in, bytes out, no I/O and no grpc, so the CLI, the gRPC server and
the tests all run exactly the same code.

Why the output is spliced rather than re-serialised: virt-launcher hands us
XML written by Go's encoding/xml (``<x></x>``, double quotes, its own
escapes). Re-serialising with lxml would rewrite every empty element and
escape, and a reviewer comparing input and output could no longer see what
the hook did. So lxml parses (hardened) and answers every structural
question, and the output is the input bytes with the new block inserted
before the right ``</devices>``: a unified diff shows exactly the added lines.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache

from lxml import etree

from hook_sidecar.errors import InvalidInput, PreconditionFailed
from hook_sidecar.hostdevs import (
    AddedDevice,
    HostDevice,
    Managed,
    TransformOptions,
    TransformResult,
)
from hook_sidecar.pci import PciAddress, PciAddressError


class DomainXmlError(InvalidInput):
    """The domain XML is not something the hook can safely read."""


class NotWellFormed(DomainXmlError):
    """The bytes are not well-formed XML."""


class NotADomain(DomainXmlError):
    """Well-formed XML, but not a libvirt ``<domain>``."""


class UnsafeXml(DomainXmlError):
    """A DTD with entities or an external reference: refused, never expanded."""


class TooLarge(DomainXmlError):
    """Larger than the configured cap; checked before parsing."""


class GuestAddressConflict(PreconditionFailed):
    """A requested guest PCI address is already taken in the domain."""


class DuplicateDevice(InvalidInput):
    """The same host PCI address was requested twice."""


# --- hardened parsing --------------------------------------------------------

_thread_state = threading.local()


def _parser() -> etree.XMLParser:
    """One parser per thread: lxml parsers keep per-parse state and error logs."""
    parser = getattr(_thread_state, "parser", None)
    if parser is None:
        parser = etree.XMLParser(
            resolve_entities=False,
            load_dtd=False,
            dtd_validation=False,
            no_network=True,
            huge_tree=False,
            remove_blank_text=False,
            remove_comments=False,
            strip_cdata=False,
            collect_ids=False,
        )
        _thread_state.parser = parser
    return parser


_UTF8_BOM = b"\xef\xbb\xbf"
_XML_DECL_RE = re.compile(r"^<\?xml[^>]*\?>")
_UTF8_NAMES = frozenset({"UTF-8", "UTF8", "US-ASCII", "ASCII"})


def _parse(data: bytes) -> tuple[bytes, etree._Element]:
    """Parse hardened; return the (possibly normalised) bytes the splice works on.

    Normalisation only ever happens for inputs Go's encoding/xml would reject
    or that must not carry on: a byte-order mark, a bare ``<!DOCTYPE domain>``,
    a non-UTF-8 encoding declaration.
    """
    if data.startswith(_UTF8_BOM):
        data = data[len(_UTF8_BOM) :]
    if b"<!DOCTYPE" in data:
        data = _drop_bare_doctype(data)
    root = _parse_bytes(data)
    encoding = (root.getroottree().docinfo.encoding or "UTF-8").upper()
    if encoding not in _UTF8_NAMES:
        data = _to_utf8(data, encoding)
        root = _parse_bytes(data)
    return data, root


def _parse_bytes(data: bytes) -> etree._Element:
    if data.isspace() or not data:
        raise NotWellFormed("the domain XML is empty; pass the libvirt domain document")
    try:
        return etree.fromstring(data, _parser())
    except etree.XMLSyntaxError as err:
        line, column = err.position if err.position else (0, 0)
        # libxml2 messages may end in a newline; errors are one line.
        message = " ".join((err.msg or str(err)).split(", line ")[0].split())
        raise NotWellFormed(
            f"domain XML is not well-formed at line {line}, column {column}: {message}"
        ) from None


def _to_utf8(data: bytes, encoding: str) -> bytes:
    try:
        text = data.decode(encoding)
    except (LookupError, UnicodeDecodeError) as err:
        raise NotWellFormed(
            f"domain XML declares encoding {encoding} but cannot be decoded with it: {err}"
        ) from None
    text = _XML_DECL_RE.sub('<?xml version="1.0" encoding="UTF-8"?>', text.lstrip("\ufeff"))
    return text.encode("utf-8")


def _drop_bare_doctype(data: bytes) -> bytes:
    """Drop a bare ``<!DOCTYPE name>``; refuse any DTD that could declare or fetch anything.

    Decided on the raw bytes before libxml2 sees the document, so no entity
    is ever declared, expanded or fetched, however the parser is configured.
    """
    spans = _hidden_spans(data)
    position = data.find(b"<!DOCTYPE")
    while position >= 0 and not _outside(spans, position):
        position = data.find(b"<!DOCTYPE", position + 1)
    if position < 0:
        return data  # only inside comments or CDATA: not a DOCTYPE at all
    match = _BARE_DOCTYPE.match(data, position)
    if match is None:
        raise UnsafeXml(
            "domain XML has a DOCTYPE with an internal subset or an external DTD; "
            "entities are never expanded or fetched: send the plain libvirt domain XML "
            "without a DOCTYPE"
        )
    return data[:position] + data[match.end() :]


# --- locating the splice point ----------------------------------------------

# Markup that may contain text looking like a tag. Attribute values and
# character data cannot contain ``<`` in well-formed XML, so comments, CDATA
# sections and processing instructions are the only places where
# ``</devices>`` can stand without being the end tag. Scanning uses
# bytes.find (C speed); a regex alternation over the whole document costs
# more than parsing it.
_HIDING = ((b"<!--", b"-->"), (b"<![CDATA[", b"]]>"), (b"<?", b"?>"))
_ATTRS = rb"(?:\s+[^\s=/>]+\s*=\s*(?:\"[^\"]*\"|'[^']*'))*"
_END_TAIL = re.compile(rb"\s*>")
_BARE_DOCTYPE = re.compile(rb"<!DOCTYPE\s+[^\s>\[]+\s*>")


def _hidden_spans(data: bytes) -> list[tuple[int, int]]:
    """Byte ranges of comments, CDATA sections and PIs, in document order."""
    spans: list[tuple[int, int]] = []
    position = 0
    while True:
        starts = [(data.find(opener, position), opener, closer) for opener, closer in _HIDING]
        found = [item for item in starts if item[0] >= 0]
        if not found:
            return spans
        start, opener, closer = min(found)
        end = data.find(closer, start + len(opener))
        end = len(data) if end < 0 else end + len(closer)
        spans.append((start, end))
        position = end


def _outside(spans: list[tuple[int, int]], position: int) -> bool:
    return not any(start <= position < end for start, end in spans)


@lru_cache(maxsize=8)
def _empty_tag(name: str) -> re.Pattern[bytes]:
    return re.compile(re.escape(name.encode()) + _ATTRS + rb"\s*/>")


def _may_hide(data: bytes, root: etree._Element) -> bool:
    """Whether the document has any comment, PI or CDATA section at all.

    Asking the parsed tree is far cheaper than scanning the bytes, and the
    common case (KubeVirt's domains have none) then skips the scan.
    """
    tree_nodes = root.iter(etree.Comment, etree.PI)
    outside = [*root.itersiblings(preceding=True), *root.itersiblings()]
    return next(tree_nodes, None) is not None or bool(outside) or b"<![CDATA[" in data


def _closes(
    data: bytes, root: etree._Element, name: str, may_be_empty: bool
) -> list[tuple[int, int, bool]]:
    """Every ``</name>`` (and ``<name .../>`` if ``may_be_empty``) outside hidden markup."""
    spans = _hidden_spans(data) if _may_hide(data, root) else []
    raw = name.encode()
    found: list[tuple[int, int, bool]] = []
    end_tag = b"</" + raw
    position = data.find(end_tag)
    while position >= 0:
        tail = _END_TAIL.match(data, position + len(end_tag))
        if tail is not None and _outside(spans, position):
            found.append((position, tail.end(), False))
        position = data.find(end_tag, position + 1)
    if may_be_empty:
        start_tag = b"<" + raw
        empty = _empty_tag(name)
        position = data.find(start_tag)
        while position >= 0:
            match = empty.match(data, position + 1)
            if match is not None and _outside(spans, position):
                found.append((position, match.end(), True))
            position = data.find(start_tag, position + 1)
        found.sort()
    return found


@dataclass(frozen=True)
class _Close:
    """Where an element ends in the raw bytes: its end tag, or its empty-element tag."""

    start: int
    end: int
    empty: bool


def _same_name(element: etree._Element, name: str) -> list[etree._Element]:
    """Elements written ``<name>`` (no prefix) in ``element``'s subtree, in document order."""
    return [el for el in element.iter("{*}" + name) if el.prefix is None]


def _inside(element: etree._Element, ancestor: etree._Element) -> bool:
    return any(parent is ancestor for parent in element.iterancestors())


def _locate_close(data: bytes, root: etree._Element, target: etree._Element) -> _Close:
    """Find the bytes that close ``target``, which is the root or a child of it.

    Unprefixed elements of one name close in post-order, so the target's close
    is the one preceded by the closes of every same-named element that starts
    before it (none of them can be its ancestor) and of its own same-named
    descendants.
    """
    name = etree.QName(target).localname
    everything = _same_name(root, name)
    before = everything.index(target)
    inside = sum(1 for el in everything[before + 1 :] if _inside(el, target))
    # Only an element without children or text can be written as <name/>.
    may_be_empty = any(not len(el) and not el.text for el in everything)
    closes = _closes(data, root, name, may_be_empty)
    if len(closes) != len(everything):
        # The tokenizer and libxml2 disagree; never guess where to write.
        raise NotWellFormed(
            f"could not locate the end of <{name}> unambiguously; "
            "send the domain XML as libvirt or KubeVirt writes it"
        )
    return _Close(*closes[before + inside])


# --- rendering ----------------------------------------------------------------


def _escape(value: str) -> str:
    if "&" in value or "<" in value or '"' in value:
        value = value.replace("&", "&amp;").replace("<", "&lt;").replace('"', "&quot;")
    return value


def _address_markup(address: PciAddress, extra: str = "") -> str:
    return (
        f'<address{extra} domain="0x{address.domain:04x}" bus="0x{address.bus:02x}" '
        f'slot="0x{address.slot:02x}" function="0x{address.function:x}"/>'
    )


def _hostdev_markup(device: AddedDevice, managed: Managed, sep: str, unit: str) -> str:
    """One ``<hostdev>``; ``sep`` is the whitespace before it, children go one ``unit`` deeper.

    Written as a template rather than built as a tree: it is on every
    callback's path and is the only markup the hook ever writes.
    """
    inner = sep + unit if sep else ""
    deeper = inner + unit if inner else ""
    guest = ""
    if device.guest_address is not None:
        guest = inner + _address_markup(device.guest_address, ' type="pci"')
    return (
        f'<hostdev mode="subsystem" type="pci" managed="{managed}">'
        f'{inner}<driver name="vfio"/>'
        f"{inner}<source>{deeper}{_address_markup(device.address)}{inner}</source>"
        f'{guest}{inner}<alias name="{_escape(device.alias)}"/>'
        f"{sep}</hostdev>"
    )


Render = Callable[[str], str]
"""Markup for the new children, given the whitespace that precedes each child."""


def _whitespace(text: str | None) -> str | None:
    """``text`` when it is pure indentation, else None (mixed content is left alone)."""
    if text is None:
        return ""
    return text if not text.strip() else None


def _leading_space(element: etree._Element) -> str:
    """The indentation written before ``element``."""
    previous = element.getprevious()
    parent = element.getparent()
    text = previous.tail if previous is not None else (parent.text if parent is not None else "")
    return _whitespace(text) or ""


def _indent_unit(root: etree._Element) -> str:
    """One level of indentation as the document writes it (two spaces if it cannot tell)."""
    if len(root):
        first = _whitespace(root.text) or ""
        last = _whitespace(root[-1].tail) or ""
        if first.startswith(last) and len(first) > len(last):
            return first[len(last) :]
        if not first:
            return ""
    return "  "


def _append_children(
    data: bytes,
    root: etree._Element,
    parent: etree._Element,
    render: Render,
    unit: str,
) -> bytes:
    """Insert ``nodes`` as the last children of ``parent``, indented like their siblings."""
    close = _locate_close(data, root, parent)
    if len(parent):
        sep = _whitespace(parent.text) or ""
        before_close = _whitespace(parent[-1].tail)
        closing = None
    else:
        outer = _leading_space(parent)
        sep = outer + unit if outer else ""
        before_close = _whitespace(parent.text)
        closing = outer
    block = render(sep)
    if close.empty:
        open_tag = re.sub(rb"\s*/>$", b">", data[close.start : close.end])
        name = etree.QName(parent).localname
        rest = (closing or "") + f"</{name}>"
        return data[: close.start] + open_tag + (block + rest).encode() + data[close.end :]
    position = close.start
    if before_close:
        raw = before_close.encode()
        if data[position - len(raw) : position] == raw:
            position -= len(raw)
            if closing is not None:
                # An empty parent's inner whitespace is replaced by the new block.
                return data[:position] + (block + closing).encode() + data[close.start :]
            return data[:position] + block.encode() + data[position:]
    return data[:position] + (block + (closing or "")).encode() + data[position:]


# --- reading the existing domain ----------------------------------------------

_HOST_SOURCES = etree.XPath(
    "devices/hostdev[@type='pci']/source/address"
    " | devices/interface[@type='hostdev']/source/address[@type='pci']"
)
_GUEST_ADDRESSES = etree.XPath("devices/*/address[@type='pci']")
_ALIASES = etree.XPath("devices/*/alias/@name")


def _elements(query: etree.XPath, root: etree._Element) -> list[etree._Element]:
    """Run an element-selecting XPath; typed, because lxml returns a loose union."""
    result = query(root)
    return (
        [item for item in result if isinstance(item, etree._Element)]
        if isinstance(result, list)
        else []
    )


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
    used = {
        _address_of(el, "a device's guest address"): el.getparent()
        for el in _elements(_GUEST_ADDRESSES, root)
    }
    for device in wanted:
        holder = used.get(device.guest_address) if device.guest_address else None
        if holder is not None:
            raise GuestAddressConflict(
                f"guest PCI address {device.guest_address} requested for {device.address} "
                f"is already used by {_describe(holder)}; choose a free guest address "
                "or drop the guest placement"
            )


def _check_unique(devices: Sequence[HostDevice]) -> None:
    if len(devices) < 2:
        return
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


# --- the transform ------------------------------------------------------------


_DEFAULT_OPTIONS = TransformOptions()


def transform(
    domain_xml: bytes,
    devices: Sequence[HostDevice],
    options: TransformOptions | None = None,
) -> TransformResult:
    """Return ``domain_xml`` with one vfio ``<hostdev>`` per device not already present.

    Idempotent: devices whose host address is already a hostdev source are
    skipped, so running the output through again with the same devices gives
    the same bytes.
    """
    options = options or _DEFAULT_OPTIONS
    if options.managed not in ("no", "yes"):
        raise InvalidInput(f"managed must be 'no' or 'yes', not {options.managed!r}")
    if len(domain_xml) > options.max_bytes:
        raise TooLarge(
            f"domain XML is {len(domain_xml)} bytes, over the limit of {options.max_bytes}; "
            "raise --max-domain-bytes if this domain is genuine"
        )
    _check_unique(devices)
    data, root = _parse(domain_xml)
    if not isinstance(root.tag, str) or root.tag != "domain":
        raise NotADomain(
            f"root element is <{root.tag}>, not <domain>; pass a libvirt domain XML "
            "(virsh dumpxml, or what virt-launcher sends)"
        )
    if not len(root):
        raise NotADomain("<domain> has no content; pass a complete libvirt domain XML")

    present = {_address_of(el, "a host device source"): el for el in _elements(_HOST_SOURCES, root)}
    wanted = [device for device in devices if device.address not in present]
    already = tuple(device.address for device in devices if device.address in present)
    if not wanted:
        return TransformResult(xml=data, already_present=already)

    if any(device.guest_address for device in wanted):
        _check_guest_addresses(root, wanted)
    taken = _ALIASES(root)
    names = [str(name) for name in taken] if isinstance(taken, list) else []
    aliases = _free_aliases(names, options.alias_prefix)
    added = tuple(
        AddedDevice(device.address, next(aliases), device.guest_address) for device in wanted
    )
    unit = _indent_unit(root)

    def hostdevs(sep: str) -> str:
        return "".join(sep + _hostdev_markup(d, options.managed, sep, unit) for d in added)

    def devices_with_hostdevs(sep: str) -> str:
        inner = sep + unit if sep else ""
        return f"{sep}<devices>{hostdevs(inner)}{sep}</devices>"

    devices_element = next(root.iterchildren("devices"), None)
    if devices_element is None:
        data = _append_children(data, root, root, devices_with_hostdevs, unit)
    else:
        data = _append_children(data, root, devices_element, hostdevs, unit)
    return TransformResult(xml=data, added=added, already_present=already)
