"""The domain transform: exact output, preservation, idempotence, hardening, errors."""

from __future__ import annotations

import difflib
import threading
import xml.dom.minidom
import xml.parsers.expat
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from hook_sidecar import domain_xml as xml_reader
from hook_sidecar.errors import HookError, InvalidInput, PreconditionFailed
from hook_sidecar.hostdevs import (
    DEFAULT_MAX_BYTES,
    AddedDevice,
    HostDevice,
    TransformOptions,
    TransformResult,
)
from hook_sidecar.pci import PciAddress
from hook_sidecar.transform import (
    DuplicateDevice,
    GuestAddressConflict,
    NotADomain,
    NotWellFormed,
    OutputCheckFailed,
    TooLarge,
    UnsafeXml,
    check_output,
    normalized,
    transform,
)
from tests.support.domains import (
    GeneratedDomain,
    canonical,
    domains,
    pci_addresses,
    single_insertion,
)

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


def test_example_output_is_utf8_with_a_declaration(domain_xml: bytes) -> None:
    result = transform(domain_xml, [HostDevice(VF)])
    assert result.xml.startswith(b"<?xml version='1.0' encoding='UTF-8'?>\n<domain ")
    assert [(str(a.address), a.alias) for a in result.added] == [("0000:3d:02.2", "ua-qat-0")]


def test_diff_shows_exactly_the_hostdev_block(domain_xml: bytes) -> None:
    result = transform(domain_xml, [HostDevice(VF)])
    plus, minus = added_lines(normalized(domain_xml), result.xml)
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


def test_namespaces_and_metadata_preserved(domain_xml: bytes) -> None:
    out = transform(domain_xml, [HostDevice(VF)]).xml
    assert b'xmlns:qemu="http://libvirt.org/schemas/domain/qemu/1.0"' in out
    # lxml writes Go's <x></x> as <x/>; normalized() writes the input the same way.
    assert b'<qemu:env name="QAT_EXAMPLE_TRACE" value="0"/>' in out
    assert b'<kubevirt xmlns="http://kubevirt.io">' in out
    assert b'<alias name="ua-default"/>' in out
    assert single_insertion(normalized(domain_xml), out)
    assert canonical(out, frozenset({"ua-qat-0"})) == canonical(domain_xml)
    parses_namespace_aware(out)


def test_normalized_is_the_output_without_the_block(domain_xml: bytes) -> None:
    before = normalized(domain_xml)
    assert before.startswith(b"<?xml version='1.0' encoding='UTF-8'?>\n<domain ")
    assert b"></" not in before  # every empty element written <x/>, as the output has them
    assert normalized(before) == before
    assert canonical(before) == canonical(domain_xml)


def test_normalized_refuses_what_transform_refuses() -> None:
    with pytest.raises(UnsafeXml):
        normalized(b'<!DOCTYPE domain [<!ENTITY a "b">]><domain><name>&a;</name></domain>')
    with pytest.raises(TooLarge):
        normalized(b"<domain><name>vm</name></domain>", TransformOptions(max_bytes=10))


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
        b"<?xml version='1.0' encoding='UTF-8'?>\n"
        b'<domain type="kvm">\n  <name>vm</name>\n  <os>\n    <type>hvm</type>\n  </os>\n'
        b"  <devices>\n"
        b'    <hostdev mode="subsystem" type="pci" managed="no">\n'
        b'      <driver name="vfio"/>\n'
        b"      <source>\n"
        b'        <address domain="0x0000" bus="0x3d" slot="0x02" function="0x2"/>\n'
        b"      </source>\n"
        b'      <alias name="ua-qat-0"/>\n'
        b"    </hostdev>\n"
        b"  </devices>\n</domain>"
    )


@pytest.mark.parametrize(
    "devices", [b"<devices/>", b"<devices />", b"<devices></devices>", b"<devices>\n  </devices>"]
)
def test_empty_devices_element(devices: bytes) -> None:
    xml = b"<domain type='kvm'>\n  <name>vm</name>\n  " + devices + b"\n</domain>\n"
    out = transform(xml, [HostDevice(VF)]).xml
    assert out.startswith(
        b"<?xml version='1.0' encoding='UTF-8'?>\n<domain type=\"kvm\">\n  <name>vm</name>\n"
        b"  <devices>\n    <hostdev "
    )
    assert out.endswith(b"    </hostdev>\n  </devices>\n</domain>")


