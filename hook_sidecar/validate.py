"""Check a transformed domain with libvirt itself (``qat-hook transform --validate``).

Two checks, because KubeVirt's generated domains do not always pass libvirt's
strict schema on their own: the hostdevs the hook added are validated against
libvirt's RNG schema inside a minimal domain, and the whole result is read by
libvirt's own parser through the ``test:///default`` driver (domain type
switched to ``test``, defined without the validate flag), after which every
added hostdev must still be there as libvirt understood it.

libvirt-python is an optional extra (``pip install '.[validate]'`` from a
clone); it is imported here only, never by the server.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from lxml import etree

from hook_sidecar.errors import HookError
from hook_sidecar.hostdevs import AddedDevice

_MINIMAL = (
    "<domain type='test'><name>{name}</name><memory>1048576</memory>"
    "<os><type>hvm</type></os><devices>{devices}</devices></domain>"
)


class ValidationUnavailable(HookError):
    """libvirt-python (or libvirt itself) is not installed."""


@dataclass
class ValidationReport:
    ok: bool = True
    lines: list[str] = field(default_factory=list)

    def fail(self, line: str) -> None:
        self.ok = False
        self.lines.append(line)


def _libvirt() -> Any:
    try:
        import libvirt
    except ImportError:
        raise ValidationUnavailable(
            "--validate needs libvirt-python: from a clone of kubevirt-qat-hook, "
            "pip install '.[validate]' (Debian/Ubuntu: apt-get install libvirt-dev "
            "pkg-config gcc python3-dev first)"
        ) from None
    # libvirt prints every error to stderr by default; the report carries them instead.
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    return libvirt


def check_available() -> None:
    """Raise ``ValidationUnavailable`` now, before anything is written, if libvirt is missing."""
    _libvirt()


def _alias(element: Any) -> str | None:
    alias = element.find("alias")
    return None if alias is None else alias.get("name")


def _message(err: Exception) -> str:
    return " ".join(str(err).split())


def validate(domain_xml: bytes, added: tuple[AddedDevice, ...]) -> ValidationReport:
    libvirt = _libvirt()
    report = ValidationReport()
    root = etree.fromstring(domain_xml, etree.XMLParser(resolve_entities=False, no_network=True))
    aliases = {device.alias for device in added}
    hostdevs = [el for el in root.iterfind("devices/hostdev") if _alias(el) in aliases]
    conn = libvirt.open("test:///default")
    try:
        if hostdevs:
            _check_schema(libvirt, conn, hostdevs, report)
        _check_parser(libvirt, conn, root, added, report)
    finally:
        conn.close()
    return report


def _check_schema(libvirt: Any, conn: Any, hostdevs: list[Any], report: ValidationReport) -> None:
    markup = "".join(etree.tostring(el, with_tail=False).decode() for el in hostdevs)
    name = f"qat-hook-schema-{uuid.uuid4().hex[:8]}"
    try:
        conn.defineXMLFlags(
            _MINIMAL.format(name=name, devices=markup), libvirt.VIR_DOMAIN_DEFINE_VALIDATE
        ).undefine()
        report.lines.append(
            f"schema: {len(hostdevs)} added hostdev(s) valid against libvirt's domain.rng"
        )
    except libvirt.libvirtError as err:
        report.fail(f"schema: libvirt rejected the added hostdevs: {_message(err)}")


def _check_parser(
    libvirt: Any, conn: Any, root: Any, added: tuple[AddedDevice, ...], report: ValidationReport
) -> None:
    root.set("type", "test")
    name_element = root.find("name")
    if name_element is not None:
        name_element.text = f"qat-hook-parse-{uuid.uuid4().hex[:8]}"
    try:
        domain = conn.defineXML(etree.tostring(root).decode())
    except libvirt.libvirtError as err:
        report.fail(f"parser: libvirt could not define the domain: {_message(err)}")
        return
    try:
        understood = etree.fromstring(domain.XMLDesc(0).encode())
    finally:
        domain.undefine()
    report.lines.append("parser: libvirt defined the whole domain (test driver, type=test)")
    for device in added:
        match = [el for el in understood.iterfind("devices/hostdev") if _alias(el) == device.alias]
        if not match:
            report.fail(f"parser: libvirt dropped hostdev {device.alias} ({device.address})")
            continue
        source = match[0].find("source/address")
        seen = None if source is None else {str(k): str(v) for k, v in source.attrib.items()}
        expected = device.address.libvirt_attributes()
        if seen is None or any(seen.get(k) != v for k, v in expected.items()):
            report.fail(f"parser: hostdev {device.alias} has source {seen}, expected {expected}")
        else:
            report.lines.append(f"parser: hostdev {device.alias} kept with source {device.address}")
