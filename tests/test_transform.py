"""The domain transform: exact output, preservation, idempotence, hardening, errors."""

from __future__ import annotations

import difflib
import time
import xml.dom.minidom
import xml.parsers.expat
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from hook_sidecar.errors import InvalidInput, PreconditionFailed
from hook_sidecar.hostdevs import HostDevice, TransformOptions
from hook_sidecar.pci import PciAddress
from hook_sidecar.transform import (
    DuplicateDevice,
    GuestAddressConflict,
    NotADomain,
    NotWellFormed,
    TooLarge,
    UnsafeXml,
    transform,
)
from tests.domains import GeneratedDomain, canonical, domains, pci_addresses, single_insertion

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
VF = PciAddress.parse("0000:3d:02.2")
VF2 = PciAddress.parse("0000:3d:02.3")


def dev(text: str, guest: str | None = None) -> HostDevice:
    return HostDevice(PciAddress.parse(text), PciAddress.parse(guest) if guest else None)


def added_lines(before: bytes, after: bytes) -> tuple[list[str], list[str]]:
    diff = list(
        difflib.unified_diff(
            before.decode().splitlines(), after.decode().splitlines(), lineterm="", n=0
        )
    )
    plus = [line[1:] for line in diff if line.startswith("+") and not line.startswith("+++")]
    minus = [line[1:] for line in diff if line.startswith("-") and not line.startswith("---")]
    return plus, minus


def source_of(hostdev: etree._Element) -> PciAddress:
    address = hostdev.findall("source/address")[0]
    return PciAddress.from_libvirt({str(k): str(v) for k, v in address.attrib.items()})


def parses_namespace_aware(data: bytes) -> None:
    """Parse with expat in namespace mode, as strict as Go's encoding/xml or stricter."""
    parser = xml.parsers.expat.ParserCreate(namespace_separator=" ")
    parser.Parse(data, True)
    xml.dom.minidom.parseString(data)


# --- the bundled example ------------------------------------------------------------


def test_example_matches_expected_output(domain_xml: bytes) -> None:
    result = transform(domain_xml, [HostDevice(VF)])
    assert result.xml == (EXAMPLES / "domain-with-qat.xml").read_bytes()
    assert [(str(a.address), a.alias) for a in result.added] == [("0000:3d:02.2", "ua-qat-0")]


def test_diff_shows_exactly_the_hostdev_block(domain_xml: bytes) -> None:
    result = transform(domain_xml, [HostDevice(VF)])
    plus, minus = added_lines(domain_xml, result.xml)
    assert minus == []
    assert plus == [
        '\t\t<hostdev mode="subsystem" type="pci" managed="no">',
        '\t\t\t<driver name="vfio"/>',
        "\t\t\t<source>",
        '\t\t\t\t<address domain="0x0000" bus="0x3d" slot="0x02" function="0x2"/>',
        "\t\t\t</source>",
        '\t\t\t<alias name="ua-qat-0"/>',
        "\t\t</hostdev>",
    ]
    # The block sits right before </devices>.
    text = result.xml.decode()
    assert text.index("</hostdev>\n\t</devices>") > text.index('<rng model="virtio')


def test_namespaces_metadata_and_go_empties_preserved(domain_xml: bytes) -> None:
    out = transform(domain_xml, [HostDevice(VF)]).xml
    assert b'xmlns:qemu="http://libvirt.org/schemas/domain/qemu/1.0"' in out
    assert b'<qemu:env name="QAT_EXAMPLE_TRACE" value="0"></qemu:env>' in out
    assert b'<kubevirt xmlns="http://kubevirt.io">' in out
    assert b'<alias name="ua-default"></alias>' in out
    assert single_insertion(domain_xml, out)
    parses_namespace_aware(out)


def test_two_devices_with_guest_address(domain_xml: bytes) -> None:
    result = transform(domain_xml, [dev("3d:02.2"), dev("3d:02.3", "00:10.0")])
    assert [a.alias for a in result.added] == ["ua-qat-0", "ua-qat-1"]
    root = etree.fromstring(result.xml)
    second = root.findall("devices/hostdev")[1]
    assert second.find("address").attrib == {  # type: ignore[union-attr]
        "type": "pci",
        "domain": "0x0000",
        "bus": "0x00",
        "slot": "0x10",
        "function": "0x0",
    }


def test_managed_yes(domain_xml: bytes) -> None:
    out = transform(domain_xml, [HostDevice(VF)], TransformOptions(managed="yes")).xml
    assert b'<hostdev mode="subsystem" type="pci" managed="yes">' in out