def test_compact_document_stays_compact() -> None:
    xml = b"<domain><name>vm</name><devices><disk/></devices></domain>"
    out = transform(xml, [HostDevice(VF)]).xml
    assert out == (
        b"<?xml version='1.0' encoding='UTF-8'?>\n<domain><name>vm</name><devices><disk/>"
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
    assert single_insertion(normalized(xml), out)
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
    assert single_insertion(normalized(xml), out)
    root = etree.fromstring(out)
    assert len(root.findall("devices/hostdev")) == 1
    assert b"<devices><devices/></devices>" in out


def test_non_utf8_input_becomes_utf8() -> None:
    xml = (
        '<?xml version="1.0" encoding="ISO-8859-1"?>\n<domain>\n  <name>vm</name>\n'
        "  <description>caf\u00e9</description>\n  <devices>\n  </devices>\n</domain>\n"
    ).encode("latin-1")
    out = transform(xml, [HostDevice(VF)]).xml
    assert out.startswith(b"<?xml version='1.0' encoding='UTF-8'?>")
    assert "caf\u00e9".encode() in out
    assert etree.fromstring(out).findtext("description") == "caf\u00e9"


def test_bom_and_bare_doctype_are_dropped() -> None:
    xml = (
        b"\xef\xbb\xbf<!DOCTYPE domain>\n"
        b"<domain>\n  <name>vm</name>\n  <devices>\n  </devices>\n</domain>\n"
    )
    out = transform(xml, [HostDevice(VF)]).xml
    assert out.startswith(b"<?xml version='1.0' encoding='UTF-8'?>\n<domain>")
    assert b"DOCTYPE" not in out
    assert b"\xef\xbb\xbf" not in out


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
    # libxml2 stops the amplification itself, before the hook's own refusal could.
    with pytest.raises(InvalidInput, match=r"amplification|entit"):
        transform(xml, [HostDevice(VF)])


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
    if not result.added:
        assert result.xml == generated.xml  # nothing to add: the input bytes come back
    elif b"<devices/>" not in generated.xml and b"<devices></devices>" not in generated.xml:
        assert single_insertion(normalized(generated.xml), result.xml)

    # Idempotent.
    again = transform(result.xml, devices)
    assert again.xml == result.xml
    assert again.added == ()


# --- every decision on the parsed document, whatever the encoding ----------------------

SAFE = (
    "<domain type='kvm'>\n  <name>caf\u00e9</name>\n"
    "  <devices>\n    <disk type='file'/>\n  </devices>\n</domain>\n"
)


def encodings(text: str) -> dict[str, bytes]:
    """``text`` (no declaration) in every encoding libxml2 reads, with and without BOMs."""

    def declared(name: str, codec: str) -> bytes:
        return f'<?xml version="1.0" encoding="{name}"?>\n{text}'.encode(codec)

    return {
        "utf-8": text.encode(),
        "utf-8 BOM": b"\xef\xbb\xbf" + text.encode(),
        "utf-16 BOM, no declaration": text.encode("utf-16"),
        "utf-16-be BOM, no declaration": b"\xfe\xff" + text.encode("utf-16-be"),
        "utf-16-le declared": declared("UTF-16", "utf-16-le"),
        "utf-16-be declared": declared("UTF-16", "utf-16-be"),
        "utf-16 BOM and declaration": declared("UTF-16", "utf-16"),
        "utf-32 BOM, no declaration": text.encode("utf-32"),
        "utf-32-le declared": declared("UTF-32", "utf-32-le"),
        "latin-1 declared": declared("ISO-8859-1", "latin-1"),
        # The declaration is ASCII; the rest is UTF-7 ("<" may be written +ADw-).
        "utf-7 declared": b'<?xml version="1.0" encoding="UTF-7"?>\n' + text.encode("utf-7"),
    }


@pytest.mark.parametrize("name", list(encodings(SAFE)))
def test_every_encoding_gives_the_utf8_output(name: str) -> None:
    expected = transform(SAFE.encode(), [HostDevice(VF)]).xml
    assert transform(encodings(SAFE)[name], [HostDevice(VF)]).xml == expected
    assert "caf\u00e9".encode() in expected


@pytest.mark.parametrize("name", list(encodings(SAFE)))
def test_bare_doctype_is_dropped_in_every_encoding(name: str) -> None:
    expected = transform(SAFE.encode(), [HostDevice(VF)]).xml
    for doctype in ("<!DOCTYPE domain>\n", "<!DOCTYPE domain [ ]>\n"):
        document = encodings(doctype + SAFE)[name]
        assert transform(document, [HostDevice(VF)]).xml == expected


UNSAFE = {
    "entity that looks like an end tag": (
        "<!DOCTYPE domain [<!ENTITY y '</devices>'>]>\n"
        "<domain><name>vm</name><devices>&y;<disk/></devices></domain>"
    ),
    "entity that opens a comment": (
        "<!DOCTYPE domain [<!ENTITY a '<!--'>]>\n<domain><name>&a;</name><devices/></domain>"
    ),
    "entity declared, never used": (
        "<!DOCTYPE domain [<!ENTITY a 'b'>]>\n<domain><name>vm</name><devices/></domain>"
    ),
    "internal entity used": (
        "<!DOCTYPE domain [<!ENTITY a 'b'>]>\n<domain><name>&a;</name><devices/></domain>"
    ),
    "external entity": (
        "<!DOCTYPE domain [<!ENTITY a SYSTEM 'file:///etc/hostname'>]>\n"
        "<domain><name>&a;</name><devices/></domain>"
    ),
    "parameter entity": (
        "<!DOCTYPE domain [<!ENTITY % p 'x'>]>\n<domain><name>vm</name><devices/></domain>"
    ),
    "attribute list only": (
        "<!DOCTYPE domain [<!ATTLIST address bus NMTOKEN #IMPLIED>]>\n"
        "<domain><name>vm</name><devices/></domain>"
    ),
    "element declaration": (
        "<!DOCTYPE domain [<!ELEMENT domain ANY>]>\n<domain><name>vm</name><devices/></domain>"
    ),
    "system id": '<!DOCTYPE domain SYSTEM "x.dtd">\n<domain><name>vm</name><devices/></domain>',
    "public id": (
        '<!DOCTYPE domain PUBLIC "-//x//y" "x.dtd">\n<domain><name>vm</name><devices/></domain>'
    ),
    "undeclared entity under an external subset": (
        '<!DOCTYPE domain SYSTEM "domain.dtd">\n<domain><name>&x;</name><devices/></domain>'
    ),
}


@pytest.mark.parametrize("encoding", list(encodings(SAFE)))
@pytest.mark.parametrize("case", list(UNSAFE))
def test_dtds_are_refused_in_every_encoding(case: str, encoding: str) -> None:
    document = encodings(UNSAFE[case])[encoding]
    with pytest.raises(InvalidInput) as info:
        transform(document, [HostDevice(VF)])
    message = str(info.value)
    assert "\n" not in message
    # Refused as unsafe, or (markup-looking values) by libxml2 reading the entity's markup.
    assert isinstance(info.value, UnsafeXml) or case.startswith("entity that")


def test_attlist_would_have_changed_what_libxml2_reads() -> None:
    """Why a declaration-only subset is refused: libxml2 normalises declared attributes.

    Go's encoding/xml ignores the DTD and reads " 0x3d " where libxml2 reads "0x3d".
    """
    document = UNSAFE["attribute list only"].replace(
        "<devices/>", '<devices><address bus=" 0x3d "/></devices>'
    )
    read = xml_reader.parse(document.encode()).getroot()
    assert read.find("devices/address").get("bus") == "0x3d"  # type: ignore[union-attr]
    with pytest.raises(UnsafeXml, match="declarations in its DOCTYPE"):
        transform(document.encode(), [HostDevice(VF)])


@pytest.mark.parametrize(
    "document",
    [
        b"\xef\xbb\xbf\xef\xbb\xbf<domain><name>vm</name></domain>",
        b"\xff\xfe\xff\xfe" + "<domain><name>vm</name></domain>".encode("utf-16-le"),
        "\ufeff<domain><name>vm</name></domain>".encode("utf-16"),
    ],
    ids=["two utf-8 BOMs", "two utf-16 BOMs", "utf-16 BOM then U+FEFF"],
)
def test_two_boms_are_refused(document: bytes) -> None:
    with pytest.raises(NotWellFormed, match="line 1"):
        transform(document, [HostDevice(VF)])


def test_utf16_without_bom_or_declaration_is_refused() -> None:
    """XML 1.0 needs a BOM or a declaration for UTF-16; libxml2 reads NUL bytes and stops."""
    with pytest.raises(NotWellFormed):
        transform(SAFE.encode("utf-16-le"), [HostDevice(VF)])


def test_depth_is_bounded_by_libxml2() -> None:
    deep = b"<domain><name>vm</name>" + b"<a>" * 300 + b"</a>" * 300 + b"</domain>"
    with pytest.raises(NotWellFormed, match="Excessive depth"):
        transform(deep, [HostDevice(VF)])


def test_text_node_size_is_bounded_by_libxml2() -> None:
    """10,000,000 bytes of text in one node, libxml2's limit without huge_tree, and one more.

    Only behind a size cap raised far above the default.
    """
    raised = TransformOptions(max_bytes=1 << 30)
    for size, accepted in ((10_000_000, True), (10_000_001, False)):
        xml = b"<domain><name>" + b"a" * size + b"</name></domain>"
        if accepted:
            assert len(transform(xml, [HostDevice(VF)], raised).added) == 1
        else:
            with pytest.raises(NotWellFormed, match="Text node too long"):
                transform(xml, [HostDevice(VF)], raised)


def test_the_default_cap_takes_the_largest_kubevirt_domain_with_room(domain_xml: bytes) -> None:
    assert DEFAULT_MAX_BYTES == 256 * 1024
    grown = domain_xml.replace(
        b"\t</devices>", b"\t\t<!-- padding -->\n" * 10_000 + b"\t</devices>"
    )
    assert len(grown) <= DEFAULT_MAX_BYTES
    assert len(transform(grown, [HostDevice(VF)]).added) == 1
    with pytest.raises(TooLarge):
        transform(b" " * DEFAULT_MAX_BYTES + b"<domain/>", [HostDevice(VF)])


def block_of(before: bytes, after: bytes) -> bytes:
    """The one contiguous run of bytes ``after`` adds to ``before``."""
    assert single_insertion(before, after)
    prefix = next(i for i, (a, b) in enumerate(zip(before, after, strict=False)) if a != b)
    return after[prefix : prefix + len(after) - len(before)]


@pytest.mark.parametrize("where", ["devices", "metadata"])
def test_many_comments_change_nothing_but_the_block(where: str) -> None:
    """100,000 comments (with ``</devices>`` inside) are carried over as they are."""
    comments = "".join(f"<!-- {i} </devices> <devices/> -->" for i in range(100_000))
    metadata, inside = (
        (f"<metadata>{comments}</metadata>", "") if where == "metadata" else ("", comments)
    )
    document = (
        f"<domain>\n  <name>vm</name>{metadata}\n"
        f"  <devices>{inside}\n    <disk/>\n  </devices>\n</domain>"
    ).encode()
    small = b"<domain>\n  <name>vm</name>\n  <devices>\n    <disk/>\n  </devices>\n</domain>"
    raised = TransformOptions(max_bytes=1 << 30)
    out = transform(document, [HostDevice(VF)], raised).xml
    assert block_of(normalized(document, raised), out) == block_of(
        normalized(small), transform(small, [HostDevice(VF)]).xml
    )


def test_nodes_outside_the_root_are_bounded() -> None:
    body = "<domain><name>vm</name><devices/></domain>"
    allowed = "<!-- c -->" * xml_reader.MAX_OUTSIDE_NODES
    out = transform((allowed + body).encode(), [HostDevice(VF)]).xml
    assert out.count(b"<!-- c -->") == xml_reader.MAX_OUTSIDE_NODES
    for document in (allowed + "<?pi x?>" + body, allowed + body + "<?pi x?>"):
        with pytest.raises(NotADomain, match="more than 1000 comments or processing"):
            transform(document.encode(), [HostDevice(VF)])


# --- guest addresses of every kind of device ----------------------------------------------

ADDRESSED = b"""<domain type="kvm">
  <name>vm</name>
  <devices>
    <interface type="bridge">
      <address type="pci" domain="0x0000" bus="0x01" slot="0x00" function="0x0"></address>
      <alias name="ua-net0"></alias>
    </interface>
    <controller type="pci" index="3" model="pcie-root-port">
      <address type="pci" domain="0x0000" bus="0x00" slot="0x02" function="0x3"></address>
    </controller>
    <hostdev type="pci" managed="no">
      <source><address domain="0x0000" bus="0x5e" slot="0x00" function="0x1"></address></source>
      <address type="pci" domain="0x0000" bus="0x09" slot="0x00" function="0x0"></address>
    </hostdev>
    <disk type="file">
      <address type="drive" controller="0" bus="0" target="0" unit="0"></address>
    </disk>
  </devices>
</domain>
"""


@pytest.mark.parametrize(
    ("guest", "holder"),
    [
        ("01:00.0", "<interface type='bridge'> (alias ua-net0) at line 4"),
        ("00:02.3", "<controller type='pci' index='3' model='pcie-root-port'> at line 8"),
        ("09:00.0", "<hostdev type='pci'> at line 11"),
    ],
)
def test_guest_address_conflict_with_any_device(guest: str, holder: str) -> None:
    with pytest.raises(GuestAddressConflict) as info:
        transform(ADDRESSED, [dev("3d:02.3", guest)])
    assert f"is already used by {holder}" in str(info.value)


def test_drive_addresses_and_host_sources_are_not_guest_addresses() -> None:
    # 0000:5e:00.1 is the existing hostdev's *host* address; the drive address is not PCI.
    result = transform(ADDRESSED, [dev("3d:02.3", "5e:00.1"), dev("3d:02.4", "00:00.0")])
    assert [a.guest_address for a in result.added] == [
        PciAddress.parse("5e:00.1"),
        PciAddress.parse("00:00.0"),
    ]


def test_numa_options_are_checked(domain_xml: bytes) -> None:
    with pytest.raises(InvalidInput, match="NUMA placement must be"):
        transform(domain_xml, [HostDevice(VF)], TransformOptions(numa_placement="on"))  # type: ignore[arg-type]


# --- the last guard: the written bytes are read back before anything is returned ----------

DAMAGES = {
    "renamed": lambda xml: xml.replace(b"<hostdev ", b"<hostdevx ").replace(
        b"</hostdev>", b"</hostdevx>"
    ),
    "other source": lambda xml: xml.replace(b'bus="0x3d"', b'bus="0x3e"'),
    "other alias": lambda xml: xml.replace(b'name="ua-qat-0"', b'name="ua-qat-9"'),
    "twice": lambda xml: xml.replace(
        b"</devices>",
        b"</devices><devices>"
        + xml[xml.index(b"<hostdev ") : xml.index(b"</hostdev>") + 10]
        + b"</devices>",
    ),
    "truncated": lambda xml: xml[:-3],
    "other root": lambda xml: xml.replace(b"<domain ", b"<machine ").replace(
        b"</domain>", b"</machine>"
    ),
    "in a comment": lambda xml: xml.replace(b"<hostdev ", b"<!-- <hostdev ").replace(
        b"</hostdev>", b"</hostdev> -->"
    ),
    "in a PI": lambda xml: xml.replace(b"<hostdev ", b"<?pi <hostdev ").replace(
        b"</hostdev>", b"</hostdev> ?>"
    ),
    "in CDATA": lambda xml: xml.replace(b"<devices>", b"<devices><![CDATA[", 1).replace(
        b"</devices>", b"]]></devices>"
    ),
    "one level down": lambda xml: xml.replace(b"<devices>", b"<other><devices>", 1).replace(
        b"</devices>", b"</devices></other>"
    ),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_writer_that_loses_or_doubles_the_device_never_yields_a_result(
    monkeypatch: pytest.MonkeyPatch, domain_xml: bytes, damage: str
) -> None:
    write = xml_reader.write
    monkeypatch.setattr(xml_reader, "write", lambda tree: DAMAGES[damage](write(tree)))
    with pytest.raises(OutputCheckFailed, match="nothing was returned"):
        transform(domain_xml, [HostDevice(VF)])


def test_the_guard_reads_hostdevs_among_comments_and_blank_text(domain_xml: bytes) -> None:
    result = transform(domain_xml, [HostDevice(VF)])
    check_output(result.xml, result.added)
    padded = result.xml.replace(b"<hostdev ", b"<!-- c --><?p?>\n\n  <hostdev ")
    check_output(padded, result.added)


_SRC = '<address domain="0x0000" bus="0x3d" slot="0x02" function="0x2"/>'
_OTHER = '<address domain="0x0000" bus="0x3d" slot="0x02" function="0x3"/>'
_EXTRA = '<address domain="0x0000" bus="0x3d" slot="0x02" function="0x2" extra="1"/>'


@pytest.mark.parametrize(
    ("hostdevs", "passes"),
    [
        (f'<hostdev><source>{_SRC}</source><alias name="ua-qat-0"/></hostdev>', True),
        (f'<hostdev><alias name="ua-qat-0"/><source>{_SRC}</source></hostdev>', True),
        # The first alias names the hostdev, the first source address says which device it is.
        (
            f'<hostdev><alias name="x"/><alias name="ua-qat-0"/><source>{_SRC}</source></hostdev>',
            False,
        ),
        (
            f'<hostdev><alias name="ua-qat-0"/><alias name="x"/><source>{_SRC}</source></hostdev>',
            True,
        ),
        (
            f'<hostdev><source>{_OTHER}</source><source>{_SRC}</source><alias name="ua-qat-0"/>'
            "</hostdev>",
            False,
        ),
        (
            f'<hostdev><source/><source>{_SRC}{_OTHER}</source><alias name="ua-qat-0"/></hostdev>',
            True,
        ),
        (f'<hostdev><source>{_SRC}</source><alias name="ua-qat-0"/></hostdev>' * 2, False),
        (
            f'<hostdev><source>{_SRC}</source><alias name="ua-qat-0"/></hostdev>'
            f'<hostdev><source>{_OTHER}</source><alias name="ua-qat-0"/></hostdev>',
            False,
        ),
        (
            f"<hostdev><source>{_SRC}</source></hostdev>"
            '<hostdev><alias name="ua-qat-0"/></hostdev>',
            False,
        ),
        (
            f'<hostdev><alias name="ua-qat-0"/></hostdev><hostdev><source>{_SRC}</source>'
            '<alias name="ua-qat-0"/></hostdev>',
            True,
        ),
        (f'<hostdev><source>{_EXTRA}</source><alias name="ua-qat-0"/></hostdev>', False),
        (f"<hostdev><alias/><source>{_SRC}</source></hostdev>", False),
        (f'<disk><source>{_SRC}</source><alias name="ua-qat-0"/></disk>', False),
        # Only a <source>'s own <address> children say which device it is.
        (
            f"<hostdev><driver>{_OTHER}</driver><source><vendor/>{_SRC}</source>"
            '<alias name="ua-qat-0"/></hostdev>',
            True,
        ),
    ],
)
def test_the_guard_wants_each_added_device_once_with_its_alias_and_source(
    hostdevs: str, passes: bool
) -> None:
    added = (AddedDevice(VF, "ua-qat-0"),)
    xml = f"<domain><devices>{hostdevs}</devices></domain>".encode()
    if passes:
        check_output(xml, added)
    else:
        with pytest.raises(OutputCheckFailed):
            check_output(xml, added)


# --- NUMA placement as the transform writes it ------------------------------------------------
# Each decision of placement is pinned in tests/test_numa.py; here, what the output holds.

NUMA_DOMAIN = b"""<domain type="kvm">
  <name>vm</name>
  <os>
    <type machine="q35">hvm</type>
  </os>
  <cpu>
    <numa>
      <cell id="0" cpus="0-1" memory="1048576"></cell>
      <cell id="1" cpus="2-3" memory="1048576"></cell>
    </numa>
  </cpu>
  <numatune>
    <memnode cellid="0" nodeset="0"></memnode>
    <memnode cellid="1" nodeset="1"></memnode>
  </numatune>
  <devices>
    <disk type="file">
      <address type="pci" domain="0x0000" bus="0x07" slot="0x00" function="0x0"></address>
    </disk>
  </devices>
</domain>
"""


@pytest.mark.parametrize("mode", ["auto", "strict"])
def test_numa_placement_is_written_before_the_hostdevs(mode: str) -> None:
    devices = [HostDevice(VF, numa_node=1), dev("3d:02.3", "00:11.0")]
    result = transform(NUMA_DOMAIN, devices, TransformOptions(numa_placement=mode))  # type: ignore[arg-type]
    # The operator's guest address is kept; the other VF goes behind a root port on cell 1.
    assert [(a.address, a.guest_address, a.guest_cell) for a in result.added] == [
        (VF, PciAddress.parse("09:00.0"), 1),
        (VF2, PciAddress.parse("00:11.0"), None),
    ]
    assert result.warnings == ()
    plus, minus = added_lines(normalized(NUMA_DOMAIN), result.xml)
    assert minus == []
    assert plus[:12] == [
        '    <controller type="pci" index="8" model="pcie-expander-bus">',
        '      <model name="pxb-pcie"/>',
        '      <target busNr="254">',
        "        <node>1</node>",
        "      </target>",
        "    </controller>",
        '    <controller type="pci" index="9" model="pcie-root-port">',
        '      <model name="pcie-root-port"/>',
        '      <target chassis="9" port="0x0"/>',
        '      <address type="pci" domain="0x0000" bus="0x08" slot="0x00" function="0x0"/>',
        "    </controller>",
        '    <hostdev mode="subsystem" type="pci" managed="no">',
    ]
    assert (
        '      <address type="pci" domain="0x0000" bus="0x09" slot="0x00" function="0x0"/>' in plus
    )


def test_numa_placement_off_or_no_cells_places_nothing() -> None:
    off = transform(
        NUMA_DOMAIN, [HostDevice(VF, numa_node=1)], TransformOptions(numa_placement="off")
    )
    no_cells = transform(NUMA_DOMAIN.replace(b"cell", b"notacell"), [HostDevice(VF, numa_node=1)])
    for result in (off, no_cells):
        assert result.added[0].guest_address is None and result.warnings == ()
        assert b"<controller" not in result.xml


def test_strict_placement_failure_is_a_precondition() -> None:
    with pytest.raises(PreconditionFailed, match=r"VF 0000:3d:02\.2: its host NUMA node 7"):
        transform(
            NUMA_DOMAIN, [HostDevice(VF, numa_node=7)], TransformOptions(numa_placement="strict")
        )


def test_auto_placement_failure_is_a_warning() -> None:
    result = transform(NUMA_DOMAIN, [HostDevice(VF, numa_node=7)])
    assert result.added[0].guest_address is None
    assert result.warnings == (
        "NUMA placement: VF 0000:3d:02.2 left without NUMA affinity: its host NUMA node 7 "
        "backs no guest NUMA cell (no numatune memnode holds it and no vCPU is pinned only "
        "to its CPUs)",
    )


# --- C14N: the output is the input plus exactly the added elements ---------------------------

ENCODINGS = st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "utf-16-be-bom", "utf-32"])


