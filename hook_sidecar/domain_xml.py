"""Reading a libvirt domain XML safely and as libvirt reads it, and writing it back laid out.

Every decision is taken on the document libxml2 parsed, never on raw bytes.
Bounds: the size cap is checked before parsing; libxml2 without
``huge_tree`` refuses nesting deeper than 256 and text nodes over 10 MB; at
most ``MAX_OUTSIDE_NODES`` comments and PIs may stand outside ``<domain>``
(lxml writes those in quadratic time).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

from lxml import etree

from hook_sidecar.errors import InvalidInput
from hook_sidecar.hostdevs import TransformOptions


class DomainXmlError(InvalidInput):
    """The domain XML is not something the hook can safely read."""


class NotWellFormed(DomainXmlError):
    """The bytes are not well-formed XML."""


class NotADomain(DomainXmlError):
    """Well-formed XML, but not a libvirt ``<domain>`` the hook can read as libvirt does."""


class UnsafeXml(DomainXmlError):
    """A DTD that declares or references anything: refused, never expanded or fetched."""


class TooLarge(DomainXmlError):
    """Larger than the configured cap; checked before parsing."""


MAX_OUTSIDE_NODES = 1000
"""Comments and PIs before or after ``<domain>``: lxml writes those in quadratic time."""

_NO_DTD = (
    "entities and DTDs are never expanded or fetched: send the plain libvirt domain XML "
    "without a DOCTYPE"
)


def parser(lean: bool = False) -> etree.XMLParser:
    """A hardened parser: no entity expansion, no network, no DTD loading, no ``huge_tree``.

    The full one keeps comments, PIs, CDATA and whitespace (the output carries
    them over); ``lean`` drops what cannot hold an element (blank text,
    comments, PIs), for reading the output back.
    """
    if lean:
        return etree.XMLParser(
            resolve_entities=False,
            no_network=True,
            remove_blank_text=True,
            remove_comments=True,
            remove_pis=True,
        )
    return etree.XMLParser(resolve_entities=False, no_network=True, strip_cdata=False)


def parse(data: bytes, lean: bool = False) -> etree._ElementTree:
    """Parse hardened; any XML error becomes one line naming the spot."""
    if not data or data.isspace():
        raise NotWellFormed("the domain XML is empty; pass the libvirt domain document")
    try:
        return etree.fromstring(data, parser(lean)).getroottree()
    except etree.XMLSyntaxError as err:
        line, column = err.position
        # libxml2's message ends in the position (and may hold newlines); errors are one line.
        message = " ".join(err.msg.split(", line ")[0].split())
        raise NotWellFormed(
            f"domain XML is not well-formed at line {line}, column {column}: {message}"
        ) from None


def _drop_bare_doctype(tree: etree._ElementTree) -> None:
    """Drop a bare ``<!DOCTYPE name>``; refuse a DOCTYPE that declares or references anything.

    An ATTLIST alone changes how libxml2 reads attribute values, so any
    declaration is refused; the internal subset is judged by libxml2's own
    rendering of it (a DOCTYPE it writes bare declares nothing). libxml2 reads
    an undeclared entity reference as not well-formed, so only a document
    with a DOCTYPE can hold one.
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


def read(domain_xml: bytes, options: TransformOptions) -> etree._ElementTree:
    """The checked, parsed domain: size, well-formedness, DOCTYPE, root element."""
    if len(domain_xml) > options.max_bytes:
        raise TooLarge(
            f"domain XML is {len(domain_xml)} bytes, over the limit of {options.max_bytes}; "
            "raise --max-domain-bytes if this domain is genuine"
        )
    tree = parse(domain_xml)
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


def write(tree: etree._ElementTree) -> bytes:
    """The tree as the hook's output: UTF-8 with an XML declaration."""
    return etree.tostring(tree, encoding="UTF-8", xml_declaration=True)


def attribute(element: etree._Element, name: str) -> str | None:
    """Attribute ``name`` of an element libvirt reads; refuses one in a namespace.

    libvirt and Go's encoding/xml read an attribute by its local name whatever
    its namespace (libvirt the first, Go the last of several), so a prefixed
    ``q:bus`` is a ``bus`` to them: rather than guess which one wins, such a
    document is refused.
    """
    for key in map(str, element.attrib):
        if key.endswith("}" + name):
            raise NotADomain(
                f"<{element.tag}> at line {element.sourceline} has the attribute {key} in a "
                f"namespace; libvirt and KubeVirt read it as {name!r} whatever its namespace, "
                f"so write {name}= without a prefix"
            )
    return element.get(name)


def child(element: etree._Element, tag: str) -> etree._Element | None:
    """The first child element named ``tag`` in no namespace, as libvirt's ``./tag`` finds it."""
    return next(element.iterchildren(tag), None)


# --- layout of new elements -----------------------------------------------------------


def indent_unit(root: etree._Element) -> str:
    """One level of indentation: ``<domain>``'s first child's less ``</domain>``'s; else "  "."""
    first = root.text or ""
    last = root[-1].tail or ""
    if "\n" in first and not first.strip() and not last.strip():
        inner, outer = first.rpartition("\n")[2], last.rpartition("\n")[2]
        if inner.startswith(outer) and len(inner) > len(outer):
            return inner[len(outer) :]
    return "  "


def _indentation(element: etree._Element) -> str | None:
    """The blanks on the line where ``element`` starts; None when it does not start a line."""
    previous = element.getprevious()
    parent = element.getparent()
    if parent is None:
        return ""
    text = (previous.tail if previous is not None else parent.text) or ""
    if "\n" not in text or text.strip():
        return None
    return text.rpartition("\n")[2]


def _indent(element: etree._Element, sep: str, unit: str) -> None:
    """Indent a new element's subtree: each level on its own line, one ``unit`` deeper."""
    if not len(element):
        return
    inner = sep + unit
    element.text = inner
    for position, sub in enumerate(element):
        _indent(sub, inner, unit)
        sub.tail = sep if position == len(element) - 1 else inner


def append(parent: etree._Element, new: Sequence[etree._Element], unit: str) -> None:
    """Append ``new`` to ``parent``, laid out by one rule.

    In a document written with line breaks each new element starts a line one
    ``unit`` deeper than ``parent``'s own, and ``parent``'s end tag keeps the
    whitespace it had; where ``parent`` starts no line, or where the new
    elements would go into text (mixed content), no whitespace is added.
    """
    last = parent[-1] if len(parent) else None
    before = parent.text if last is None else last.tail
    outer = _indentation(parent)
    if parent.getparent() is None and "\n" not in (before or ""):
        outer = None  # a <domain> written without line breaks
    if outer is None or (before or "").strip():
        parent.extend(new)
        return
    sep = "\n" + outer + unit
    closing = before or "\n" + outer
    if last is None:
        parent.text = sep
    else:
        last.tail = sep
    for element in new:
        _indent(element, sep, unit)
        element.tail = sep
        parent.append(element)
    new[-1].tail = closing
