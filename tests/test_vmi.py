"""The VMI reader: bounded JSON, whole-number quantities, malformed fields named.

Every case must be ``InvalidInput`` (INVALID_ARGUMENT over gRPC) naming the
field, never a RecursionError or ValueError that the server would turn into
INTERNAL.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hook_sidecar import boundedjson, hook
from hook_sidecar import vmi as vmis
from hook_sidecar.config import (
    DEFAULT_RESOURCE_PATTERNS,
    MAX_VMI_BYTES,
    DiscoveryConfig,
    HookSettings,
)
from hook_sidecar.errors import InvalidInput
from hook_sidecar.hostdevs import TransformOptions
from tests.test_discovery import make_vmi

PATTERNS = DEFAULT_RESOURCE_PATTERNS
LIMIT_FIELD = 'spec.domain.resources.limits["qat.intel.com/generic"]'


def request(vmi: Any) -> vmis.Request:
    return vmis.read_request(vmi, PATTERNS, allow_vmi_devices=True)


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        (b"[" * 100_000, "nests deeper than 64 levels"),
        (b'{"spec": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nests deeper than"),
        (json.dumps({"spec": {"x": nested(70)}}).encode(), "VMI field spec.x[0][0]"),
        (b'{"metadata": {"generation": ' + b"9" * 5000 + b"}}", "metadata.generation is a number"),
        (b'{"a": 1.' + b"5" * 5000 + b"}", "VMI field a is a number of 5002 characters"),
        (b'{"a": [NaN]}', "VMI field a[0] is NaN"),
        (b'{"a": 1e999}', "VMI field a is 1e999, out of a float's range"),
        (b"{", "VMI is not valid JSON"),
        (b"\xff\xfe{", "VMI is not valid JSON"),
    ],
)
def test_parse_bounds(raw: bytes, needle: str) -> None:
    with pytest.raises(InvalidInput) as info:
        vmis.parse_vmi(raw)
    assert needle in str(info.value)
    assert len(str(info.value)) < 300


def test_size_bound_is_checked_before_parsing() -> None:
    at_bound = b'{"a": "' + b"x" * (MAX_VMI_BYTES - 10) + b'"}'
    assert len(at_bound) == MAX_VMI_BYTES - 1
    assert vmis.parse_vmi(at_bound + b" ")["a"].startswith("x")
    with pytest.raises(InvalidInput) as info:
        vmis.parse_vmi(at_bound + b"  ")
    assert str(info.value) == (
        "VMI JSON is over 2097152 bytes (etcd keeps a VMI under about 1.5 MiB); "
        "pass the VirtualMachineInstance object (kubectl get vmi NAME -o json)"
    )


def test_the_size_cap_fits_what_etcd_stores() -> None:
    assert MAX_VMI_BYTES == 2 * 1024 * 1024


# --- a file given to the CLI: a VMI, a VirtualMachine, or an error naming what it is -----------

VM = {
    "apiVersion": "kubevirt.io/v1",
    "kind": "VirtualMachine",
    "metadata": {"name": "vm-qat", "namespace": "prod", "annotations": {"vm-only": "x"}},
    "spec": {
        "runStrategy": "Always",
        "template": {
            "metadata": {
                "labels": {"app": "qat"},
                "annotations": {"qat.vm.kubevirt.io/enabled": "true"},
            },
            "spec": {"domain": {"resources": {"limits": {"qat.intel.com/generic": "1"}}}},
        },
    },
}


def test_a_virtual_machine_is_read_as_the_vmi_its_template_starts() -> None:
    vmi, note = vmis.read_vmi_file(json.dumps(VM).encode(), "vm.json")
    assert vmi == {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachineInstance",
        "metadata": {
            "labels": {"app": "qat"},
            "annotations": {"qat.vm.kubevirt.io/enabled": "true"},
            "name": "vm-qat",
            "namespace": "prod",
        },
        "spec": {"domain": {"resources": {"limits": {"qat.intel.com/generic": "1"}}}},
    }
    assert (
        note
        == "vm.json is the VirtualMachine prod/vm-qat: reading its spec.template, the VMI it starts"
    )
    assert request(vmi).expected == 1


def test_a_vmi_file_is_read_as_it_is() -> None:
    vmi = {"kind": "VirtualMachineInstance", "metadata": {"name": "a"}}
    assert vmis.read_vmi_file(json.dumps(vmi).encode(), "f") == (vmi, None)
    kindless = {"metadata": {"name": "a"}}  # as tests and older tools write them
    assert vmis.read_vmi_file(json.dumps(kindless).encode(), "f") == (kindless, None)
    spec_only: dict[str, Any] = {"spec": {"domain": {}}}
    assert vmis.read_vmi_file(json.dumps(spec_only).encode(), "f") == (spec_only, None)


GET = "kubectl get vmi NAME -o json"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", f"f is empty; pass the VMI as JSON ({GET})"),
        (b" \n", f"f is empty; pass the VMI as JSON ({GET})"),
        (b"{}", f"VMI f is an empty object {{}}; pass {GET}"),
        (b"[]", f"VMI f is a list, expected one VirtualMachineInstance object ({GET})"),
        (b'"x"', f"VMI f is a string, expected one VirtualMachineInstance object ({GET})"),
        (b"1.5", f"VMI f is a number, expected one VirtualMachineInstance object ({GET})"),
        (b"null", f"VMI f is null, expected one VirtualMachineInstance object ({GET})"),
        (
            json.dumps({"kind": "List", "items": [VM, VM]}).encode(),
            f"f is a List of 2 items; pass one VMI ({GET})",
        ),
        (
            json.dumps({"kind": "VirtualMachineInstanceList", "items": []}).encode(),
            f"f is a VirtualMachineInstanceList of 0 items; pass one VMI ({GET})",
        ),
        (
            json.dumps({"kind": "Pod", "metadata": {}}).encode(),
            f"f is a Pod, not a VirtualMachineInstance or VirtualMachine; pass {GET}",
        ),
        (
            json.dumps({"kind": "VirtualMachine", "spec": {}}).encode(),
            f"f is a VirtualMachine without spec.template; pass {GET}",
        ),
        (
            json.dumps({"kind": "VirtualMachine", "spec": {"template": 5}}).encode(),
            "VMI field spec.template is a number, expected an object",
        ),
        (
            json.dumps({"kind": "VirtualMachine", "spec": {"template": {"metadata": []}}}).encode(),
            "VMI field spec.template.metadata is a list, expected an object",
        ),
        (
            json.dumps({"kind": "VirtualMachine", "spec": {"template": {"spec": "x"}}}).encode(),
            "VMI field spec.template.spec is a string, expected an object",
        ),
        (b'{"a": 1}', f"f has no kind, metadata or spec, so it is no VMI; pass {GET}"),
        (b'{"kind": 5}', "VMI field kind is a number, expected a string"),
        (b'{"kind": "List"}', f"f is a List; pass one VMI ({GET})"),
        (
            json.dumps({"kind": "K" * 70 + "List"}).encode(),
            f"f is a {'K' * 64}; pass one VMI ({GET})",
        ),
        (
            json.dumps({"kind": "K" * 70}).encode(),
            f"f is a {'K' * 64}, not a VirtualMachineInstance or VirtualMachine; pass {GET}",
        ),
        (
            b"apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\n",
            f"VMI f is not JSON (YAML is not read); pass {GET}",
        ),
        (b"---\napiVersion: v1\n", f"VMI f is not JSON (YAML is not read); pass {GET}"),
        (b'{"a": ]', "VMI f is not valid JSON: Expecting value: line 1 column 7 (char 6)"),
        (b"x" * (MAX_VMI_BYTES + 1), "VMI JSON is over 2097152 bytes"),
    ],
)
def test_a_file_that_holds_no_vmi_is_an_error_naming_what_it_holds(
    raw: bytes, message: str
) -> None:
    with pytest.raises(InvalidInput) as info:
        vmis.read_vmi_file(raw, "f")
    assert str(info.value).startswith(message)


def test_depth_at_the_bound_is_accepted() -> None:
    # The top-level object is one level; the list inside it adds the rest.
    assert vmis.parse_vmi(json.dumps({"x": nested(boundedjson.MAX_DEPTH - 1)}))


def test_depth_one_past_the_bound_is_refused() -> None:
    with pytest.raises(InvalidInput, match="nests deeper than 64"):
        vmis.parse_vmi(json.dumps({"x": nested(boundedjson.MAX_DEPTH)}))


def test_number_at_the_bound_is_accepted() -> None:
    digits = "9" * boundedjson.MAX_NUMBER_CHARS
    assert vmis.parse_vmi('{"n": ' + digits + "}")["n"] == int(digits)
    assert vmis.parse_vmi('{"n": 0.' + "5" * (boundedjson.MAX_NUMBER_CHARS - 2) + "}")["n"] < 1


@pytest.mark.parametrize("number", ["9" * 41, "0." + "5" * 39, "-" + "9" * 40])
def test_number_one_past_the_bound_is_refused(number: str) -> None:
    with pytest.raises(InvalidInput, match="VMI field n is a number of 41 characters"):
        vmis.parse_vmi('{"n": ' + number + "}")


@pytest.mark.parametrize(
    "value",
    ["1" * 5000, "1" * 19, "\u0661", "1.5", "-1", "1e3", "", " ", "2k", True, -1, 1.5, None, [1]],
)
def test_quantities_are_ascii_whole_numbers(value: Any) -> None:
    vmi = make_vmi(limits={"qat.intel.com/generic": value})
    with pytest.raises(InvalidInput) as info:
        request(vmi)
    assert f"VMI field {LIMIT_FIELD} has quantity" in str(info.value)
    assert len(str(info.value)) < 300


@pytest.mark.parametrize(
    ("value", "count"), [("1", 1), (" 2 ", 2), (3, 3), ("1" * 18, 10**18 // 9)]
)
def test_good_quantities(value: Any, count: int) -> None:
    assert request(make_vmi(limits={"qat.intel.com/generic": value})).expected == count


def test_limits_win_over_requests() -> None:
    vmi = make_vmi({"qat.intel.com/generic": "1"}, limits={"qat.intel.com/generic": "2"})
    assert request(vmi).expected == 2


@pytest.mark.parametrize(
    ("vmi", "field"),
    [
        ({"metadata": []}, "VMI field metadata is a list, expected an object"),
        ({"spec": "x"}, "VMI field spec is a string, expected an object"),
        ({"metadata": {"annotations": 5}}, "metadata.annotations is a number"),
        (
            {"metadata": {"annotations": {vmis.ENABLED_ANNOTATION: True}}},
            'metadata.annotations["qat.vm.kubevirt.io/enabled"] is a boolean, expected a string',
        ),
        ({"spec": {"domain": []}}, "spec.domain is a list"),
        ({"spec": {"domain": {"resources": 1}}}, "spec.domain.resources is a number"),
        ({"spec": {"domain": {"resources": {"limits": []}}}}, "spec.domain.resources.limits is"),
    ],
)
def test_malformed_fields_are_named(vmi: Any, field: str) -> None:
    with pytest.raises(InvalidInput, match=field.replace("[", r"\[").replace("]", r"\]")):
        request(vmi)


@pytest.mark.parametrize(
    ("claims", "field"),
    [
        ({"name": "x"}, "spec.resourceClaims is an object, expected a list"),
        (["x"], "spec.resourceClaims[0] is a string, expected an object"),
        ([{"name": 5, "resourceClaimTemplateName": "t"}], "spec.resourceClaims[0].name is a"),
    ],
)
def test_malformed_claims_are_named(claims: Any, field: str) -> None:
    vmi = make_vmi(resourceClaims=claims)
    with pytest.raises(InvalidInput, match=field.replace("[", r"\[").replace("]", r"\]")):
        vmis.claim_directories(vmi)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"evictionStrategy": {"a": 1}}, "spec.evictionStrategy is an object, expected a string"),
        ({"domain": {"devices": {"interfaces": [[]]}}}, "spec.domain.devices.interfaces[0] is"),
        ({"domain": {"devices": {"gpus": {}}}}, "spec.domain.devices.gpus is an object"),
        ({"domain": {"memory": {"reservedOverhead": 1}}}, "reservedOverhead is a number"),
    ],
)
def test_malformed_preflight_fields_are_named(change: dict[str, Any], field: str) -> None:
    vmi = make_vmi({"qat.intel.com/generic": "1"})
    vmi["spec"].update(change)
    with pytest.raises(InvalidInput, match=field.replace("[", r"\[").replace("]", r"\]")):
        vmis.preflight_warnings(vmi)


def test_display_name_never_fails() -> None:
    assert vmis.display_name({"metadata": []}) == "-/-"
    assert vmis.display_name({"metadata": {"name": 5, "namespace": "ns"}}) == "ns/-"


def test_through_the_hook_seam_it_is_invalid_input() -> None:
    """What the server maps to INVALID_ARGUMENT: the hook raises InvalidInput, nothing else."""
    config = HookSettings(
        DiscoveryConfig(verify_sysfs="off"), TransformOptions(), guest_addresses={}
    )
    for raw in (
        b"[" * 100_000,
        b'{"spec": {"domain": {"resources": {"limits": {"qat.intel.com/x": "'
        + b"1" * 5000
        + b'"}}}}}',
    ):
        with pytest.raises(InvalidInput):
            hook.on_define_domain(b"<domain/>", raw, {}, config)


def test_a_huge_key_is_cut_in_the_message() -> None:
    resource = "qat.intel.com/" + "x" * 1_000_000
    with pytest.raises(InvalidInput) as info:
        request(make_vmi(limits={resource: "1.5"}))
    message = str(info.value)
    assert len(message) < 400
    assert 'limits["qat.intel.com/xxx' in message and '..."] has quantity' in message


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=30,
)
FIELDS = ("metadata", "annotations", "spec", "domain", "resources", "limits", "requests")


@st.composite
def vmi_shapes(draw: st.DrawFn) -> bytes:
    """VMI-like documents whose known fields hold any JSON value, at any of the known paths."""
    vmi = make_vmi({"qat.intel.com/generic": "1"}, evictionStrategy="LiveMigrate")
    node: Any = vmi
    for key in draw(st.lists(st.sampled_from(FIELDS), max_size=4)):
        if not isinstance(node, dict):
            break
        node = node.setdefault(key, {})
    if isinstance(node, dict):
        node[draw(st.sampled_from((*FIELDS, "qat.intel.com/generic", vmis.ENABLED_ANNOTATION)))] = (
            draw(json_values)
        )
    return json.dumps(vmi, allow_nan=True).encode()


@settings(max_examples=200, deadline=None)
@given(vmi_shapes())
def test_any_shape_is_a_decision_or_invalid_input(raw: bytes) -> None:
    """Whatever the shape, reading a VMI decides or raises InvalidInput, nothing else."""
    try:
        vmi = vmis.parse_vmi(raw)
        request(vmi)
        vmis.preflight_warnings(vmi)
        vmis.claim_directories(vmi)
        vmis.display_name(vmi)
    except InvalidInput:
        pass


# --- exact outcomes (each of these fails on a mutant that a substring check let through) -----


@pytest.mark.parametrize("raw", [b"", b"  \n", "", None])
def test_an_empty_payload_is_an_empty_vmi(raw: Any) -> None:
    assert vmis.parse_vmi(raw) == {}


@pytest.mark.parametrize(
    ("raw", "kind"),
    [(b"[1]", "a list"), (b"1", "a number"), (b"1.5", "a number"), (b"null", "null")],
)
def test_a_vmi_that_is_not_an_object_is_refused_in_full(raw: bytes, kind: str) -> None:
    with pytest.raises(InvalidInput) as info:
        vmis.parse_vmi(raw)
    assert str(info.value) == (
        f"VMI JSON is {kind}, expected an object "
        "(the VirtualMachineInstance as virt-launcher sends it)"
    )


@pytest.mark.parametrize(
    ("vmi", "expected"),
    [
        ({"metadata": {"name": "vm", "namespace": "ns"}}, ("vm", "ns")),
        ({"metadata": {"name": "vm"}}, ("vm", "")),
        ({"metadata": {"namespace": "ns", "name": None}}, ("", "ns")),
        ({}, ("", "")),
    ],
)
def test_name_and_namespace(vmi: Any, expected: tuple[str, str]) -> None:
    assert vmis.name_and_namespace(vmi) == expected


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({"name": 5}, "VMI field metadata.name is a number, expected a string"),
        (
            {"name": "vm", "namespace": []},
            "VMI field metadata.namespace is a list, expected a string",
        ),
        ([], "VMI field metadata is a list, expected an object"),
    ],
)
def test_name_and_namespace_of_a_broken_vmi(metadata: Any, message: str) -> None:
    with pytest.raises(InvalidInput) as info:
        vmis.name_and_namespace({"metadata": metadata})
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("metadata", "shown"),
    [
        ({"name": "vm", "namespace": ""}, "-/vm"),
        ({"name": "", "namespace": 7}, "-/-"),
        ({"name": "vm", "namespace": "ns"}, "ns/vm"),
    ],
)
def test_display_name_dashes_what_is_empty_or_unusable(metadata: Any, shown: str) -> None:
    assert vmis.display_name({"metadata": metadata}) == shown


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("1.5", "'1.5'"),
        ("\t1", "'\\t1'"),  # only spaces are trimmed
        ("X1", "'X1'"),
        (10**18, "1000000000000000000"),  # one past int64's 18 digits we accept
        ("x" * 38, "'" + "x" * 38 + "'"),  # a repr of 40 characters is shown whole
        ("x" * 39, "'" + "x" * 39 + "..."),  # 41 are cut to 40
    ],
)
def test_bad_quantity_message_in_full(value: Any, shown: str) -> None:
    with pytest.raises(InvalidInput) as info:
        request(make_vmi(limits={"qat.intel.com/generic": value}))
    assert str(info.value) == (
        f"VMI field {LIMIT_FIELD} has quantity {shown}; "
        "device resources take a whole number such as 1"
    )


@pytest.mark.parametrize("zero", [0, "0", " 0 "])
def test_zero_is_a_quantity_that_asks_for_nothing(zero: Any) -> None:
    assert request(make_vmi(limits={"qat.intel.com/generic": zero})) == vmis.Request(
        False, None, "resource qat.intel.com/generic: 0 asks for no device"
    )


def test_the_largest_whole_number_is_accepted() -> None:
    assert request(make_vmi(limits={"qat.intel.com/generic": 10**18 - 1})).expected == 10**18 - 1


def test_reasons_in_full() -> None:
    devices = make_vmi(annotations={vmis.DEVICES_ANNOTATION: "3d:02.2"})
    assert request(devices) == vmis.Request(True, None, "annotation qat.vm.kubevirt.io/devices")
    assert request(make_vmi()) == vmis.Request(
        False, None, "the VMI requests no QAT resource and has no QAT annotation"
    )


@pytest.mark.parametrize(
    ("claims", "expected"),
    [
        ([{"name": "pod-claim", "resourceClaimName": "object"}], ({"object"}, set())),
        ([{"name": "pod-claim", "resourceClaimTemplateName": "t"}], (set(), {"pod-claim"})),
        ([{"name": "pod-claim"}], (set(), set())),  # neither kind
        ([{"resourceClaimTemplateName": "t"}], (set(), set())),  # no pod claim name to look under
        ([], None),
    ],
)
def test_claim_directories(claims: Any, expected: tuple[set[str], set[str]] | None) -> None:
    found = vmis.claim_directories(make_vmi(resourceClaims=claims))
    assert (None if found is None else (set(found[0]), set(found[1]))) == expected


@pytest.mark.parametrize(
    ("claim", "message"),
    [
        (
            {"resourceClaimName": 1},
            "VMI field spec.resourceClaims[0].resourceClaimName is a number, expected a string",
        ),
        (
            {"name": "c", "resourceClaimTemplateName": {}},
            "VMI field spec.resourceClaims[0].resourceClaimTemplateName is an object, "
            "expected a string",
        ),
        ({"name": True}, "VMI field spec.resourceClaims[0].name is a boolean, expected a string"),
    ],
)
def test_broken_claim_fields_in_full(claim: Any, message: str) -> None:
    with pytest.raises(InvalidInput) as info:
        vmis.claim_directories(make_vmi(resourceClaims=[claim]))
    assert str(info.value) == message


MEMLOCK = (
    "VMI ns1/vm1 has no device KubeVirt knows as VFIO and does not set "
    "spec.domain.memory.reservedOverhead.memLock: Required, so qemu's locked-memory "
    "limit stays low and the guest fails DMA mapping at boot; add "
    "spec.domain.memory.reservedOverhead.memLock: Required "
    "(feature gate ReservedOverheadMemlock)"
)
EVICTION = (
    "VMI ns1/vm1 has evictionStrategy {}, but a VM with a host PCI device cannot "
    "live-migrate, so node drains will block on it; set spec.evictionStrategy: None or External"
)


def preflight(domain: dict[str, Any], **spec: Any) -> list[str]:
    vmi = {"metadata": {"name": "vm1", "namespace": "ns1"}, "spec": {"domain": domain, **spec}}
    return vmis.preflight_warnings(vmi)


@pytest.mark.parametrize(
    ("domain", "spec", "warnings"),
    [
        ({}, {}, [MEMLOCK]),
        ({"memory": {"reservedOverhead": {"memLock": "Required"}}}, {}, []),
        ({"memory": {"reservedOverhead": {"memLock": "NotRequired"}}}, {}, [MEMLOCK]),
        ({"devices": {"hostDevices": [{"name": "h"}]}}, {}, []),
        ({"devices": {"gpus": [{"name": "g"}]}}, {}, []),
        ({"devices": {"hostDevices": [], "gpus": []}}, {}, [MEMLOCK]),
        ({"devices": {"interfaces": [{"name": "n", "sriov": {}}]}}, {}, []),
        ({"devices": {"interfaces": [{"name": "a", "bridge": {}}]}}, {}, [MEMLOCK]),
        (
            {"devices": {"interfaces": [{"name": "a", "bridge": {}}, {"name": "b", "sriov": {}}]}},
            {},
            [],
        ),
        ({}, {"evictionStrategy": "LiveMigrate"}, [MEMLOCK, EVICTION.format("LiveMigrate")]),
        (
            {"memory": {"reservedOverhead": {"memLock": "Required"}}},
            {"evictionStrategy": "LiveMigrateIfPossible"},
            [EVICTION.format("LiveMigrateIfPossible")],
        ),
        ({}, {"evictionStrategy": "None"}, [MEMLOCK]),
        ({}, {"evictionStrategy": "External"}, [MEMLOCK]),
    ],
)
def test_preflight_warnings_in_full(
    domain: dict[str, Any], spec: dict[str, Any], warnings: list[str]
) -> None:
    assert preflight(domain, **spec) == warnings


@pytest.mark.parametrize(
    ("domain", "spec", "message"),
    [
        ([], {}, "VMI field spec.domain is a list, expected an object"),
        ({"devices": 1}, {}, "VMI field spec.domain.devices is a number, expected an object"),
        ({"memory": "x"}, {}, "VMI field spec.domain.memory is a string, expected an object"),
        (
            {"memory": {"reservedOverhead": []}},
            {},
            "VMI field spec.domain.memory.reservedOverhead is a list, expected an object",
        ),
        (
            {"devices": {"hostDevices": {}}},
            {},
            "VMI field spec.domain.devices.hostDevices is an object, expected a list",
        ),
        (
            {"devices": {"gpus": "g"}},
            {},
            "VMI field spec.domain.devices.gpus is a string, expected a list",
        ),
        (
            {"devices": {"interfaces": {}}},
            {},
            "VMI field spec.domain.devices.interfaces is an object, expected a list",
        ),
        (
            {"devices": {"interfaces": [{}, "x"]}},
            {},
            "VMI field spec.domain.devices.interfaces[1] is a string, expected an object",
        ),
        (
            {"memory": {"reservedOverhead": {"memLock": "Required"}}},
            {"evictionStrategy": 1},
            "VMI field spec.evictionStrategy is a number, expected a string",
        ),
    ],
)
def test_broken_preflight_fields_in_full(domain: Any, spec: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidInput) as info:
        preflight(domain, **spec)
    assert str(info.value) == message