def test_managed_other_value_refused(domain_xml: bytes) -> None:
    with pytest.raises(InvalidInput, match="managed must be 'no' or 'yes'"):
        transform(domain_xml, [HostDevice(VF)], TransformOptions(managed="maybe"))  # type: ignore[arg-type]


# --- idempotence and existing devices -----------------------------------------------


def test_idempotent_byte_identical(domain_xml: bytes) -> None:
    devices = [dev("3d:02.2"), dev("3d:02.3", "00:10.0")]
    once = transform(domain_xml, devices)
    twice = transform(once.xml, devices)
    assert twice.xml == once.xml
    assert twice.added == ()
    assert twice.already_present == (VF, VF2)


def test_adding_a_second_device_later_takes_the_next_alias(domain_xml: bytes) -> None:
    once = transform(domain_xml, [HostDevice(VF)])
    twice = transform(once.xml, [HostDevice(VF), HostDevice(VF2)])
    assert [a.alias for a in twice.added] == ["ua-qat-1"]
    assert twice.already_present == (VF,)


KUBEVIRT_HOSTDEV = b"""<domain type="kvm">
  <name>default_vm</name>
  <devices>
    <hostdev type="pci" managed="no" mode="subsystem">
      <source>
        <address type="pci" domain="0x0000" bus="0x3d" slot="0x02" function="0x2"></address>
      </source>
      <alias name="ua-hostdevice-qat"></alias>
    </hostdev>
    <interface type="hostdev" managed="no">
      <source>
        <address type="pci" domain="0x0000" bus="0x5e" slot="0x00" function="0x1"></address>
      </source>
      <alias name="ua-sriov-net1"></alias>
    </interface>
    <disk device="disk" type="file">
      <address type="pci" domain="0x0000" bus="0x07" slot="0x00" function="0x0"></address>
      <alias name="ua-qat-0"></alias>
      <target dev="vda" bus="virtio"></target>
    </disk>
  </devices>
</domain>
"""


def test_kubevirt_own_hostdev_is_not_duplicated() -> None:
    result = transform(KUBEVIRT_HOSTDEV, [HostDevice(VF)])
    assert result.xml == KUBEVIRT_HOSTDEV
    assert result.already_present == (VF,)


def test_sriov_interface_source_counts_as_present() -> None:
    result = transform(KUBEVIRT_HOSTDEV, [dev("5e:00.1")])
    assert result.added == ()


def test_alias_never_collides() -> None:
    result = transform(KUBEVIRT_HOSTDEV, [HostDevice(VF2)])
    assert [a.alias for a in result.added] == ["ua-qat-1"]


def test_guest_address_conflict_names_the_device() -> None:
    with pytest.raises(GuestAddressConflict) as info:
        transform(KUBEVIRT_HOSTDEV, [dev("3d:02.3", "07:00.0")])
    message = str(info.value)
    assert "0000:07:00.0" in message
    assert "<disk type='file'>" in message
    assert "alias ua-qat-0" in message
    assert "target vda" in message
    assert isinstance(info.value, PreconditionFailed)


def test_guest_address_conflict_between_requested_devices(domain_xml: bytes) -> None:
    with pytest.raises(GuestAddressConflict, match="requested for both"):
        transform(domain_xml, [dev("3d:02.2", "00:10.0"), dev("3d:02.3", "00:10.0")])


def test_same_slot_other_function_is_not_a_conflict() -> None:
    result = transform(KUBEVIRT_HOSTDEV, [dev("3d:02.3", "07:00.1")])
    assert len(result.added) == 1


def test_duplicate_device_refused(domain_xml: bytes) -> None:
    with pytest.raises(DuplicateDevice, match="listed twice"):
        transform(domain_xml, [HostDevice(VF), dev("3d:02.2")])


def test_invalid_existing_address_is_reported() -> None:
    broken = KUBEVIRT_HOSTDEV.replace(b'bus="0x3d"', b'bus="0x3d0"')
    with pytest.raises(NotADomain, match="line 6 has an invalid PCI address"):
        transform(broken, [HostDevice(VF2)])


# --- layout: where and how the block goes --------------------------------------------


