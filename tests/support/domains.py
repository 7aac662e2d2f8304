"""Hypothesis strategies for KubeVirt- and libvirt-shaped domain XML, and XML helpers.

The generated domains vary what real ones vary: indentation (tabs, spaces,
none), Go-style ``<x></x>`` or ``<x/>`` empties, quote style, comments,
existing hostdevs (KubeVirt's own, with ``ua-hostdevice-`` aliases), guest PCI
addresses on other devices, namespaced metadata and ``qemu:commandline``, an
XML declaration, comments and PIs before the root, CDATA that looks like markup,
and a missing or empty ``<devices>``.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import strategies as st
from lxml import etree

from hook_sidecar.pci import PciAddress

pci_addresses = st.builds(
    PciAddress,
    domain=st.sampled_from([0, 0, 0, 1]),
    bus=st.integers(0, 0xFF),
    slot=st.integers(0, 0x1F),
    function=st.integers(0, 7),
)


@dataclass(frozen=True)
class Style:
    unit: str  # one indentation level; "" means no whitespace at all
    quote: str
    go_empty: bool  # <x></x> as Go's encoding/xml writes, else <x/>

    def empty(self, tag: str, attrs: dict[str, str]) -> str:
        text = "".join(f" {k}={self.quote}{v}{self.quote}" for k, v in attrs.items())
        return f"<{tag}{text}></{tag}>" if self.go_empty else f"<{tag}{text}/>"


styles = st.builds(
    Style,
    unit=st.sampled_from(["\t", "  ", "    ", ""]),
    quote=st.sampled_from(['"', "'"]),
    go_empty=st.booleans(),
)


def _address_attrs(address: PciAddress) -> dict[str, str]:
    return address.libvirt_attributes()


@dataclass(frozen=True)
class GeneratedDomain:
    xml: bytes
    hostdev_sources: tuple[PciAddress, ...]
    guest_addresses: tuple[PciAddress, ...]
    aliases: tuple[str, ...]
    has_devices: bool


@st.composite
def domains(draw: st.DrawFn) -> GeneratedDomain:
    style = draw(styles)
    u = style.unit
    nl = "\n" if u else ""
    q = style.quote

    def line(depth: int, text: str) -> str:
        return f"{nl}{u * depth}{text}"

    devices: list[str] = []
    sources: list[PciAddress] = []
    guests: list[PciAddress] = []
    aliases: list[str] = []
    used_guest: set[PciAddress] = set()

    for index in range(draw(st.integers(0, 3))):
        alias = f"ua-disk{index}"
        aliases.append(alias)
        guest = ""
        if draw(st.booleans()):
            address = draw(pci_addresses.filter(lambda a: a not in used_guest))
            used_guest.add(address)
            guests.append(address)
            guest = line(3, style.empty("address", {"type": "pci", **_address_attrs(address)}))
        devices.append(
            line(2, f"<disk device={q}disk{q} type={q}file{q}>")
            + line(3, style.empty("source", {"file": f"/var/run/kubevirt/disk{index}.img"}))
            + line(3, style.empty("target", {"bus": "virtio", "dev": f"vd{'abcd'[index]}"}))
            + guest
            + line(3, style.empty("alias", {"name": alias}))
            + line(2, "</disk>")
        )
    for index in range(draw(st.integers(0, 3))):
        source = draw(pci_addresses.filter(lambda a: a not in sources))
        sources.append(source)
        alias = draw(st.sampled_from([f"ua-hostdevice-dev{index}", f"ua-qat-{index}"]))
        if alias in aliases:
            alias = f"ua-hostdevice-extra{index}"
        aliases.append(alias)
        devices.append(
            line(2, f"<hostdev mode={q}subsystem{q} type={q}pci{q} managed={q}no{q}>")
            + line(3, "<source>")
            + line(4, style.empty("address", _address_attrs(source)))
            + line(3, "</source>")
            + line(3, style.empty("alias", {"name": alias}))
            + line(2, "</hostdev>")
        )
    if draw(st.booleans()):
        devices.insert(
            draw(st.integers(0, len(devices))),
            line(2, "<!-- a comment with </devices> and <devices/> inside -->"),
        )
    devices = draw(st.permutations(devices))

    devices_mode = draw(st.sampled_from(["children", "children", "empty", "missing"]))
    if devices_mode == "children" and devices:
        devices_block = line(1, "<devices>") + "".join(devices) + line(1, "</devices>")
    elif devices_mode == "missing":
        devices_block = ""
    else:
        devices_block = line(1, style.empty("devices", {}))
    has_devices = devices_mode != "missing"
    if devices_mode != "children" or not devices:
        sources, guests, aliases = [], [], []

    metadata = ""
    if draw(st.booleans()):
        metadata = (
            line(1, "<metadata>")
            + line(2, f"<kubevirt xmlns={q}http://kubevirt.io{q}>")
            + line(3, "<uid>0d7a3e1c</uid>")
            + line(3, "<devices><device>looks like libvirt, is not</device></devices>")
            + line(2, "</kubevirt>")
            + line(1, "</metadata>")
        )
    qemu = ""
    if draw(st.booleans()):
        qemu = (
            line(1, "<qemu:commandline>")
            + line(2, style.empty("qemu:arg", {"value": "-nodefaults"}))
            + line(1, "</qemu:commandline>")
        )
    description = ""
    if draw(st.booleans()):
        description = line(1, "<description><![CDATA[ </devices> <devices/> ]]></description>")
    before_devices = draw(st.booleans())
    body = (
        line(1, "<name>default_vm</name>")
        + description
        + line(1, f"<memory unit={q}b{q}>1073741824</memory>")
        + (metadata if before_devices else "")
        + devices_block
        + (metadata if not before_devices else "")
        + line(1, "<os>")
        + line(2, "<type>hvm</type>")
        + line(1, "</os>")
        + qemu
    )
    declaration = draw(st.sampled_from(["", '<?xml version="1.0" encoding="UTF-8"?>\n']))
    prolog = draw(st.sampled_from(["", "<!-- generated -->\n", "<?tool x?>\n<!-- a -->"]))
    xml = (
        f"{declaration}{prolog}<domain type={q}kvm{q} "
        f"xmlns:qemu={q}http://libvirt.org/schemas/domain/qemu/1.0{q}>"
        f"{body}{nl}</domain>{nl}"
    )
    return GeneratedDomain(
        xml=xml.encode(),
        hostdev_sources=tuple(sources),
        guest_addresses=tuple(guests),
        aliases=tuple(aliases),
        has_devices=has_devices,
    )


def canonical(
    xml: bytes, drop_aliases: frozenset[str] = frozenset(), drop_devices: bool = False
) -> bytes:
    """C14N with whitespace-only text dropped and the named hostdevs removed.

    ``drop_devices`` also removes ``<devices>`` itself: for a domain that had
    none, the transform's new ``<devices>`` is part of what it added.
    """
    root = etree.fromstring(xml)
    devices = root.find("devices")
    if devices is not None:
        for hostdev in devices.findall("hostdev"):
            alias = hostdev.find("alias")
            if alias is not None and alias.get("name") in drop_aliases:
                devices.remove(hostdev)
        if drop_devices:
            root.remove(devices)
    for element in root.iter():
        if element.text is not None and not element.text.strip():
            element.text = None
        if element.tail is not None and not element.tail.strip():
            element.tail = None
    return etree.tostring(root, method="c14n")


def single_insertion(before: bytes, after: bytes) -> bool:
    """Whether ``after`` is ``before`` with exactly one contiguous run of bytes inserted."""
    if len(after) < len(before):
        return False
    prefix = 0
    limit = len(before)
    while prefix < limit and before[prefix] == after[prefix]:
        prefix += 1
    suffix = 0
    while (
        suffix < limit - prefix
        and before[len(before) - 1 - suffix] == after[len(after) - 1 - suffix]
    ):
        suffix += 1
    return prefix + suffix == len(before)
