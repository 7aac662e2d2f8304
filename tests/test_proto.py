"""The committed generated modules match proto/ and the wire contract."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from hook_sidecar._generated import (
    info_pb2,
    plugins_v1alpha1_pb2,
    podresources_v1_pb2,
    v1alpha1_pb2,
    v1alpha2_pb2,
    v1alpha3_pb2,
)

ROOT = Path(__file__).resolve().parent.parent
GENERATED = ROOT / "hook_sidecar" / "_generated"


def test_generated_modules_are_fresh(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_proto.py"), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    fresh = tmp_path / "hook_sidecar" / "_generated"
    names = sorted(p.name for p in fresh.iterdir())
    assert names == sorted(p.name for p in GENERATED.iterdir() if p.name != "__pycache__")
    stale = [n for n in names if (fresh / n).read_bytes() != (GENERATED / n).read_bytes()]
    assert not stale, f"run `make proto` and commit: {stale} differ from proto/"


def _fields(message: type) -> dict[str, int]:
    return {f.name: f.number for f in message.DESCRIPTOR.fields}  # type: ignore[attr-defined]


def test_wire_names_and_field_numbers() -> None:
    assert info_pb2.DESCRIPTOR.package == "kubevirt.hooks.info"
    assert _fields(info_pb2.InfoResult) == {"name": 1, "hookPoints": 3, "versions": 4}
    assert _fields(info_pb2.HookPoint) == {"name": 1, "priority": 2}
    for module, package in (
        (v1alpha1_pb2, "kubevirt.hooks.v1alpha1"),
        (v1alpha2_pb2, "kubevirt.hooks.v1alpha2"),
        (v1alpha3_pb2, "kubevirt.hooks.v1alpha3"),
    ):
        assert module.DESCRIPTOR.package == package
        assert _fields(module.OnDefineDomainParams) == {"domainXML": 1, "vmi": 2}
        assert _fields(module.OnDefineDomainResult) == {"domainXML": 1}
    for module in (v1alpha2_pb2, v1alpha3_pb2):
        assert _fields(module.PreCloudInitIsoParams) == {
            "cloudInitNoCloudSource": 1,
            "vmi": 2,
            "cloudInitData": 3,
        }
        assert _fields(module.PreCloudInitIsoResult) == {
            "cloudInitNoCloudSource": 1,
            "cloudInitData": 3,
        }
    services = {
        s.name: [m.name for m in s.methods]
        for s in v1alpha3_pb2.DESCRIPTOR.services_by_name.values()
    }
    assert services == {"Callbacks": ["OnDefineDomain", "PreCloudInitIso", "Shutdown"]}
    assert plugins_v1alpha1_pb2.DESCRIPTOR.package == "kubevirt.hooks.plugins.v1alpha1"
    assert _fields(plugins_v1alpha1_pb2.MutateDomainRequest) == {
        "domain_type": 1,
        "domain": 2,
        "vmi": 3,
        "sidecar_context": 4,
    }
    assert _fields(plugins_v1alpha1_pb2.SidecarContext) == {"invocation_context": 1}
    assert _fields(plugins_v1alpha1_pb2.MutateDomainResponse) == {"domain": 1}
    assert podresources_v1_pb2.DESCRIPTOR.package == "v1"
    assert _fields(podresources_v1_pb2.ContainerDevices) == {
        "resource_name": 1,
        "device_ids": 2,
        "topology": 3,
    }
    assert _fields(podresources_v1_pb2.GetPodResourcesRequest) == {
        "pod_name": 1,
        "pod_namespace": 2,
    }
    assert _fields(podresources_v1_pb2.NUMANode) == {"ID": 1}
