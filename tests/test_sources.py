"""The sources that read only the call's input: exact answers, exact places, exact errors."""

from __future__ import annotations

import json
from typing import Any

import pytest

from hook_sidecar import sources
from hook_sidecar.errors import InvalidInput
from hook_sidecar.pci import PciAddress
from hook_sidecar.sources import Candidates, Lookup, SourceInput

A, B, C = (PciAddress.parse(a) for a in ("3d:02.2", "3d:02.3", "af:01.0"))
NOT_AN_ADDRESS = (
    "'x' is not a PCI address; expected DDDD:BB:SS.F or BB:SS.F in hex, for example "
    "0000:3d:02.2 or 3d:02.2"
)
OVERRIDE_WHERE = "--device options and QAT_HOOK_DEVICES"
ENV_WHERE = (
    "device-plugin variables QAT<N>, PCI_RESOURCE_QAT_INTEL_COM_*, PCIDEVICE_QAT_INTEL_COM_*"
)
ANNOTATION = "qat.vm.kubevirt.io/devices"


def call(env: dict[str, str] | None = None, vmi: Any = None) -> SourceInput:
    return SourceInput(vmi or {}, env or {})


def many(count: int) -> list[PciAddress]:
    return [PciAddress(0, 0x3D, slot, 0) for slot in range(count)]


@pytest.mark.parametrize(
    ("count", "text"),
    [
        (0, ""),
        (1, "0000:3d:00.0"),
        (2, "0000:3d:00.0, 0000:3d:01.0"),
        (8, ", ".join(f"0000:3d:{slot:02x}.0" for slot in range(8))),
        (9, ", ".join(f"0000:3d:{slot:02x}.0" for slot in range(8)) + " and 1 more"),
        (10, ", ".join(f"0000:3d:{slot:02x}.0" for slot in range(8)) + " and 2 more"),
    ],
)
def test_addresses_text(count: int, text: str) -> None:
    assert sources.addresses_text(many(count)) == text


@pytest.mark.parametrize(
    ("text", "addresses"),
    [
        ("", ()),
        (" , ,", ()),
        ("3d:02.2,,3d:02.3", (A, B)),
        (",3d:02.2, ,3d:02.3,", (A, B)),
    ],
)
def test_parse_address_list_skips_empty_items(text: str, addresses: tuple[PciAddress, ...]) -> None:
    assert sources.parse_address_list(text, "here") == addresses


def test_parse_address_list_names_where() -> None:
    with pytest.raises(InvalidInput) as info:
        sources.parse_address_list("3d:02.2,x", "variable QAT0")
    assert str(info.value) == f"variable QAT0: {NOT_AN_ADDRESS}"


def test_dedupe_keeps_the_first_place() -> None:
    assert sources.dedupe([B, A, B, C, A]) == (B, A, C)


def test_override_from_the_devices_given() -> None:
    look = sources.override((B, A, B))
    assert look(call({"QAT_HOOK_DEVICES": "af:01.0"})) == Lookup(
        OVERRIDE_WHERE, Candidates("override", "--device", (B, A))
    )


def test_override_from_the_variable() -> None:
    look = sources.override(())
    assert look(call({"QAT_HOOK_DEVICES": "3d:02.3,3d:02.2,3d:02.3,"})) == Lookup(
        OVERRIDE_WHERE, Candidates("override", "QAT_HOOK_DEVICES", (B, A))
    )


def test_override_not_set() -> None:
    assert sources.override(())(call({})) == Lookup(f"{OVERRIDE_WHERE} (not set)")


@pytest.mark.parametrize("value", ["", " , "])
def test_override_set_but_empty_is_a_problem(value: str) -> None:
    assert sources.override(())(call({"QAT_HOOK_DEVICES": value})) == Lookup(
        f"{OVERRIDE_WHERE} (QAT_HOOK_DEVICES set but empty)",
        problem="QAT_HOOK_DEVICES is set but empty: set it to the VF's address "
        "(for example 0000:3d:02.2) or remove it",
    )


def test_override_variable_malformed() -> None:
    with pytest.raises(InvalidInput) as info:
        sources.override(())(call({"QAT_HOOK_DEVICES": "x"}))
    assert str(info.value) == f"QAT_HOOK_DEVICES: {NOT_AN_ADDRESS}"


def test_environment_found_in_full() -> None:
    env = {
        "QAT1": "3d:02.3",
        "QAT0": "3d:02.2",
        "QATX": "af:01.0",  # not QAT<N>
        "PCIDEVICE_QAT_INTEL_COM_CY": "af:01.0,3d:02.2",
        "PCI_RESOURCE_OTHER_COM_X": "af:01.0",  # not a QAT resource
        "PCI_RESOURCE_QAT_INTEL_COM_DC": "",  # empty: not used
    }
    assert sources.environment(("qat.intel.com/*",))(call(env)) == Lookup(
        ENV_WHERE,
        Candidates("environment", "QAT0, QAT1, PCIDEVICE_QAT_INTEL_COM_CY", (A, B, C)),
    )


def test_environment_none_set() -> None:
    assert sources.environment(("qat.intel.com/*",))(call({"QAT0": ""})) == Lookup(
        f"{ENV_WHERE} (none set in this container)"
    )