def without_declaration(xml: bytes) -> bytes:
    if xml.startswith(b"<?xml"):
        return xml[xml.index(b"?>") + 2 :].lstrip()
    return xml


def encode(xml: bytes, encoding: str) -> bytes:
    """The same document in another encoding, declaration dropped (a BOM says it all)."""
    text = without_declaration(xml).decode()
    if encoding == "utf-16-be-bom":
        return b"\xfe\xff" + text.encode("utf-16-be")
    return text.encode(encoding)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    domains(),
    st.lists(pci_addresses, min_size=1, max_size=3, unique=True),
    ENCODINGS,
    st.booleans(),
)
def test_c14n_of_output_is_input_plus_added(
    generated: GeneratedDomain, addresses: list[PciAddress], encoding: str, doctype: bool
) -> None:
    source = generated.xml
    if doctype:
        source = b"<!DOCTYPE domain>\n" + without_declaration(source)
    document = encode(source, encoding)
    result = transform(document, [HostDevice(a) for a in addresses])
    if not result.added:
        assert result.xml == document
        return
    assert result.xml.startswith(b"<?xml version='1.0' encoding='UTF-8'?>\n")
    out = etree.fromstring(result.xml)
    added = {a.alias for a in result.added}
    new = [h for h in out.iterfind("devices/hostdev") if h.findall("alias")[0].get("name") in added]
    assert [source_of(h) for h in new] == [a.address for a in result.added]
    # Removing exactly the added elements (and a <devices> the input lacked) gives the input.
    assert canonical(result.xml, frozenset(added), not generated.has_devices) == canonical(
        generated.xml
    )