def test_domain_without_devices_gets_one() -> None:
    xml = (
        b"<domain type='kvm'>\n  <name>vm</name>\n"
        b"  <os>\n    <type>hvm</type>\n  </os>\n</domain>\n"
    )
    out = transform(xml, [HostDevice(VF)]).xml
    assert out == (
        b"<domain type='kvm'>\n  <name>vm</name>\n  <os>\n    <type>hvm</type>\n  </os>\n"
        b"  <devices>\n"
        b'    <hostdev mode="subsystem" type="pci" managed="no">\n'
        b'      <driver name="vfio"/>\n'
        b"      <source>\n"
        b'        <address domain="0x0000" bus="0x3d" slot="0x02" function="0x2"/>\n'
        b"      </source>\n"
        b'      <alias name="ua-qat-0"/>\n'
        b"    </hostdev>\n"
        b"  </devices>\n</domain>\n"
    )


@pytest.mark.parametrize(
    "devices", [b"<devices/>", b"<devices />", b"<devices></devices>", b"<devices>\n  </devices>"]
)
def test_empty_devices_element(devices: bytes) -> None:
    xml = b"<domain type='kvm'>\n  <name>vm</name>\n  " + devices + b"\n</domain>\n"
    out = transform(xml, [HostDevice(VF)]).xml
    assert out.startswith(b"<domain type='kvm'>\n  <name>vm</name>\n  <devices>\n    <hostdev ")
    assert out.endswith(b"    </hostdev>\n  </devices>\n</domain>\n")


def test_compact_document_stays_compact() -> None:
    xml = b"<domain><name>vm</name><devices><disk/></devices></domain>"
    out = transform(xml, [HostDevice(VF)]).xml
    assert out == (
        b"<domain><name>vm</name><devices><disk/>"
        b'<hostdev mode="subsystem" type="pci" managed="no"><driver name="vfio"/><source>'
        b'<address domain="0x0000" bus="0x3d" slot="0x02" function="0x2"/></source>'
        b'<alias name="ua-qat-0"/></hostdev></devices></domain>'
    )


def test_end_tags_hidden_in_comments_cdata_and_pis_are_skipped() -> None:
    xml = (
        b'<?xml version="1.0"?>\n<!-- </devices> before the root -->\n'
        b"<domain>\n  <name>vm</name>\n  <?tool </devices> ?>\n"
        b"  <description><![CDATA[ </devices> <devices/> ]]></description>\n"
        b"  <devices>\n    <!-- </devices> -->\n    <disk/>\n  </devices >\n"
        b"  <!-- <devices/> -->\n</domain>\n<!-- </domain> -->\n"
    )
    out = transform(xml, [HostDevice(VF)]).xml
    assert single_insertion(xml, out)
    root = etree.fromstring(out)
    assert root.find("devices/hostdev") is not None
    assert b"    <disk/>\n    <hostdev " in out


def test_same_named_elements_elsewhere_do_not_confuse_it() -> None:
    xml = (
        b"<domain>\n  <metadata>\n    <a:x xmlns:a='urn:a'><devices><devices/></devices></a:x>\n"
        b"    <b xmlns='urn:b'><devices></devices></b>\n  </metadata>\n"
        b"  <devices>\n    <disk/>\n  </devices>\n  <on_crash>destroy</on_crash>\n</domain>\n"
    )
    out = transform(xml, [HostDevice(VF)]).xml
    assert single_insertion(xml, out)
    root = etree.fromstring(out)
    assert len(root.findall("devices/hostdev")) == 1
    assert b"<devices><devices/></devices>" in out


def test_non_utf8_input_becomes_utf8() -> None:
    xml = (
        '<?xml version="1.0" encoding="ISO-8859-1"?>\n<domain>\n  <name>vm</name>\n'
        "  <description>caf\u00e9</description>\n  <devices>\n  </devices>\n</domain>\n"
    ).encode("latin-1")
    out = transform(xml, [HostDevice(VF)]).xml
    assert out.startswith(b'<?xml version="1.0" encoding="UTF-8"?>')
    assert "caf\u00e9".encode() in out
    assert etree.fromstring(out).findtext("description") == "caf\u00e9"


def test_bom_and_bare_doctype_are_dropped() -> None:
    xml = (
        b"\xef\xbb\xbf<!DOCTYPE domain>\n"
        b"<domain>\n  <name>vm</name>\n  <devices>\n  </devices>\n</domain>\n"
    )
    out = transform(xml, [HostDevice(VF)]).xml
    assert out.startswith(b"\n<domain>")
    assert b"DOCTYPE" not in out


# --- hardening -------------------------------------------------------------------------


