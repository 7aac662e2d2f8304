from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hook_sidecar.errors import InvalidInput
from hook_sidecar.pci import PciAddress, PciAddressError

addresses = st.builds(
    PciAddress,
    domain=st.integers(0, 0xFFFF),
    bus=st.integers(0, 0xFF),
    slot=st.integers(0, 0x1F),
    function=st.integers(0, 7),
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0000:3d:02.2", "0000:3d:02.2"),
        ("3d:02.2", "0000:3d:02.2"),
        ("  0000:3D:02.2\n", "0000:3d:02.2"),
        ("ffff:ff:1f.7", "ffff:ff:1f.7"),
        ("1:0:0.0", "0001:00:00.0"),
    ],
)
def test_parse_normalises(text: str, expected: str) -> None:
    assert str(PciAddress.parse(text)) == expected


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("garbage", "'garbage' is not a PCI address"),
        ("0000:3d:20.0", "slot 0x20 is out of range"),
        ("0000:3d:02.8", "function 0x8 is out of range"),
        ("10000:3d:02.0", "is not a PCI address"),
        ("0000:3d:02", "is not a PCI address"),
        ("", "is not a PCI address"),
    ],
)
def test_parse_rejects_with_message(text: str, needle: str) -> None:
    with pytest.raises(PciAddressError) as info:
        PciAddress.parse(text)
    assert needle in str(info.value)
    assert isinstance(info.value, InvalidInput)


def test_error_names_accepted_forms() -> None:
    with pytest.raises(PciAddressError, match=r"DDDD:BB:SS\.F or BB:SS\.F"):
        PciAddress.parse("3d-02-2")


def test_libvirt_attributes() -> None:
    assert PciAddress.parse("0000:3d:02.2").libvirt_attributes() == {
        "domain": "0x0000",
        "bus": "0x3d",
        "slot": "0x02",
        "function": "0x2",
    }


@pytest.mark.parametrize(
    ("attrs", "expected"),
    [
        ({"domain": "0x0000", "bus": "0x3d", "slot": "0x02", "function": "0x2"}, "0000:3d:02.2"),
        ({"bus": "61", "slot": "2", "function": "2"}, "0000:3d:02.2"),
        ({"domain": "0", "bus": "010", "slot": "0x1f", "function": "07"}, "0000:08:1f.7"),
    ],
)
def test_from_libvirt(attrs: dict[str, str], expected: str) -> None:
    assert str(PciAddress.from_libvirt(attrs)) == expected


def test_from_libvirt_rejects_out_of_range() -> None:
    with pytest.raises(PciAddressError, match="slot 0x20"):
        PciAddress.from_libvirt({"bus": "0x3d", "slot": "0x20", "function": "0"})
    with pytest.raises(PciAddressError, match="not a number"):
        PciAddress.from_libvirt({"bus": "zz"})


@given(addresses)
def test_text_round_trip(address: PciAddress) -> None:
    assert PciAddress.parse(str(address)) == address
    assert PciAddress.parse(str(address).upper()) == address


@given(addresses)
def test_libvirt_round_trip(address: PciAddress) -> None:
    assert PciAddress.from_libvirt(address.libvirt_attributes()) == address


@given(addresses)
def test_short_form_is_domain_zero(address: PciAddress) -> None:
    short = f"{address.bus:x}:{address.slot:x}.{address.function}"
    assert PciAddress.parse(short) == PciAddress(0, address.bus, address.slot, address.function)


@given(
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFF),
    st.integers(0x20, 0xFF),
    st.integers(0, 7),
)
def test_out_of_range_slot_rejected(domain: int, bus: int, slot: int, function: int) -> None:
    with pytest.raises(PciAddressError):
        PciAddress.parse(f"{domain:04x}:{bus:02x}:{slot:02x}.{function}")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"domain": 0x10000}, "PCI domain 0x10000 is out of range (0 to 0xffff)"),
        ({"bus": 0x100}, "PCI bus 0x100 is out of range (0 to 0xff)"),
        ({"slot": 0x20}, "PCI slot 0x20 is out of range (0 to 0x1f)"),
        ({"function": 8}, "PCI function 0x8 is out of range (0 to 0x7)"),
        ({"bus": -1}, "PCI bus -0x1 is out of range (0 to 0xff)"),
    ],
)
def test_each_field_is_range_checked_by_name(fields: dict[str, int], message: str) -> None:
    values = {"domain": 0, "bus": 0, "slot": 0, "function": 0, **fields}
    with pytest.raises(PciAddressError) as info:
        PciAddress(**values)
    assert str(info.value) == message


def test_function_is_hex() -> None:
    """A hex letter is read as hex (and then out of range), never a crash."""
    with pytest.raises(PciAddressError) as info:
        PciAddress.parse("3d:02.a")
    assert str(info.value) == "'3d:02.a': PCI function 0xa is out of range (0 to 0x7)"


@pytest.mark.parametrize(
    ("text", "value"), [("0", 0), ("7", 7), ("07", 7), ("010", 8), ("0x1F", 31), ("31", 31)]
)
def test_c_integers_as_libvirt_reads_them(text: str, value: int) -> None:
    assert PciAddress.from_libvirt({"slot": text}).slot == value


@pytest.mark.parametrize("text", ["08", "09", "0x", "1a", ""])
def test_not_c_integers_are_refused(text: str) -> None:
    """libvirt reads "08" as octal and refuses it; so does the hook."""
    with pytest.raises(PciAddressError, match="is not a number"):
        PciAddress.from_libvirt({"slot": text})