# --- the parser's hardening, option by option ------------------------------------------------


def parse(data: bytes) -> etree._Element:
    return etree.fromstring(data, xml_reader.parser())


def test_parser_keeps_entity_references_unexpanded() -> None:
    root = parse(b'<!DOCTYPE d [<!ENTITY a "expanded">]><d>&a;</d>')
    assert root.text is None and isinstance(root[0], etree._Entity)


def test_internal_subset_defaults_apply_so_declarations_are_refused() -> None:
    """libxml2 applies an internal subset's attribute defaults whatever the options."""
    xml = b'<!DOCTYPE domain [<!ATTLIST domain a CDATA "x">]><domain><name/></domain>'
    assert parse(xml).get("a") == "x"
    with pytest.raises(UnsafeXml, match="declarations in its DOCTYPE"):
        transform(xml, [HostDevice(VF)])


def test_parser_loads_no_external_dtd(tmp_path: Path) -> None:
    dtd = tmp_path / "d.dtd"
    dtd.write_text('<!ENTITY x "LOADED"><!ATTLIST d a CDATA "x">')
    root = parse(f'<!DOCTYPE d SYSTEM "{dtd.as_uri()}"><d>&x;</d>'.encode())
    assert root.getroottree().docinfo.externalDTD is None
    assert b"LOADED" not in etree.tostring(root) and root.get("a") is None