def test_environment_malformed() -> None:
    with pytest.raises(InvalidInput) as info:
        sources.environment(("qat.intel.com/*",))(call({"QAT3": "x"}))
    assert str(info.value) == f"variable QAT3: {NOT_AN_ADDRESS}"


def annotated(value: str) -> dict[str, Any]:
    return {"metadata": {"annotations": {ANNOTATION: value}}}


def test_vmi_annotation_ignored_unless_allowed() -> None:
    assert sources.vmi_annotation(False)(call(vmi=annotated("3d:02.2"))) == Lookup(
        f"VMI annotation {ANNOTATION} "
        "(ignored: start the sidecar with --allow-vmi-devices to use it)"
    )


def test_vmi_annotation_found() -> None:
    assert sources.vmi_annotation(True)(call(vmi=annotated("3d:02.3, 3d:02.2,3d:02.3"))) == Lookup(
        f"VMI annotation {ANNOTATION}", Candidates("vmi-annotation", ANNOTATION, (B, A))
    )


@pytest.mark.parametrize("vmi", [{}, annotated(""), annotated(" ,")])
def test_vmi_annotation_not_set(vmi: Any) -> None:
    assert sources.vmi_annotation(True)(call(vmi=vmi)) == Lookup(
        f"VMI annotation {ANNOTATION} (not set)"
    )


def test_vmi_annotation_malformed() -> None:
    with pytest.raises(InvalidInput) as info:
        sources.vmi_annotation(True)(call(vmi=annotated("x")))
    assert str(info.value) == f"annotation {ANNOTATION}: {NOT_AN_ADDRESS}"


# --- the SR-IOV device plugin's device-info variable -----------------------------------------

DEVICE_INFO = json.dumps(
    {
        "0000:3d:02.2": {
            "generic": {"deviceID": "0000:3d:02.2"},
            "vfio": {"mount": "/dev/vfio/vfio"},
        },
        "0000:3d:02.3": {"generic": {"deviceID": "0000:3d:02.3"}},
    }
)


def test_device_info_beside_its_variable_is_skipped() -> None:
    """The plugin sets both; the _INFO one repeats the addresses with details."""
    env = {
        "PCIDEVICE_QAT_INTEL_COM_GENERIC": "0000:3d:02.2,0000:3d:02.3",
        "PCIDEVICE_QAT_INTEL_COM_GENERIC_INFO": DEVICE_INFO,
    }
    assert sources.environment(("qat.intel.com/*",))(call(env)) == Lookup(
        ENV_WHERE, Candidates("environment", "PCIDEVICE_QAT_INTEL_COM_GENERIC", (A, B))
    )


def test_device_info_alone_is_read_by_its_keys() -> None:
    env = {"PCIDEVICE_QAT_INTEL_COM_GENERIC_INFO": DEVICE_INFO}
    assert sources.environment(("qat.intel.com/*",))(call(env)) == Lookup(
        ENV_WHERE, Candidates("environment", "PCIDEVICE_QAT_INTEL_COM_GENERIC_INFO", (A, B))
    )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            "[1]",
            "variable PCIDEVICE_QAT_INTEL_COM_X_INFO is not a device-info object keyed by "
            "PCI address",
        ),
        (
            '{"eth0": {}}',
            "variable PCIDEVICE_QAT_INTEL_COM_X_INFO: device-info key 'eth0' is "
            "not a PCI address; expected DDDD:BB:SS.F or BB:SS.F in hex, for example 0000:3d:02.2 "
            "or 3d:02.2",
        ),
        (
            '{"a": ' * 9 + "1" + "}" * 9,
            "variable PCIDEVICE_QAT_INTEL_COM_X_INFO field "
            "a.a.a.a.a.a.a.a... nests deeper than 8 levels",
        ),
    ],
)
def test_device_info_of_another_shape_is_named(value: str, message: str) -> None:
    env = {"PCIDEVICE_QAT_INTEL_COM_X_INFO": value}
    with pytest.raises(InvalidInput) as info:
        sources.environment(("qat.intel.com/*",))(call(env))
    assert str(info.value) == message


def test_a_plain_info_suffixed_variable_is_an_address_list() -> None:
    """A resource whose own name ends in _INFO still reads as addresses."""
    env = {"PCIDEVICE_QAT_INTEL_COM_INFO": "3d:02.2"}
    assert sources.environment(("qat.intel.com/*",))(call(env)).found == Candidates(
        "environment", "PCIDEVICE_QAT_INTEL_COM_INFO", (A,)
    )


@pytest.mark.parametrize(
    "name", ["PCIDEVICE_QAT_INTEL_COM_GENERIC", "PCI_RESOURCE_QAT_INTEL_COM_GENERIC_INFO"]
)
def test_only_a_pcidevice_info_variable_is_read_as_device_info(name: str) -> None:
    """The device-info shape is KubeVirt's PCIDEVICE_<resource>_INFO alone: the same JSON in
    any other variable is a malformed address list."""
    with pytest.raises(InvalidInput) as info:
        sources.environment(("qat.intel.com/*",))(call({name: DEVICE_INFO}))
    assert str(info.value).startswith(f'variable {name}: \'{{"0000:3d:02.2": ')
    assert str(info.value).endswith(
        "is not a PCI address; expected DDDD:BB:SS.F or BB:SS.F in hex, "
        "for example 0000:3d:02.2 or 3d:02.2"
    )