def test_external_entity_is_refused_and_nothing_leaks(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-VALUE")
    xml = (
        f'<!DOCTYPE domain [<!ENTITY leak SYSTEM "file://{secret}">]>'
        "<domain><name>&leak;</name><devices/></domain>"
    ).encode()
    with pytest.raises(UnsafeXml) as info:
        transform(xml, [HostDevice(VF)])
    assert "TOP-SECRET-VALUE" not in str(info.value)
    assert "DOCTYPE" in str(info.value)


def test_external_dtd_is_refused() -> None:
    xml = b'<!DOCTYPE domain SYSTEM "http://127.0.0.1:9/domain.dtd"><domain><devices/></domain>'
    with pytest.raises(UnsafeXml):
        transform(xml, [HostDevice(VF)])


def test_billion_laughs_is_refused_quickly() -> None:
    entities = '<!ENTITY lol0 "lol">' + "".join(
        f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">' for i in range(1, 10)
    )
    xml = f"<!DOCTYPE domain [{entities}]><domain><name>&lol9;</name><devices/></domain>".encode()
    started = time.monotonic()
    with pytest.raises(UnsafeXml):
        transform(xml, [HostDevice(VF)])
    # Generous bound: expansion would take minutes and gigabytes, refusal takes microseconds.
    assert time.monotonic() - started < 5


def test_undefined_entity_is_not_well_formed() -> None:
    with pytest.raises(NotWellFormed, match="Entity 'foo' not defined"):
        transform(b"<domain><name>&foo;</name></domain>", [HostDevice(VF)])


def test_too_large_is_refused_before_parsing(domain_xml: bytes) -> None:
    with pytest.raises(TooLarge, match=r"over the limit of 1000; raise --max-domain-bytes"):
        transform(domain_xml, [HostDevice(VF)], TransformOptions(max_bytes=1000))


@pytest.mark.parametrize(
    ("xml", "error", "message"),
    [
        (b"<domain>\n<name>vm</nam>\n</domain>", NotWellFormed, "line 2, column"),
        (b"", NotWellFormed, "empty"),
        (b"   \n", NotWellFormed, "empty"),
        (b"<domain><q:x/></domain>", NotWellFormed, "Namespace prefix q"),
        (b"<network><name>n</name></network>", NotADomain, "root element is <network>"),
        (b"<domain xmlns='urn:x'><name>n</name></domain>", NotADomain, "not <domain>"),
        (b"<domain type='kvm'/>", NotADomain, "has no content"),
    ],
)
def test_bad_input_errors(xml: bytes, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        transform(xml, [HostDevice(VF)])


def test_all_domain_errors_are_invalid_input() -> None:
    for error in (NotWellFormed, NotADomain, UnsafeXml, TooLarge, DuplicateDevice):
        assert issubclass(error, InvalidInput)


# --- properties over generated domains -----------------------------------------------


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    domains(),
    st.lists(pci_addresses, min_size=1, max_size=4, unique=True),
    st.integers(-1, 5),
)
def test_generated_domains(
    generated: GeneratedDomain, addresses: list[PciAddress], reuse: int
) -> None:
    # Sometimes ask for a device the domain already has.
    if generated.hostdev_sources and reuse >= 0:
        existing = generated.hostdev_sources[reuse % len(generated.hostdev_sources)]
        if existing not in addresses:
            addresses.append(existing)
    devices = [HostDevice(address) for address in addresses]
    result = transform(generated.xml, devices)

    parses_namespace_aware(result.xml)
    root = etree.fromstring(result.xml)

    expected = [a for a in addresses if a not in generated.hostdev_sources]
    assert [a.address for a in result.added] == expected
    assert set(result.already_present) == set(addresses) - set(expected)

    # Exactly the expected hostdevs were added, with fresh unique aliases.
    new_aliases = {a.alias for a in result.added}
    assert not new_aliases & set(generated.aliases)
    written = {
        source_of(hd): hd
        for hd in root.iterfind("devices/hostdev")
        if hd.findall("alias")[0].get("name") in new_aliases
    }
    assert list(written) == expected
    for hostdev in written.values():
        assert hostdev.get("managed") == "no"
        assert hostdev.find("driver").get("name") == "vfio"  # type: ignore[union-attr]

    # Everything else is unchanged.
    assert canonical(
        result.xml, frozenset(new_aliases), not generated.has_devices and bool(expected)
    ) == canonical(generated.xml)
    if b"<devices/>" not in generated.xml and b"<devices></devices>" not in generated.xml:
        assert single_insertion(generated.xml, result.xml)

    # Idempotent.
    again = transform(result.xml, devices)
    assert again.xml == result.xml
    assert again.added == ()