def test_parser_keeps_comments_pis_cdata_and_whitespace() -> None:
    xml = b"<domain>\n  <!-- c -->\n  <?pi x?>\n  <name><![CDATA[a<b]]></name>\n</domain>"
    root = parse(xml)
    assert etree.tostring(root) == xml
    out = transform(xml, [HostDevice(VF)]).xml
    assert b"<!-- c -->\n  <?pi x?>\n  <name><![CDATA[a<b]]></name>\n  <devices>" in out


# --- every message, whole: a mutant that garbles one is caught ---------------------------------


def message_of(xml: bytes, devices: list[HostDevice] | None = None) -> str:
    with pytest.raises(HookError) as info:
        transform(xml, devices or [HostDevice(VF)])
    return str(info.value)


NO_DTD = (
    "entities and DTDs are never expanded or fetched: send the plain libvirt domain XML "
    "without a DOCTYPE"
)


@pytest.mark.parametrize(
    ("xml", "message"),
    [
        (b" \n", "the domain XML is empty; pass the libvirt domain document"),
        (
            b"<domain>\n<name>vm</nam>\n</domain>",
            "domain XML is not well-formed at line 2, column 15: "
            "Opening and ending tag mismatch: name line 2 and nam",
        ),
        (
            b'<!DOCTYPE domain SYSTEM "x.dtd"><domain><name/></domain>',
            f"domain XML has a DOCTYPE with an external id; {NO_DTD}",
        ),
        (
            b'<!DOCTYPE domain [<!ENTITY a "b">]><domain><name/></domain>',
            f"domain XML declares entities in its DOCTYPE; {NO_DTD}",
        ),
        (
            b'<!DOCTYPE domain [<!ENTITY a "b">]><domain><name>&a;</name></domain>',
            f"domain XML has entity references; {NO_DTD}",
        ),
        (
            b"<!DOCTYPE domain [<!ATTLIST domain a CDATA #IMPLIED>]><domain><name/></domain>",
            f"domain XML has declarations in its DOCTYPE; {NO_DTD}",
        ),
        (
            b"<network><name>n</name></network>",
            "root element is <network>, not <domain>; pass a libvirt domain XML "
            "(virsh dumpxml, or what virt-launcher sends)",
        ),
        (
            b"<domain type='kvm'/>",
            "<domain> has no content; pass a complete libvirt domain XML",
        ),
        (
            b"<?a?>" * 1001 + b"<domain><name/></domain>",
            "domain XML has more than 1000 comments or processing instructions outside "
            "<domain>; remove them",
        ),
    ],
)
def test_messages_in_full(xml: bytes, message: str) -> None:
    assert message_of(xml) == message


def test_size_cap_is_inclusive() -> None:
    xml = b"<domain><name>vm</name></domain>"
    transform(xml, [HostDevice(VF)], TransformOptions(max_bytes=len(xml)))
    with pytest.raises(TooLarge) as info:
        transform(xml, [HostDevice(VF)], TransformOptions(max_bytes=len(xml) - 1))
    assert str(info.value) == (
        f"domain XML is {len(xml)} bytes, over the limit of {len(xml) - 1}; "
        "raise --max-domain-bytes if this domain is genuine"
    )


def test_invalid_addresses_name_what_they_are() -> None:
    broken = KUBEVIRT_HOSTDEV.replace(b'bus="0x3d"', b'bus="0x3d0"')
    assert message_of(broken, [HostDevice(VF2)]) == (
        "a host device source at line 6 has an invalid PCI address: "
        "PCI bus 0x3d0 is out of range (0 to 0xff)"
    )
    broken = KUBEVIRT_HOSTDEV.replace(b'bus="0x07"', b'bus="seven"')
    assert message_of(broken, [dev("3d:02.3", "08:00.0")]) == (
        "a device's guest address at line 17 has an invalid PCI address: "
        "PCI bus 'seven' is not a number (libvirt wants 0x-prefixed hex)"
    )


def test_guest_conflict_message_in_full() -> None:
    with pytest.raises(GuestAddressConflict) as info:
        transform(KUBEVIRT_HOSTDEV, [HostDevice(VF2), dev("3d:02.4", "07:00.0")])
    assert str(info.value) == (
        "guest PCI address 0000:07:00.0 requested for 0000:3d:02.4 is already used by "
        "<disk type='file'> (alias ua-qat-0) (target vda) at line 16; choose a free guest "
        "address or drop the guest placement"
    )


def test_conflict_with_a_device_without_attributes() -> None:
    xml = (
        b"<domain><name>vm</name><devices><video>"
        b'<address type="pci" domain="0x0000" bus="0x00" slot="0x02" function="0x0"/>'
        b"</video></devices></domain>"
    )
    assert "is already used by <video> at line 1;" in message_of(xml, [dev("3d:02.2", "00:02.0")])


def test_output_check_messages_in_full(monkeypatch: pytest.MonkeyPatch) -> None:
    write = xml_reader.write
    monkeypatch.setattr(xml_reader, "write", lambda tree: write(tree)[:-3])
    assert message_of(KUBEVIRT_HOSTDEV, [HostDevice(VF2)]) == (
        "the written domain XML does not read back (domain XML is not well-formed at line "
        "30, column 7: expected '>'); nothing was returned: report this with the input domain"
    )
    monkeypatch.setattr(
        xml_reader, "write", lambda tree: write(tree).replace(b"ua-qat-1", b"ua-qat-9")
    )
    assert message_of(KUBEVIRT_HOSTDEV, [HostDevice(VF2)]) == (
        "the written domain XML holds ua-qat-1 for 0000:3d:02.3 0 times under "
        "/domain/devices, not once; nothing was returned: report this with the input domain"
    )


# --- aliases and layout edge cases ------------------------------------------------------------


