"""Discovery: every source, the order, gating, counts, sysfs, preflight, table-driven."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from hook_sidecar import discovery as d
from hook_sidecar import report, sources, sysfs
from hook_sidecar import vmi as vmis
from hook_sidecar.config import DEFAULT_RESOURCE_PATTERNS, DiscoveryConfig, env_snapshot
from hook_sidecar.errors import InvalidInput, PreconditionFailed
from hook_sidecar.pci import PciAddress

A = "0000:3d:02.2"
B = "0000:3d:02.3"
C = "0000:af:01.0"


def make_vmi(
    resources: dict[str, Any] | None = None,
    annotations: dict[str, str] | None = None,
    limits: dict[str, Any] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    domain: dict[str, Any] = {
        "resources": {"requests": resources or {}, **({"limits": limits} if limits else {})},
        "memory": {"reservedOverhead": {"memLock": "Required"}},
    }
    return {
        "metadata": {"name": "vm1", "namespace": "ns1", "annotations": annotations or {}},
        "spec": {"domain": domain, **spec},
    }


ASKS_ONE = make_vmi({"qat.intel.com/generic": "1"})


def config(tmp_path: Path, **overrides: Any) -> DiscoveryConfig:
    values: dict[str, Any] = {
        "dra_root": tmp_path / "dra",
        "sysfs_root": tmp_path / "sys",
        "verify_sysfs": "off",
    }
    values.update(overrides)
    return DiscoveryConfig(**values)


def addresses(found: d.Discovery) -> list[str]:
    return [str(a) for a in found.devices]


# --- gating -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("vmi", "wanted", "expected", "reason"),
    [
        (make_vmi(), False, None, "requests no QAT resource"),
        (make_vmi({"memory": "1Gi"}), False, None, "requests no QAT resource"),
        (make_vmi({"qat.intel.com/generic": "1"}), True, 1, "qat.intel.com/generic: 1"),
        (make_vmi({"qat.intel.com/generic": 2}), True, 2, "qat.intel.com/generic: 2"),
        (make_vmi(limits={"qat.intel.com/cy": "1"}), True, 1, "qat.intel.com/cy: 1"),
        (
            make_vmi({"qat.intel.com/cy": "1", "qat.intel.com/dc": "1"}),
            True,
            2,
            "qat.intel.com/cy: 1, qat.intel.com/dc: 1",
        ),
        (make_vmi({"qat.intel.com/generic": "0"}), False, None, "asks for no device"),
        (make_vmi(annotations={"qat.vm.kubevirt.io/enabled": "true"}), True, None, "enabled"),
        (
            make_vmi({"qat.intel.com/generic": "1"}, {"qat.vm.kubevirt.io/enabled": "false"}),
            False,
            None,
            "opts out",
        ),
        (make_vmi(annotations={"qat.vm.kubevirt.io/devices": A}), False, None, "requests no"),
        ({}, False, None, "requests no QAT resource"),
    ],
)
def test_request_gating(
    vmi: dict[str, Any], wanted: bool, expected: int | None, reason: str
) -> None:
    request = vmis.read_request(vmi, DEFAULT_RESOURCE_PATTERNS, allow_vmi_devices=False)
    assert (request.wanted, request.expected) == (wanted, expected)
    assert reason in request.reason


def test_devices_annotation_counts_as_request_only_when_allowed() -> None:
    vmi = make_vmi(annotations={"qat.vm.kubevirt.io/devices": A})
    assert vmis.read_request(vmi, DEFAULT_RESOURCE_PATTERNS, True).wanted


def test_bad_quantity() -> None:
    with pytest.raises(InvalidInput, match=r"quantity '1\.5'"):
        vmis.read_request(make_vmi({"qat.intel.com/generic": "1.5"}), ("qat.intel.com/*",), False)


@pytest.mark.parametrize(
    ("raw", "message"),
    [(b"{", "VMI is not valid JSON"), (b"[1]", "is a list, expected an object")],
)
def test_parse_vmi_errors(raw: bytes, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        vmis.parse_vmi(raw)


def test_not_wanted_looks_at_nothing(tmp_path: Path) -> None:
    found = d.discover(make_vmi(), {"QAT0": "garbage"}, config(tmp_path))
    assert not found.wanted
    assert found.devices == ()


# --- sources ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "devices", "detail"),
    [
        ({"QAT0": A}, [A], "QAT0"),
        ({"QAT10": C, "QAT2": B, "QAT0": A}, [A, B, C], "QAT0, QAT2, QAT10"),
        ({"QAT1": " 3d:02.3 "}, [B], "QAT1"),
        (
            {"PCI_RESOURCE_QAT_INTEL_COM_GENERIC": f"{A},{B},"},
            [A, B],
            "PCI_RESOURCE_QAT_INTEL_COM_GENERIC",
        ),
        ({"PCIDEVICE_QAT_INTEL_COM_CY": A}, [A], "PCIDEVICE_QAT_INTEL_COM_CY"),
        (
            {"QAT0": A, "PCI_RESOURCE_QAT_INTEL_COM_GENERIC": A},
            [A],
            "QAT0, PCI_RESOURCE_QAT_INTEL_COM_GENERIC",
        ),
    ],
)
def test_environment_source(
    tmp_path: Path, env: dict[str, str], devices: list[str], detail: str
) -> None:
    vmi = make_vmi({"qat.intel.com/generic": str(len(devices))})
    found = d.discover(vmi, env, config(tmp_path))
    assert addresses(found) == devices
    assert (found.source, found.detail) == ("environment", detail)


def test_other_resources_are_not_qat(tmp_path: Path) -> None:
    env = {"PCI_RESOURCE_INTEL_COM_SRIOV_NET": A, "PCIDEVICE_NVIDIA_COM_GPU": B}
    with pytest.raises(PreconditionFailed, match="but none was found in"):
        d.discover(ASKS_ONE, env, config(tmp_path))


def test_resource_patterns_are_configurable(tmp_path: Path) -> None:
    vmi = make_vmi({"intel.com/qat": "1"})
    cfg = config(tmp_path, resource_patterns=("intel.com/qat",))
    found = d.discover(vmi, {"PCI_RESOURCE_INTEL_COM_QAT": A}, cfg)
    assert addresses(found) == [A]
    assert found.detail == "PCI_RESOURCE_INTEL_COM_QAT"


@pytest.mark.parametrize(
    ("resource", "variable"),
    [
        ("qat.intel.com/generic", "QAT_INTEL_COM_GENERIC"),
        ("intel.com/qat", "INTEL_COM_QAT"),
        ("qat.intel.com/*", "QAT_INTEL_COM_*"),
    ],
)
def test_name_mangling(resource: str, variable: str) -> None:
    assert sources.mangle_resource(resource) == variable


def test_override_wins_and_disagreement_is_warned(tmp_path: Path) -> None:
    cfg = config(tmp_path, devices=(PciAddress.parse(B),))
    found = d.discover(ASKS_ONE, {"QAT0": A}, cfg)
    assert addresses(found) == [B]
    assert found.source == "override"
    assert len(found.warnings) == 1
    assert "environment (QAT0) lists 0000:3d:02.2 but override (--device) won" in found.warnings[0]


def test_override_from_variable(tmp_path: Path) -> None:
    found = d.discover(ASKS_ONE, {"QAT_HOOK_DEVICES": f"{A},"}, config(tmp_path))
    assert (addresses(found), found.detail) == ([A], "QAT_HOOK_DEVICES")


def test_agreeing_sources_do_not_warn(tmp_path: Path) -> None:
    cfg = config(tmp_path, devices=(PciAddress.parse(A),))
    assert d.discover(ASKS_ONE, {"QAT0": A}, cfg).warnings == ()


def test_malformed_later_source_is_a_warning_not_a_failure(tmp_path: Path) -> None:
    cfg = config(tmp_path, devices=(PciAddress.parse(A),))
    found = d.discover(ASKS_ONE, {"QAT0": "garbage"}, cfg)
    assert addresses(found) == [A]
    assert "ignored environment source: variable QAT0" in found.warnings[0]


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"QAT0": "garbage"}, "variable QAT0: 'garbage' is not a PCI address"),
        (
            {"PCI_RESOURCE_QAT_INTEL_COM_GENERIC": "3d:02.2,xx"},
            "PCI_RESOURCE_QAT_INTEL_COM_GENERIC",
        ),
        ({"QAT_HOOK_DEVICES": "0000:3d:99.0"}, "QAT_HOOK_DEVICES"),
    ],
)
def test_malformed_winning_value_fails_naming_the_variable(
    tmp_path: Path, env: dict[str, str], needle: str
) -> None:
    with pytest.raises(InvalidInput, match=needle):
        d.discover(ASKS_ONE, env, config(tmp_path))


# --- DRA metadata -----------------------------------------------------------------------


def write_metadata(root: Path, kind: str, claim: str, request: str, *addresses: str) -> Path:
    folder = root / kind / claim / request
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "qat.intel.com-metadata.json"
    path.write_text(
        json.dumps(
            {
                "apiVersion": "metadata.resource.k8s.io/v1alpha1",
                "kind": "DeviceMetadata",
                "requests": [
                    {
                        "name": request,
                        "devices": [
                            {
                                "driver": "qat.intel.com",
                                "pool": "node-1",
                                "name": f"qatvf-{i}",
                                "attributes": {
                                    "resource.kubernetes.io/pciBusID": {"string": address},
                                    "qat.intel.com/services": {"string": "sym;asym"},
                                },
                            }
                            for i, address in enumerate(addresses)
                        ],
                    }
                ],
            }
        )
    )
    return path


def test_dra_all_claims(tmp_path: Path) -> None:
    root = tmp_path / "dra"
    write_metadata(root, "resourceclaims", "qat-claim", "vf", A)
    write_metadata(root, "resourceclaimtemplates", "qat", "vf", B)
    vmi = make_vmi({"qat.intel.com/generic": "2"})
    found = d.discover(vmi, {}, config(tmp_path))
    assert addresses(found) == [A, B]
    assert found.source == "dra"
    assert "resourceclaims/qat-claim/vf/qat.intel.com-metadata.json" in found.detail


def test_dra_only_the_claims_the_vmi_names(tmp_path: Path) -> None:
    root = tmp_path / "dra"
    write_metadata(root, "resourceclaims", "other-claim", "vf", C)
    write_metadata(root, "resourceclaimtemplates", "qat", "vf", A)
    write_metadata(root, "resourceclaimtemplates", "gpu", "dev", B)
    vmi = make_vmi(
        annotations={"qat.vm.kubevirt.io/enabled": "true"},
        resourceClaims=[{"name": "qat", "resourceClaimTemplateName": "qat-vf-template"}],
    )
    assert addresses(d.discover(vmi, {}, config(tmp_path))) == [A]


def test_dra_named_claim_object(tmp_path: Path) -> None:
    write_metadata(tmp_path / "dra", "resourceclaims", "shared-qat", "vf", B)
    vmi = make_vmi(
        {"qat.intel.com/generic": "1"},
        resourceClaims=[{"name": "qat", "resourceClaimName": "shared-qat"}],
    )
    assert addresses(d.discover(vmi, {}, config(tmp_path))) == [B]


def test_dra_devices_without_pci_attribute_are_ignored(tmp_path: Path) -> None:
    path = write_metadata(tmp_path / "dra", "resourceclaims", "c", "r", A)
    document = json.loads(path.read_text())
    del document["requests"][0]["devices"][0]["attributes"]["resource.kubernetes.io/pciBusID"]
    path.write_text(json.dumps(document))
    with pytest.raises(PreconditionFailed) as info:
        d.discover(ASKS_ONE, {}, config(tmp_path))
    assert "all claims: no device with resource.kubernetes.io/pciBusID)" in info.value.details[2]


def test_dra_bad_address_fails_naming_the_file(tmp_path: Path) -> None:
    write_metadata(tmp_path / "dra", "resourceclaims", "c", "r", "nope")
    with pytest.raises(InvalidInput, match=r"qat.intel.com-metadata.json: 'nope' is not a PCI"):
        d.discover(ASKS_ONE, {}, config(tmp_path))


# --- the VMI annotation ---------------------------------------------------------------------


def test_annotation_ignored_unless_allowed(tmp_path: Path) -> None:
    vmi = make_vmi({"qat.intel.com/generic": "1"}, {"qat.vm.kubevirt.io/devices": A})
    with pytest.raises(PreconditionFailed) as info:
        d.discover(vmi, {}, config(tmp_path))
    assert "ignored: start the sidecar with --allow-vmi-devices" in info.value.details[-1]
    found = d.discover(vmi, {}, config(tmp_path, allow_vmi_devices=True))
    assert (addresses(found), found.source) == ([A], "vmi-annotation")


def test_annotation_alone_is_a_request_when_allowed(tmp_path: Path) -> None:
    vmi = make_vmi(annotations={"qat.vm.kubevirt.io/devices": f"{A},{B}"})
    found = d.discover(vmi, {}, config(tmp_path, allow_vmi_devices=True))
    assert addresses(found) == [A, B]
    assert found.expected is None


# --- counts and absence -------------------------------------------------------------------


def test_count_mismatch_names_both_numbers_and_source(tmp_path: Path) -> None:
    with pytest.raises(PreconditionFailed) as info:
        d.discover(ASKS_ONE, {"QAT0": A, "QAT1": B}, config(tmp_path))
    message = str(info.value)
    assert "asks for 1 QAT VF(s)" in message
    assert "but 2 were found in environment (QAT0, QAT1)" in message


def test_nothing_found_lists_every_place_in_the_details(tmp_path: Path) -> None:
    with pytest.raises(PreconditionFailed) as info:
        d.discover(ASKS_ONE, {}, config(tmp_path))
    assert info.value.details == (
        "--device options and QAT_HOOK_DEVICES (not set)",
        "device-plugin variables QAT<N>, PCI_RESOURCE_QAT_INTEL_COM_*, "
        "PCIDEVICE_QAT_INTEL_COM_* (none set in this container)",
        f"DRA metadata under {tmp_path / 'dra'} (no such directory)",
        "VMI annotation qat.vm.kubevirt.io/devices "
        "(ignored: start the sidecar with --allow-vmi-devices to use it)",
    )


def test_on_missing_skip_passes_through_with_warning(tmp_path: Path) -> None:
    found = d.discover(ASKS_ONE, {}, config(tmp_path, on_missing="skip"))
    assert not found.wanted
    assert "Passing the domain through (--on-missing skip)" in found.warnings[-1]


def test_no_vmi_means_inject_what_is_found(tmp_path: Path) -> None:
    found = d.discover({}, {"QAT0": A, "QAT1": B}, config(tmp_path), require_request=False)
    assert addresses(found) == [A, B]
    assert found.expected is None


# --- sysfs ------------------------------------------------------------------------------------


def fake_device(
    sys_root: Path,
    address: str,
    vendor: str = "0x8086",
    device: str = "0x4941",
    driver: str | None = "vfio-pci",
) -> None:
    folder = sys_root / "bus" / "pci" / "devices" / address
    folder.mkdir(parents=True)
    (folder / "vendor").write_text(vendor + "\n")
    (folder / "device").write_text(device + "\n")
    if driver:
        target = sys_root / "bus" / "pci" / "drivers" / driver
        target.mkdir(parents=True, exist_ok=True)
        os.symlink(target, folder / "driver")


@pytest.mark.parametrize(
    ("vendor", "device", "driver", "problems"),
    [
        ("0x8086", "0x4941", "vfio-pci", []),
        ("0x8086", "0x37c9", "vfio-pci", []),
        ("0x8086", "0x4940", "vfio-pci", ["is PCI device 8086:4940, not a known Intel QAT VF"]),
        ("0x15b3", "0x1018", "vfio-pci", ["is PCI device 15b3:1018"]),
        ("0x8086", "0x4941", "4xxxvf", ["bound to 4xxxvf, not vfio-pci"]),
        ("0x8086", "0x4941", None, ["bound to no driver"]),
    ],
)
def test_sysfs_problems(
    tmp_path: Path, vendor: str, device: str, driver: str | None, problems: list[str]
) -> None:
    fake_device(tmp_path, A, vendor, device, driver)
    found = sysfs.problems(PciAddress.parse(A), tmp_path)
    assert len(found) == len(problems)
    for text, needle in zip(found, problems, strict=True):
        assert needle in text


def test_sysfs_missing_device(tmp_path: Path) -> None:
    assert "does not exist" in sysfs.problems(PciAddress.parse(A), tmp_path)[0]


def test_sysfs_warn_and_strict(tmp_path: Path) -> None:
    fake_device(tmp_path / "sys", A, driver="4xxxvf")
    warn = d.discover(ASKS_ONE, {"QAT0": A}, config(tmp_path, verify_sysfs="warn"))
    assert addresses(warn) == [A]
    assert any("sysfs: 0000:3d:02.2 is bound to 4xxxvf" in w for w in warn.warnings)
    with pytest.raises(PreconditionFailed, match="--verify-sysfs strict"):
        d.discover(ASKS_ONE, {"QAT0": A}, config(tmp_path, verify_sysfs="strict"))


# --- preflight ----------------------------------------------------------------------------------


def test_preflight_memlock_and_live_migration(tmp_path: Path) -> None:
    vmi = make_vmi({"qat.intel.com/generic": "1"}, evictionStrategy="LiveMigrate")
    del vmi["spec"]["domain"]["memory"]
    found = d.discover(vmi, {"QAT0": A}, config(tmp_path))
    joined = " | ".join(found.warnings)
    assert "spec.domain.memory.reservedOverhead.memLock: Required" in joined
    assert "evictionStrategy LiveMigrate" in joined


def test_preflight_quiet_when_kubevirt_knows_a_vfio_device(tmp_path: Path) -> None:
    vmi = make_vmi({"qat.intel.com/generic": "1"})
    del vmi["spec"]["domain"]["memory"]
    vmi["spec"]["domain"]["devices"] = {"hostDevices": [{"name": "x", "deviceName": "y"}]}
    assert d.discover(vmi, {"QAT0": A}, config(tmp_path)).warnings == ()


def test_describe_and_json(tmp_path: Path) -> None:
    found = d.discover(ASKS_ONE, {"QAT0": A}, config(tmp_path))
    assert report.describe(found).splitlines()[:2] == [
        "inject 1 device(s): resource qat.intel.com/generic: 1",
        "  source:   environment (QAT0)",
    ]
    assert report.as_json(found)["devices"] == [A]


def test_preflight_quiet_with_an_sriov_interface(tmp_path: Path) -> None:
    vmi = make_vmi({"qat.intel.com/generic": "1"})
    del vmi["spec"]["domain"]["memory"]
    vmi["spec"]["domain"]["devices"] = {
        "interfaces": [{"name": "default", "masquerade": {}}, {"name": "vf", "sriov": {}}]
    }
    assert d.discover(vmi, {"QAT0": A}, config(tmp_path)).warnings == ()
    vmi["spec"]["domain"]["devices"]["interfaces"].pop()
    (warning,) = d.discover(vmi, {"QAT0": A}, config(tmp_path)).warnings
    assert "memLock: Required" in warning


def test_requests_and_limits_differ_limits_count(tmp_path: Path) -> None:
    vmi = make_vmi({"qat.intel.com/generic": "1"}, limits={"qat.intel.com/generic": "2"})
    found = d.discover(vmi, {"QAT0": A, "QAT1": B}, config(tmp_path))
    assert (found.expected, addresses(found)) == (2, [A, B])
    with pytest.raises(PreconditionFailed, match=r"asks for 2 QAT VF\(s\)"):
        d.discover(vmi, {"QAT0": A}, config(tmp_path))


# --- the environment snapshot ----------------------------------------------------------------


def test_env_snapshot_keeps_what_discovery_reads() -> None:
    environ = {
        "QAT0": A,
        "QAT_HOOK_DEVICES": B,
        "PCI_RESOURCE_QAT_INTEL_COM_GENERIC": A,
        "PCIDEVICE_QAT_INTEL_COM_CY": A,
        "POD_NAME": "virt-launcher-x-abcde",
        "POD_NAMESPACE": "ns",
        "HOME": "/root",
        "PATH": "/bin",
    }
    assert env_snapshot(environ) == {k: v for k, v in environ.items() if k not in ("HOME", "PATH")}


# --- host NUMA node ----------------------------------------------------------------------------


def numa_file(sys_root: Path, address: str, content: str) -> None:
    folder = sys_root / "bus" / "pci" / "devices" / address
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "numa_node").write_text(content)


@pytest.mark.parametrize(
    ("content", "node", "origin"),
    [
        ("1\n", 1, "sysfs"),
        ("0\n", 0, "sysfs"),
        ("-1\n", None, "the host reports no NUMA node"),
        ("x\n", None, "holds 'x'"),
        ("\u0661\n", None, "holds"),
        (None, None, "no "),
    ],
)
def test_host_node_from_sysfs(
    tmp_path: Path, content: str | None, node: int | None, origin: str
) -> None:
    if content is not None:
        numa_file(tmp_path / "sys", A, content)
    found = d.discover(ASKS_ONE, {"QAT0": A}, config(tmp_path))
    known = found.host_nodes[PciAddress.parse(A)]
    assert known.node == node
    assert origin in known.origin
    assert found.numa_node(PciAddress.parse(A)) == node


def test_host_node_read_whatever_verify_sysfs_says(tmp_path: Path) -> None:
    numa_file(tmp_path / "sys", A, "1\n")
    for mode in ("off", "warn"):
        found = d.discover(ASKS_ONE, {"QAT0": A}, config(tmp_path, verify_sysfs=mode))
        assert found.numa_node(PciAddress.parse(A)) == 1


def test_host_node_of_each_device(tmp_path: Path) -> None:
    numa_file(tmp_path / "sys", A, "0\n")
    numa_file(tmp_path / "sys", B, "1\n")
    vmi = make_vmi({"qat.intel.com/generic": "2"})
    found = d.discover(vmi, {"QAT0": A, "QAT1": B}, config(tmp_path))
    assert [found.numa_node(a) for a in found.devices] == [0, 1]


def test_describe_shows_host_nodes_and_guest_cells(tmp_path: Path) -> None:
    numa_file(tmp_path / "sys", A, "1\n")
    found = d.discover(ASKS_ONE, {"QAT0": A}, config(tmp_path))
    assert f"  device:   {A}  host NUMA node 1 (sysfs)" in report.describe(found).splitlines()
    cells = {PciAddress.parse(A): 0}
    text = report.describe(found, cells)
    assert f"  device:   {A}  host NUMA node 1 (sysfs), guest NUMA cell 0" in text.splitlines()
    assert report.as_json(found, cells)["numa"] == [
        {"device": A, "host_node": 1, "from": "sysfs", "guest_cell": 0}
    ]
    assert "not placed on a guest NUMA cell" in report.describe(found, {})
    assert "guest_cell" not in report.as_json(found)["numa"][0]


@pytest.mark.parametrize(
    "device_id",
    [
        *("0x0442", "0x0443", "0x37c9", "0x19e3", "0x18a1", "0x6f55"),
        *("0x4941", "0x4943", "0x4945", "0x4947", "0x4949"),
    ],
)
def test_every_qat_vf_id_of_intels_plugin_is_accepted(tmp_path: Path, device_id: str) -> None:
    fake_device(tmp_path, A, device=device_id)
    assert sysfs.problems(PciAddress.parse(A), tmp_path) == []


@pytest.mark.parametrize("device_id", ["0x0440", "0x4940", "0x37c8", "4941", "0x49410", ""])
def test_physical_functions_and_junk_ids_are_not_vfs(tmp_path: Path, device_id: str) -> None:
    fake_device(tmp_path, A, device=device_id)
    (problem,) = sysfs.problems(PciAddress.parse(A), tmp_path)
    assert "not a known Intel QAT VF" in problem


# --- exact outcomes (each of these fails on a mutant that a substring check let through) -----


def test_disagreement_warning_in_full(tmp_path: Path) -> None:
    cfg = config(tmp_path, devices=(PciAddress.parse(B),))
    assert d.discover(ASKS_ONE, {"QAT0": A}, cfg).warnings == (
        "environment (QAT0) lists 0000:3d:02.2 but override (--device) won with 0000:3d:02.3; "
        "if the winner is a static pin it may not match the device plugin's allocation",
    )


def fixed(name: str, *devices: str, remote: bool = False, calls: list[str] | None = None) -> Any:
    """A source that always answers ``devices`` (none: nothing found) and logs each call."""

    def look(call: sources.SourceInput) -> sources.Lookup:
        if calls is not None:
            calls.append(name)
        if devices == ("broken",):
            raise InvalidInput(f"{name} is broken")
        found = tuple(PciAddress.parse(a) for a in devices)
        candidates = sources.Candidates(name, f"{name} detail", found) if found else None
        return sources.Lookup(f"{name} place", candidates)

    return sources.Source(name, look, remote)


CALL = sources.SourceInput({}, {})


def test_a_remote_source_is_asked_while_nothing_is_found() -> None:
    calls: list[str] = []
    chosen = (fixed("empty", calls=calls), fixed("kubelet", A, remote=True, calls=calls))
    warnings: list[str] = []
    winner, looked = d.first_found(chosen, CALL, warnings, [])
    assert winner is not None and (winner.source, addresses_of(winner)) == ("kubelet", [A])
    assert (calls, looked, warnings) == (["empty", "kubelet"], ["empty place", "kubelet place"], [])


def test_after_a_winner_remote_sources_are_skipped_and_local_ones_still_read() -> None:
    calls: list[str] = []
    chosen = (
        fixed("pin", A, calls=calls),
        fixed("kubelet", B, remote=True, calls=calls),
        fixed("bad", "broken", calls=calls),
        fixed("env", B, calls=calls),
    )
    warnings: list[str] = []
    winner, looked = d.first_found(chosen, CALL, warnings, [])
    assert winner is not None and winner.source == "pin"
    assert calls == ["pin", "bad", "env"]
    assert looked == ["pin place", "env place"]
    assert warnings == [
        "ignored bad source: bad is broken",
        "env (env detail) lists 0000:3d:02.3 but pin (pin detail) won with 0000:3d:02.2; "
        "if the winner is a static pin it may not match the device plugin's allocation",
    ]


def addresses_of(candidates: sources.Candidates) -> list[str]:
    return [str(a) for a in candidates.devices]


def test_host_nodes_from_the_source_when_it_names_one_node(tmp_path: Path) -> None:
    a, b, c = (PciAddress.parse(x) for x in (A, B, C))
    folder = tmp_path / "bus" / "pci" / "devices" / B
    folder.mkdir(parents=True)
    (folder / "numa_node").write_text("3\n")
    winner = sources.Candidates("podresources", "pod", (a, b, c), {a: (1,), b: (0, 1), c: ()})
    assert d.host_nodes_of(winner, tmp_path) == {
        a: d.HostNode(1, "podresources"),
        b: d.HostNode(3, "sysfs"),  # two nodes is no answer: sysfs decides
        c: d.HostNode(None, f"no {tmp_path}/bus/pci/devices/{C}/numa_node"),
    }


def test_no_vmi_reason_and_no_preflight(tmp_path: Path) -> None:
    found = d.discover({}, {"QAT0": A}, config(tmp_path), require_request=False)
    assert found.wanted is True
    assert found.reason == "no VMI given: injecting what discovery finds"
    assert found.warnings == ()  # an absent VMI has no memlock setting to warn about


def test_not_wanted_outcome_in_full(tmp_path: Path) -> None:
    found = d.discover(make_vmi(), {"QAT0": A}, config(tmp_path))
    assert found == d.Discovery(
        wanted=False, reason="the VMI requests no QAT resource and has no QAT annotation"
    )
    assert found.wanted is False


def test_nothing_found_message_in_full(tmp_path: Path) -> None:
    cfg = config(tmp_path, allow_vmi_devices=True)
    with pytest.raises(PreconditionFailed) as info:
        d.discover(ASKS_ONE, {}, cfg)
    assert str(info.value) == (
        "VMI ns1/vm1 asks for a QAT VF (resource qat.intel.com/generic: 1) but none was found "
        "in --device/QAT_HOOK_DEVICES, device-plugin variables, DRA metadata, the VMI's devices "
        "annotation; first: give the sidecar a device source (see "
        "docs/how-it-works.md#how-the-vfs-address-reaches-the-sidecar)"
    )
    assert len(str(info.value)) < 300
    without = config(tmp_path)  # the annotation is no place looked at unless allowed
    with pytest.raises(PreconditionFailed, match="DRA metadata; first: give"):
        d.discover(ASKS_ONE, {}, without)


def test_nothing_found_names_the_first_broken_source_and_its_fix(tmp_path: Path) -> None:
    """An empty QAT_HOOK_DEVICES is set but empty, the first thing to fix."""
    with pytest.raises(PreconditionFailed) as info:
        d.discover(ASKS_ONE, {"QAT_HOOK_DEVICES": " "}, config(tmp_path))
    assert str(info.value).endswith(
        "DRA metadata; first: QAT_HOOK_DEVICES is set but empty: set it to the VF's address "
        "(for example 0000:3d:02.2) or remove it"
    )
    assert info.value.details[0] == (
        "--device options and QAT_HOOK_DEVICES (QAT_HOOK_DEVICES set but empty)"
    )


def test_a_broken_source_is_a_warning_when_another_finds_the_device(tmp_path: Path) -> None:
    found = d.discover(ASKS_ONE, {"QAT_HOOK_DEVICES": "", "QAT0": A}, config(tmp_path))
    assert found.source == "environment"
    assert found.warnings == (
        "QAT_HOOK_DEVICES is set but empty: set it to the VF's address "
        "(for example 0000:3d:02.2) or remove it",
    )


def test_devices_name_where_they_were_given(tmp_path: Path) -> None:
    for origin in ("--device", "QAT_HOOK_DEVICES"):
        cfg = config(tmp_path, devices=(PciAddress.parse(A),), devices_from=origin)
        assert d.discover(ASKS_ONE, {}, cfg).detail == origin


def test_on_missing_skip_outcome_in_full(tmp_path: Path) -> None:
    vmi = make_vmi({"qat.intel.com/generic": "2"})
    found = d.discover(vmi, {}, config(tmp_path, on_missing="skip"))
    assert found.wanted is False
    assert (found.reason, found.expected, found.devices) == (
        "resource qat.intel.com/generic: 2",
        2,
        (),
    )
    assert len(found.warnings) == 1
    assert found.warnings[0].startswith("VMI ns1/vm1 asks for a QAT VF")
    assert found.warnings[0].endswith(
        "how-the-vfs-address-reaches-the-sidecar) Passing the domain through (--on-missing skip)."
    )


def test_count_mismatch_message_in_full(tmp_path: Path) -> None:
    with pytest.raises(PreconditionFailed) as info:
        d.discover(ASKS_ONE, {"QAT0": A, "QAT1": B}, config(tmp_path))
    assert str(info.value) == (
        "VMI ns1/vm1 asks for 1 QAT VF(s) (resource qat.intel.com/generic: 1) but 2 were "
        "found in environment (QAT0, QAT1): 0000:3d:02.2, 0000:3d:02.3; make the VMI's "
        "request and the sidecar's device source agree"
    )


def test_strict_sysfs_message_in_full(tmp_path: Path) -> None:
    fake_device(tmp_path / "sys", A, driver="4xxxvf")
    vmi = make_vmi({"qat.intel.com/generic": "2"})
    with pytest.raises(PreconditionFailed) as info:
        d.discover(vmi, {"QAT0": A, "QAT1": B}, config(tmp_path, verify_sysfs="strict"))
    assert str(info.value) == (
        "sysfs check failed (--verify-sysfs strict): 0000:3d:02.2 is bound to 4xxxvf, not "
        "vfio-pci; the device plugin or the node setup must bind it to vfio-pci; "
        f"0000:3d:02.3 does not exist under {tmp_path / 'sys' / 'bus' / 'pci' / 'devices'}"
    )


def test_nothing_found_for_a_vmi_without_a_name_says_the_vmi(tmp_path: Path) -> None:
    vmi = {"spec": {"domain": {"resources": {"limits": {"qat.intel.com/generic": "1"}}}}}
    with pytest.raises(PreconditionFailed) as info:
        d.discover(vmi, {}, config(tmp_path))
    assert str(info.value).startswith(
        "the VMI asks for a QAT VF (resource qat.intel.com/generic: 1) but none was found in "
    )


def test_nothing_found_names_kubelet_when_it_is_a_source(tmp_path: Path) -> None:
    cfg = config(tmp_path, podresources_socket=tmp_path / "pod-resources" / "kubelet.sock")
    with pytest.raises(PreconditionFailed) as info:
        d.discover(ASKS_ONE, {}, cfg)
    assert "none was found in --device/QAT_HOOK_DEVICES, device-plugin variables, kubelet, " in (
        str(info.value)
    )


def test_skip_keeps_every_broken_source_as_a_warning(tmp_path: Path) -> None:
    bad = tmp_path / "dra" / "resourceclaims" / "c" / "r"
    bad.mkdir(parents=True)
    (bad / "x-metadata.json").write_text("[]")
    skipped = f"DRA metadata: skipped {bad / 'x-metadata.json'}: the document is not an object"
    found = d.discover(ASKS_ONE, {"QAT_HOOK_DEVICES": ""}, config(tmp_path, on_missing="skip"))
    assert found.warnings == (
        skipped,
        "VMI ns1/vm1 asks for a QAT VF (resource qat.intel.com/generic: 1) but none was found "
        "in --device/QAT_HOOK_DEVICES, device-plugin variables, DRA metadata; first: "
        "QAT_HOOK_DEVICES is set but empty: set it to the VF's address (for example "
        "0000:3d:02.2) or remove it Passing the domain through (--on-missing skip).",
        f"{skipped} (1 problem(s) in all)",
    )
