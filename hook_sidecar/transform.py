"""The domain transform: add vfio ``<hostdev>`` elements to a libvirt domain XML.

Pure: bytes in, bytes out, no I/O and no grpc, so the CLI, the gRPC server and
the tests all run exactly the same code. The input is parsed (``domain_xml``),
read the way libvirt reads it, edited as a tree and written back by lxml as
UTF-8; ``normalized`` writes the input the same way, so a diff of the two
shows exactly the added lines. As a last guard the written bytes are read
again and must hold every added device exactly once.

lxml keeps every element and attribute name it parses in a dictionary of the
calling thread for the thread's life: a long-lived caller bounds that itself
(the server runs the hook on threads it replaces, ``server.RecyclingExecutor``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence

from lxml import etree

from hook_sidecar import domain_xml
from hook_sidecar.domain_xml import (
    DomainXmlError,
    NotADomain,
    NotWellFormed,
    TooLarge,
    UnsafeXml,
    attribute,
    child,
)
from hook_sidecar.errors import InvalidInput, PreconditionFailed
from hook_sidecar.hostdevs import (
    AddedDevice,
    ExpanderBus,
    HostDevice,
    Placement,
    RootPort,
    TransformOptions,
    TransformResult,
)
from hook_sidecar.pci import PciAddress, PciAddressError

__all__ = [
    "DomainXmlError",
    "DuplicateDevice",
    "GuestAddressConflict",
    "NotADomain",
    "NotWellFormed",
    "OutputCheckFailed",
    "TooLarge",
    "UnsafeXml",
    "check_output",
    "normalized",
    "transform",
]


class OutputCheckFailed(DomainXmlError):
    """The written domain, read again, does not hold each added device exactly once."""


class GuestAddressConflict(PreconditionFailed):
    """A requested guest PCI address is already taken in the domain."""


class DuplicateDevice(InvalidInput):
    """The same host PCI address was requested twice."""


# --- reading the existing domain, as libvirt reads it ----------------------------------


class _Facts:
    """What the transform reads of ``./devices/*``: sources, aliases, guest addresses."""

    def __init__(self) -> None:
        self.devices: etree._Element | None = None  # the first <devices>
        self.present: set[PciAddress] = set()
        self.aliases: set[str] = set()
        self.guest: list[tuple[etree._Element, etree._Element]] = []
        """Each device with a guest ``<address type="pci">``, and that address."""


def _address_of(element: etree._Element, what: str) -> PciAddress:
    names = ("domain", "bus", "slot", "function")
    values = {name: value for name in names if (value := attribute(element, name)) is not None}
    try:
        return PciAddress.from_libvirt(values)
    except PciAddressError as err:
        raise NotADomain(
            f"{what} at line {element.sourceline} has an invalid PCI address: {err}"
        ) from None


def _host_source(device: etree._Element) -> etree._Element | None:
    """The host address libvirt passes through: a PCI hostdev's, or a hostdev interface's."""
    if device.tag not in ("hostdev", "interface"):
        return None
    if attribute(device, "type") != ("pci" if device.tag == "hostdev" else "hostdev"):
        return None
    source = child(device, "source")
    address = child(source, "address") if source is not None else None
    if address is None or (device.tag == "interface" and attribute(address, "type") != "pci"):
        return None
    return address


def _facts(root: etree._Element) -> _Facts:
    facts = _Facts()
    for devices in root.iterchildren("devices"):
        facts.devices = devices if facts.devices is None else facts.devices
        for device in devices:  # comments and PIs have no source, alias or address
            source = _host_source(device)
            if source is not None:
                facts.present.add(_address_of(source, "a host device source"))
            for alias in device.iterchildren("alias"):
                name = attribute(alias, "name")
                if name is not None:
                    facts.aliases.add(name)
            address = child(device, "address")
            if address is not None and attribute(address, "type") == "pci":
                facts.guest.append((device, address))
    return facts


def _describe(device: etree._Element) -> str:
    """A short name a user can find in the domain XML: tag, identifying attributes, alias."""
    attrs = " ".join(
        f"{key}='{device.get(key)}'" for key in ("type", "index", "model") if device.get(key)
    )
    text = f"<{device.tag}{' ' + attrs if attrs else ''}>"
    alias = child(device, "alias")
    if alias is not None and alias.get("name"):
        text += f" (alias {alias.get('name')})"
    target = child(device, "target")
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


def _check_guest_addresses(facts: _Facts, wanted: Sequence[HostDevice]) -> None:
    """Refuse a guest address any device of the domain already has (disk, interface, ...)."""
    if not any(device.guest_address for device in wanted):
        return
    used: dict[PciAddress, etree._Element] = {}
    for holder, address in facts.guest:
        used.setdefault(_address_of(address, "a device's guest address"), holder)
    for device in wanted:
        if device.guest_address is not None and device.guest_address in used:
            taken = used[device.guest_address]
            raise GuestAddressConflict(
                f"guest PCI address {device.guest_address} requested for {device.address} "
                f"is already used by {_describe(taken)}; choose a free guest address "
                "or drop the guest placement"
            )


def _check_request(devices: Sequence[HostDevice], options: TransformOptions) -> None:
    if options.managed not in ("no", "yes"):
        raise InvalidInput(f"managed must be 'no' or 'yes', not {options.managed!r}")
    if options.numa_placement not in ("auto", "off", "strict"):
        raise InvalidInput(
            f"NUMA placement must be 'auto', 'off' or 'strict', not {options.numa_placement!r}"
        )
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


# --- writing: the elements ---------------------------------------------------------------


def _element(
    parent: etree._Element | None, tag: str, attrs: dict[str, str] | None = None
) -> etree._Element:
    if parent is None:
        return etree.Element(tag, attrs)
    return etree.SubElement(parent, tag, attrs)


def _hostdev(device: AddedDevice, managed: str) -> etree._Element:
    """The vfio ``<hostdev>`` for one device."""
    hostdev = _element(None, "hostdev", {"mode": "subsystem", "type": "pci", "managed": managed})
    _element(hostdev, "driver", {"name": "vfio"})
    _element(_element(hostdev, "source"), "address", device.address.libvirt_attributes())
    if device.guest_address is not None:
        _element(hostdev, "address", {"type": "pci", **device.guest_address.libvirt_attributes()})
    _element(hostdev, "alias", {"name": device.alias})
    return hostdev


def _controller(new: ExpanderBus | RootPort) -> etree._Element:
    """The ``<controller>`` for one of placement's new expander buses or root ports."""
    model = "pcie-expander-bus" if isinstance(new, ExpanderBus) else "pcie-root-port"
    element = _element(None, "controller", {"type": "pci", "index": str(new.index), "model": model})
    if isinstance(new, ExpanderBus):
        _element(element, "model", {"name": "pxb-pcie"})
        _element(_element(element, "target", {"busNr": str(new.bus_nr)}), "node").text = str(
            new.cell
        )
        return element
    _element(element, "model", {"name": "pcie-root-port"})
    # libvirt's own default port for a root port is (slot << 3) | function.
    _element(element, "target", {"chassis": str(new.chassis), "port": f"0x{new.slot << 3:x}"})
    address = PciAddress(0, new.bus, new.slot, 0).libvirt_attributes()
    _element(element, "address", {"type": "pci", **address})
    return element


# --- the last guard ---------------------------------------------------------------------


def check_output(xml: bytes, added: Sequence[AddedDevice]) -> None:
    """Read the written domain again: each added device must be one ``<hostdev>`` in it.

    Each ``<hostdev>`` right under ``/domain/devices`` is named by its first
    alias and identified by its first source address; every added device's
    alias must name exactly one of them, with the device's address.
    """
    try:
        root = domain_xml.parse(xml, lean=True).getroot()
    except NotWellFormed as err:
        raise OutputCheckFailed(
            f"the written domain XML does not read back ({err}); nothing was returned: "
            "report this with the input domain"
        ) from None
    found: dict[str | None, list[dict[str, str]]] = {}
    devices = root.iterchildren("devices") if root.tag == "domain" else iter(())
    for hostdev in (h for d in devices for h in d.iterchildren("hostdev")):
        alias = child(hostdev, "alias")
        addresses = (a for s in hostdev.iterchildren("source") for a in s.iterchildren("address"))
        address = next(addresses, None)
        if alias is not None and address is not None:
            attrs = {str(key): str(value) for key, value in address.attrib.items()}
            found.setdefault(alias.get("name"), []).append(attrs)
    for device in added:
        sources_of = found.get(device.alias, [])
        count = sources_of.count(device.address.libvirt_attributes())
        if count != 1 or len(sources_of) != 1:
            raise OutputCheckFailed(
                f"the written domain XML holds {device.alias} for {device.address} "
                f"{count} times under /domain/devices, not once; nothing was returned: "
                "report this with the input domain"
            )


# --- the transform ------------------------------------------------------------------------


_DEFAULT_OPTIONS = TransformOptions()


def normalized(domain_xml_bytes: bytes, options: TransformOptions | None = None) -> bytes:
    """``domain_xml_bytes`` parsed and written exactly as ``transform`` writes its output.

    What ``--diff`` compares the output with: both sides are lxml's spelling, so
    only the added elements show.
    """
    tree = domain_xml.read(domain_xml_bytes, options or _DEFAULT_OPTIONS)
    return domain_xml.write(tree)


def transform(
    domain_xml_bytes: bytes,
    devices: Sequence[HostDevice],
    options: TransformOptions | None = None,
    host_cpus: Mapping[int, int] | None = None,
) -> TransformResult:
    """Return the domain with one vfio ``<hostdev>`` per device not already present.

    Idempotent: devices whose host address is already a hostdev source are
    skipped, and when nothing is left to add the input bytes come back as they
    were, so running the output through again gives the same bytes.
    ``host_cpus`` (host CPU -> NUMA node) lets guest NUMA placement map a host
    node through vCPU pinning when no ``numatune`` memnode names it.
    """
    chosen = options or _DEFAULT_OPTIONS
    _check_request(devices, chosen)
    return _transform(domain_xml_bytes, devices, chosen, host_cpus or {})


def _transform(
    data: bytes,
    devices: Sequence[HostDevice],
    options: TransformOptions,
    host_cpus: Mapping[int, int],
) -> TransformResult:
    xml, added, already, warnings = _edit(data, devices, options, host_cpus)
    if added:
        check_output(xml, added)  # the edited tree is freed by now: the guard reuses its memory
    return TransformResult(xml=xml, added=added, already_present=already, warnings=warnings)


def _placement(
    root: etree._Element,
    wanted: Sequence[HostDevice],
    options: TransformOptions,
    host_cpus: Mapping[int, int],
) -> Placement:
    """``numa.place``; loaded only for a domain with a ``<cpu><numa><cell>`` at all.

    Most domains have no guest NUMA cells, and the shim's script starts anew for
    every call: ``numa`` (with ``pci_topology``) is not imported for them.
    """
    numas = (n for cpu in root.iterchildren("cpu") for n in cpu.iterchildren("numa"))
    cells = (cell for n in numas for cell in n.iterchildren("cell"))
    if options.numa_placement == "off" or next(cells, None) is None:
        return Placement()
    from hook_sidecar import numa

    return numa.place(root, wanted, options.numa_placement, host_cpus)


def _edit(
    data: bytes,
    devices: Sequence[HostDevice],
    options: TransformOptions,
    host_cpus: Mapping[int, int],
) -> tuple[bytes, tuple[AddedDevice, ...], tuple[PciAddress, ...], tuple[str, ...]]:
    """Parse, decide and write: the output (the input when nothing is added) and what was done."""
    tree = domain_xml.read(data, options)
    root = tree.getroot()
    facts = _facts(root)
    wanted = [device for device in devices if device.address not in facts.present]
    already = tuple(device.address for device in devices if device.address in facts.present)
    if not wanted:
        return data, (), already, ()

    placement = _placement(root, wanted, options, host_cpus)
    if placement.guest_addresses:
        wanted = [
            device._replace(guest_address=placement.guest_addresses[device.address])
            if device.address in placement.guest_addresses
            else device
            for device in wanted
        ]
    _check_guest_addresses(facts, wanted)

    aliases = _free_aliases(facts.aliases, options.alias_prefix)
    added = tuple(
        AddedDevice(
            device.address, next(aliases), device.guest_address, placement.cells.get(device.address)
        )
        for device in wanted
    )
    unit = domain_xml.indent_unit(root)
    if facts.devices is None:
        facts.devices = etree.Element("devices")
        domain_xml.append(root, [facts.devices], unit)
    new = [_controller(c) for c in placement.controllers]
    new += [_hostdev(device, options.managed) for device in added]
    domain_xml.append(facts.devices, new, unit)
    return domain_xml.write(tree), added, already, placement.warnings