def test_aliases_skip_every_taken_number() -> None:
    xml = (
        b'<domain><name>vm</name><devices><disk><alias name="ua-qat-1"/></disk>'
        b'<disk><alias name="ua-qat-0"/></disk></devices></domain>'
    )
    result = transform(xml, [HostDevice(VF), HostDevice(VF2), dev("3d:02.4")])
    assert [a.alias for a in result.added] == ["ua-qat-2", "ua-qat-3", "ua-qat-4"]


@pytest.mark.parametrize(
    ("xml", "expected"),
    [
        # Compact, with an empty <devices/>: no whitespace is invented.
        (
            b"<domain><name>vm</name><devices/></domain>",
            b'<domain><name>vm</name><devices><hostdev mode="subsystem" type="pci" '
            b'managed="no"><driver name="vfio"/><source><address domain="0x0000" bus="0x3d" '
            b'slot="0x02" function="0x2"/></source><alias name="ua-qat-0"/></hostdev>'
            b"</devices></domain>",
        ),
        # Mixed content: the text stays where it was, nothing is indented.
        (
            b"<domain>\n  <name>vm</name>\n  <devices>text<disk/>tail</devices>\n</domain>",
            b"<domain>\n  <name>vm</name>\n  <devices>text<disk/>tail<hostdev "
            b'mode="subsystem" type="pci" managed="no"><driver name="vfio"/><source><address '
            b'domain="0x0000" bus="0x3d" slot="0x02" function="0x2"/></source><alias '
            b'name="ua-qat-0"/></hostdev></devices>\n</domain>',
        ),
        (
            b"<domain>\n  <name>vm</name>\n  <devices>only text</devices>\n</domain>",
            b"<domain>\n  <name>vm</name>\n  <devices>only text<hostdev "
            b'mode="subsystem" type="pci" managed="no"><driver name="vfio"/><source><address '
            b'domain="0x0000" bus="0x3d" slot="0x02" function="0x2"/></source><alias '
            b'name="ua-qat-0"/></hostdev></devices>\n</domain>',
        ),
        # Indented like the last child, whatever precedes the first; tabs kept.
        (
            b"<domain>\n\t<name>vm</name>\n\t<devices><disk/>\n\t\t<disk/>\n\t</devices>\n</domain>",
            b"<domain>\n\t<name>vm</name>\n\t<devices><disk/>\n\t\t<disk/>\n"
            b'\t\t<hostdev mode="subsystem" type="pci" managed="no">\n'
            b'\t\t\t<driver name="vfio"/>\n\t\t\t<source>\n'
            b'\t\t\t\t<address domain="0x0000" bus="0x3d" slot="0x02" function="0x2"/>\n'
            b'\t\t\t</source>\n\t\t\t<alias name="ua-qat-0"/>\n\t\t</hostdev>\n'
            b"\t</devices>\n</domain>",
        ),
        # The unit is the first child's indentation less </domain>'s, after the newline.
        (
            b"<domain>\n    <name>vm</name>\n    <devices/></domain>",
            b"<domain>\n    <name>vm</name>\n    <devices>\n"
            b'        <hostdev mode="subsystem" type="pci" managed="no">\n'
            b'            <driver name="vfio"/>\n            <source>\n'
            b'                <address domain="0x0000" bus="0x3d" slot="0x02" function="0x2"/>\n'
            b'            </source>\n            <alias name="ua-qat-0"/>\n        </hostdev>\n'
            b"    </devices></domain>",
        ),
        (
            b"<domain>\n   <name>vm</name>\n   <devices/>\n</domain>",
            b"<domain>\n   <name>vm</name>\n   <devices>\n"
            b'      <hostdev mode="subsystem" type="pci" managed="no">\n'
            b'         <driver name="vfio"/>\n         <source>\n'
            b'            <address domain="0x0000" bus="0x3d" slot="0x02" function="0x2"/>\n'
            b'         </source>\n         <alias name="ua-qat-0"/>\n      </hostdev>\n'
            b"   </devices>\n</domain>",
        ),
        # A first child on the root's own line: two spaces.
        (
            b"<domain> <name>vm</name>\n  <devices/>\n</domain>",
            b"<domain> <name>vm</name>\n  <devices>\n"
            b'    <hostdev mode="subsystem" type="pci" managed="no">\n'
            b'      <driver name="vfio"/>\n      <source>\n'
            b'        <address domain="0x0000" bus="0x3d" slot="0x02" function="0x2"/>\n'
            b'      </source>\n      <alias name="ua-qat-0"/>\n    </hostdev>\n'
            b"  </devices>\n</domain>",
        ),
    ],
    ids=["compact", "mixed", "text only", "tabs", "four spaces", "three, no base", "two"],
)
def test_layout(xml: bytes, expected: bytes) -> None:
    declaration = b"<?xml version='1.0' encoding='UTF-8'?>\n"
    assert transform(xml, [HostDevice(VF)]).xml == declaration + expected


ABBREVIATIONS = {
    b'<hostdev mode="subsystem" type="pci" managed="no">': b"<H>",
    b'<driver name="vfio"/>': b"<D/>",
    b'<address domain="0x0000" bus="0x3d" slot="0x02" function="0x2"/>': b"<A/>",
    b'<alias name="ua-qat-0"/>': b"<L/>",
}


def abbreviated(xml: bytes) -> bytes:
    body = xml.split(b"?>\n", 1)[1]
    for long, short in ABBREVIATIONS.items():
        body = body.replace(long, short)
    return body


HOSTDEV_AT = b"{0}<H>{0}{1}<D/>{0}{1}<source>{0}{1}{1}<A/>{0}{1}</source>{0}{1}<L/>{0}</hostdev>"


def hostdev_at(sep: bytes, unit: bytes) -> bytes:
    return HOSTDEV_AT.replace(b"{0}", sep).replace(b"{1}", unit)


@pytest.mark.parametrize(
    ("xml", "expected"),
    [
        (  # a blank line after <domain>: only the last line counts
            b"<domain>\n\n  <name>vm</name>\n  <devices/>\n</domain>",
            b"<domain>\n\n  <name>vm</name>\n  <devices>"
            + hostdev_at(b"\n    ", b"  ")
            + b"\n  </devices>\n</domain>",
        ),
        (  # </domain> itself indented: the unit is the difference
            b"<domain>\n\t\t<name>vm</name>\n\t\t<devices/>\n\t</domain>",
            b"<domain>\n\t\t<name>vm</name>\n\t\t<devices>"
            + hostdev_at(b"\n\t\t\t", b"\t")
            + b"\n\t\t</devices>\n\t</domain>",
        ),
        (  # a blank line before </domain>
            b"<domain>\n\t\t<name>vm</name>\n\t\t<devices/>\n\t\n\t</domain>",
            b"<domain>\n\t\t<name>vm</name>\n\t\t<devices>"
            + hostdev_at(b"\n\t\t\t", b"\t")
            + b"\n\t\t</devices>\n\t\n\t</domain>",
        ),
        (  # tabs inside, spaces before </domain>: cannot tell, two spaces
            b"<domain>\n\t\t<name>vm</name>\n\t\t<devices/>\n  </domain>",
            b"<domain>\n\t\t<name>vm</name>\n\t\t<devices>"
            + hostdev_at(b"\n\t\t  ", b"  ")
            + b"\n\t\t</devices>\n  </domain>",
        ),
        (  # children not indented at all: cannot tell, two spaces
            b"<domain>\n<name>vm</name>\n<devices/>\n</domain>",
            b"<domain>\n<name>vm</name>\n<devices>"
            + hostdev_at(b"\n  ", b"  ")
            + b"\n</devices>\n</domain>",
        ),
        (  # no whitespace after <domain>, some before <devices>
            b"<domain><name>vm</name>\n  <devices/></domain>",
            b"<domain><name>vm</name>\n  <devices>"
            + hostdev_at(b"\n    ", b"  ")
            + b"\n  </devices></domain>",
        ),
        (  # text after the last child: mixed content, nothing indented
            b"<domain>\n  <name>vm</name>\n  <devices>\n    <disk/>tail</devices>\n</domain>",
            b"<domain>\n  <name>vm</name>\n  <devices>\n    <disk/>tail"
            + hostdev_at(b"", b"")
            + b"</devices>\n</domain>",
        ),
    ],
    ids=["blank first", "indented root", "blank last", "mismatch", "flat", "late", "mixed"],
)
def test_indentation(xml: bytes, expected: bytes) -> None:
    assert abbreviated(transform(xml, [HostDevice(VF)]).xml) == expected


# --- attributes in a namespace: libvirt reads them by local name, so they are refused ---------

NAMESPACED = {
    "type of an existing hostdev": (
        '<hostdev q:type="pci" managed="no"><source>{SRC}</source></hostdev>',
        "hostdev",
        "{urn:q}type",
    ),
    "bus beside a plain one": (
        '<hostdev type="pci"><source><address domain="0x0000" q:bus="0x3d" bus="0x3e" '
        'slot="0x02" function="0x2"/></source></hostdev>',
        "address",
        "{urn:q}bus",
    ),
    "type of an interface": (
        '<interface q:type="hostdev"><source>{SRC}</source></interface>',
        "interface",
        "{urn:q}type",
    ),
    "type of a source address": (
        '<interface type="hostdev"><source><address q:type="pci" domain="0" bus="0x3d" '
        'slot="2" function="2"/></source></interface>',
        "address",
        "{urn:q}type",
    ),
    "alias name": ('<disk><alias q:name="ua-qat-0"/></disk>', "alias", "{urn:q}name"),
    "type of a guest address": (
        '<disk><address q:type="pci" domain="0" bus="0x10" slot="0" function="0"/></disk>',
        "address",
        "{urn:q}type",
    ),
}


@pytest.mark.parametrize("case", list(NAMESPACED))
def test_an_attribute_libvirt_would_read_in_a_namespace_is_refused(case: str) -> None:
    device, tag, key = NAMESPACED[case]
    source = '<address domain="0x0000" bus="0x3d" slot="0x02" function="0x2"/>'
    xml = (
        '<domain xmlns:q="urn:q"><name>vm</name><devices>'
        + device.replace("{SRC}", source)
        + "</devices></domain>"
    ).encode()
    message = message_of(xml, [HostDevice(VF), dev("3d:02.4", "00:10.0")])
    local = key.rpartition("}")[2]
    assert message == (
        f"<{tag}> at line 1 has the attribute {key} in a namespace; libvirt and KubeVirt read "
        f"it as {local!r} whatever its namespace, so write {local}= without a prefix"
    )


def test_attributes_libvirt_does_not_read_may_carry_a_namespace() -> None:
    xml = (
        b'<domain xmlns:q="urn:q"><name>vm</name><devices><disk q:type="file" q:x="1">'
        b'<target q:dev="vda"/></disk><hostdev type="pci" q:note="kept"><source>'
        b'<address domain="0x0000" bus="0x3d" slot="0x02" function="0x3"/></source></hostdev>'
        b"</devices></domain>"
    )
    result = transform(xml, [HostDevice(VF)])
    assert [a.alias for a in result.added] == ["ua-qat-0"]
    assert b'q:note="kept"' in result.xml


# --- more devices, more calls, more threads ---------------------------------------------------


def test_many_devices_get_their_own_addresses_and_aliases(domain_xml: bytes) -> None:
    devices = [dev(f"3d:0{slot}.{function}") for slot in range(1, 4) for function in range(8)]
    result = transform(domain_xml, devices)
    out = etree.fromstring(result.xml)
    hostdevs = out.findall("devices/hostdev")
    assert [source_of(h) for h in hostdevs] == [d.address for d in devices]
    assert [h.find("alias").get("name") for h in hostdevs] == [  # type: ignore[union-attr]
        f"ua-qat-{n}" for n in range(len(devices))
    ]


def test_one_call_carries_nothing_to_the_next(domain_xml: bytes) -> None:
    with pytest.raises(NotWellFormed, match="line 1, column"):
        transform(b"<domain><devices>", [HostDevice(VF)])
    assert len(transform(domain_xml, [HostDevice(VF)]).added) == 1
    with pytest.raises(UnsafeXml):
        transform(b'<!DOCTYPE d [<!ENTITY a "x">]><domain><name>&a;</name></domain>', [])
    with pytest.raises(NotWellFormed, match="Entity 'a' not defined"):
        transform(b"<domain><name>&a;</name></domain>", [HostDevice(VF)])
    assert (
        transform(domain_xml, [HostDevice(VF)]).xml == transform(domain_xml, [HostDevice(VF)]).xml
    )


def test_calls_from_other_threads_write_the_same_bytes(domain_xml: bytes) -> None:
    devices = [HostDevice(VF), dev("3d:02.3", "00:10.0")]
    here = transform(domain_xml, devices)
    there: list[TransformResult] = []
    threads = [
        threading.Thread(target=lambda: there.append(transform(domain_xml, devices)))
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert there == [here] * 4


def test_an_error_reaches_the_caller_as_itself() -> None:
    with pytest.raises(NotADomain, match="root element is <network>") as info:
        transform(b"<network><name>n</name></network>", [HostDevice(VF)])
    assert "Traceback" not in str(info.value)


@pytest.mark.parametrize("encoding", ["utf-8", "utf-16", "utf-32"])
@pytest.mark.parametrize(
    "body",
    ["<name>&x;</name>", '<name a="&x;">vm</name>', "<name>vm</name><devices>&x;</devices>"],
)
def test_entity_reference_without_a_doctype_is_not_well_formed(encoding: str, body: str) -> None:
    """Why only a document with a DOCTYPE is walked for entity references."""
    document = f'<?xml version="1.0" encoding="{encoding}"?><domain>{body}</domain>'
    with pytest.raises(NotWellFormed, match="Entity 'x' not defined"):
        transform(document.encode(encoding), [HostDevice(VF)])


def test_entity_reference_with_a_bare_doctype_is_refused() -> None:
    with pytest.raises((UnsafeXml, NotWellFormed)):
        transform(b"<!DOCTYPE domain><domain><name>&x;</name></domain>", [HostDevice(VF)])


def test_both_parsers_are_hardened_and_the_lean_one_drops_only_non_elements() -> None:
    subset = b'<!DOCTYPE d [<!ENTITY a "x">]><d>&a;<!--c--><?p?><![CDATA[<z>]]>\n  <e/>\n</d>'
    read = etree.fromstring(subset, xml_reader.parser())
    assert [type(n) for n in read] == [
        etree._Entity,
        etree._Comment,
        etree._ProcessingInstruction,
        etree._Element,
    ]
    assert b"<![CDATA[<z>]]>" in etree.tostring(read)  # CDATA kept as written
    lean = etree.fromstring(subset, xml_reader.parser(lean=True))
    assert isinstance(lean[0], etree._Entity)  # never expanded here either
    lean = etree.fromstring(b"<d>\n  <!--c-->\n  <?p?>\n  <e/>\n</d>", xml_reader.parser(lean=True))
    assert [n.tag for n in lean] == ["e"] and lean.text is None and lean[0].tail is None
    for document in (
        b'<domain><a xml:id="x"/><b xml:id="x"/></domain>',
        b"<domain><devices></domain>",
        b"<domain>&x;</domain>",
    ):
        for lean_parser in (False, True):
            with pytest.raises(etree.XMLSyntaxError):
                etree.fromstring(document, xml_reader.parser(lean_parser))


@pytest.mark.parametrize("prefix", ["ua-q'at-", 'ua-q"at-', "ua-\"'-", "ua-]-", ""])
def test_alias_prefix_is_a_plain_value(prefix: str) -> None:
    taken = prefix.replace("&", "&amp;").replace('"', "&quot;")
    xml = (
        f'<domain><name>vm</name><devices><disk><alias name="{taken}0"/></disk>'
        f'<disk><alias name="x{taken}1"/></disk></devices></domain>'
    ).encode()
    options = TransformOptions(alias_prefix=prefix)
    result = transform(xml, [HostDevice(VF), HostDevice(VF2)], options)
    assert [a.alias for a in result.added] == [f"{prefix}1", f"{prefix}2"]


@pytest.mark.parametrize(("before", "after"), [(0, 1), (1, 0), (1000, 0), (0, 1000), (500, 500)])
def test_nodes_outside_the_root_up_to_the_cap_are_kept(before: int, after: int) -> None:
    xml = b"<!--b-->" * before + b"<domain><name>vm</name><devices/></domain>" + b"<?p?>" * after
    out = transform(xml, [HostDevice(VF)]).xml
    assert out.count(b"<!--b-->") == before and out.count(b"<?p?>") == after


def test_devices_are_read_as_libvirt_reads_them() -> None:
    """Sources of PCI hostdevs and hostdev interfaces, every alias, in every <devices>."""
    xml = (
        b'<domain><name>vm</name><devices><disk><alias name="ua-qat-0"/></disk>'
        b'<hostdev type="pci"><source><address domain="0" bus="0x3d" slot="2" function="2"/>'
        b'</source><alias name="ua-qat-2"/></hostdev></devices>'
        b'<devices><interface type="hostdev"><source>'
        b'<address type="pci" domain="0" bus="0x3d" slot="2" function="3"/></source>'
        b'<alias name="ua-qat-3"/></interface><hostdev type="usb"><source>'
        b'<address domain="0" bus="0x3d" slot="2" function="4"/></source></hostdev>'
        b'<interface type="bridge"><source><address type="pci" domain="0" bus="0x3d" slot="2" '
        b'function="5"/></source></interface>'
        b"<hostdev type='pci'><source><address domain='0' bus='0x3d' slot='2' function='6'/>"
        b"<address domain='0' bus='0x3d' slot='2' function='7'/></source></hostdev>"
        b"</devices></domain>"
    )
    asked = [dev(f"3d:02.{function}") for function in range(2, 8)]
    result = transform(xml, asked)
    assert result.already_present == (VF, VF2, PciAddress.parse("3d:02.6"))
    # libvirt passes only the first address of a source through: the second is not present.
    assert [(str(a.address), a.alias) for a in result.added] == [
        ("0000:3d:02.4", "ua-qat-1"),
        ("0000:3d:02.5", "ua-qat-4"),
        ("0000:3d:02.7", "ua-qat-5"),
    ]
    # New hostdevs go into the first <devices>.
    assert [source_of(h) for h in etree.fromstring(result.xml)[1].iter("hostdev")][1:] == [
        a.address for a in result.added
    ]


def test_namespaced_elements_are_not_libvirts() -> None:
    """libvirt's ``./devices/hostdev`` matches no element in a namespace: neither does the hook.

    Its alias is still kept free: Go's encoding/xml reads the element by its local name.
    """
    xml = (
        b'<domain><name>vm</name><devices><q:hostdev xmlns:q="urn:q" type="pci"><source>'
        b'<address domain="0" bus="0x3d" slot="2" function="2"/></source><alias name="ua-qat-0"/>'
        b"</q:hostdev></devices></domain>"
    )
    result = transform(xml, [HostDevice(VF)])
    assert [a.alias for a in result.added] == ["ua-qat-1"]


def test_a_source_is_read_whatever_else_the_hostdev_holds() -> None:
    """No source at all, a comment before the address, a PCI domain other than 0."""
    xml = (
        b'<domain><name>vm</name><devices><hostdev type="pci"><alias name="x"/></hostdev>'
        b'<hostdev type="pci"><source><!-- KubeVirt --><address domain="0x0001" bus="0x3d" '
        b'slot="0x02" function="0x2"/></source></hostdev></devices></domain>'
    )
    other_domain = PciAddress.parse("0001:3d:02.2")
    result = transform(xml, [HostDevice(VF), HostDevice(other_domain)])
    assert result.already_present == (other_domain,)
    assert [a.address for a in result.added] == [VF]


def test_root_ports_on_one_bus_get_consecutive_slots_and_ports() -> None:
    devices = [HostDevice(VF, numa_node=1), HostDevice(VF2, numa_node=1)]
    result = transform(NUMA_DOMAIN, devices)
    ports = etree.fromstring(result.xml).findall("devices/controller[@model='pcie-root-port']")
    assert [(p.find("address").get("slot"), p.find("target").get("port")) for p in ports] == [  # type: ignore[union-attr]
        ("0x00", "0x0"),
        ("0x01", "0x8"),
    ]


def test_the_guard_counts_only_hostdevs_in_devices() -> None:
    hostdev = f'<hostdev><source>{_SRC}</source><alias name="ua-qat-0"/></hostdev>'
    with pytest.raises(OutputCheckFailed):
        check_output(
            f"<domain><other>{hostdev}</other></domain>".encode(), (AddedDevice(VF, "ua-qat-0"),)
        )


def test_only_alias_elements_name_aliases() -> None:
    xml = (
        b'<domain><name>vm</name><devices><disk><driver name="ua-qat-0"/></disk></devices></domain>'
    )
    assert [a.alias for a in transform(xml, [HostDevice(VF)]).added] == ["ua-qat-0"]


@pytest.mark.parametrize(
    ("xml", "expected"),
    [
        (
            b"<domain>\n  <devices>\n  </devices>\n</domain>",
            b"<domain>\n  <devices>" + hostdev_at(b"\n    ", b"  ") + b"\n  </devices>\n</domain>",
        ),
        (
            b"<domain>\n  <name>vm</name>\n\n  <devices/>\n</domain>",
            b"<domain>\n  <name>vm</name>\n\n  <devices>"
            + hostdev_at(b"\n    ", b"  ")
            + b"\n  </devices>\n</domain>",
        ),
        (
            b"<domain><name>vm</name></domain>",
            b"<domain><name>vm</name><devices>" + hostdev_at(b"", b"") + b"</devices></domain>",
        ),
    ],
    ids=["devices first", "blank line before devices", "compact, no devices"],
)
def test_more_layouts(xml: bytes, expected: bytes) -> None:
    assert abbreviated(transform(xml, [HostDevice(VF)]).xml) == expected
