"""Every example loads, and the pieces that must agree do agree."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from hook_sidecar import config
from hook_sidecar import vmi as vmis
from hook_sidecar.cli import build_parser
from hook_sidecar.pci import PciAddress
from tests.conftest import EXAMPLES, ROOT

SIDECAR_KEYS = {"image", "imagePullPolicy", "command", "args", "configMap", "pvc"}
YAML_FILES = sorted(EXAMPLES.rglob("*.yaml"))


def makefile_image() -> str:
    makefile = (ROOT / "Makefile").read_text()
    image = re.search(r"^IMAGE \?= (\S+)$", makefile, re.M)
    assert image is not None
    version = re.search(r'__version__ = "(.+)"', (ROOT / "hook_sidecar/__init__.py").read_text())
    assert version is not None
    return f"{image.group(1)}:{version.group(1)}"


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def vmi_like(doc: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(metadata, spec) of a VMI, or of a VM's template."""
    if doc.get("kind") == "VirtualMachineInstance":
        return doc["metadata"], doc["spec"]
    if doc.get("kind") == "VirtualMachine":
        template = doc["spec"]["template"]
        return template["metadata"], template["spec"]
    return None


def test_there_are_examples() -> None:
    assert len(YAML_FILES) >= 6


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(EXAMPLES)))
def test_example_loads(path: Path) -> None:
    docs = documents(path)
    assert docs, f"{path} is empty"
    for doc in docs:
        if "kind" in doc:
            assert doc.get("apiVersion"), f"{path}: {doc['kind']} without apiVersion"


def hook_vms() -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    found = []
    for path in YAML_FILES:
        for doc in documents(path):
            pair = vmi_like(doc)
            if pair and "hooks.kubevirt.io/hookSidecars" in pair[0].get("annotations", {}):
                found.append((str(path.relative_to(EXAMPLES)), *pair))
    return found


@pytest.mark.parametrize(
    ("name", "metadata", "spec"), hook_vms(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_hook_annotation(name: str, metadata: dict[str, Any], spec: dict[str, Any]) -> None:
    sidecars = json.loads(metadata["annotations"]["hooks.kubevirt.io/hookSidecars"])
    assert isinstance(sidecars, list) and len(sidecars) == 1
    sidecar = sidecars[0]
    assert set(sidecar) <= SIDECAR_KEYS
    assert sidecar["image"] == makefile_image()
    # The image's entrypoint is `qat-hook serve`; the annotation's args append to it.
    build_parser({}).parse_args(["serve", *sidecar.get("args", [])])
    # The VMI asks for QAT in a way the hook recognises, and reserves locked memory.
    request = vmis.read_request(
        {"metadata": metadata, "spec": spec}, config.DEFAULT_RESOURCE_PATTERNS, False
    )
    assert request.wanted, name
    assert spec["domain"]["memory"]["reservedOverhead"]["memLock"] == "Required"
    assert spec["evictionStrategy"] == "None"


def test_resource_names_match_the_default_patterns() -> None:
    for name, _, spec in hook_vms():
        for section in ("requests", "limits"):
            for resource in spec["domain"]["resources"].get(section, {}):
                if "qat" in resource:
                    assert vmis.resource_matches(resource, config.DEFAULT_RESOURCE_PATTERNS), name


def test_examples_hold_no_install_objects() -> None:
    """Plugins and admission policies live in deploy/ only: no second copy to drift."""
    for path in YAML_FILES:
        for doc in documents(path):
            assert doc.get("kind") not in (
                "Plugin",
                "MutatingAdmissionPolicy",
                "MutatingAdmissionPolicyBinding",
            ), path


def test_no_two_examples_share_a_kind_and_name() -> None:
    seen: dict[tuple[str, str], Path] = {}
    for path in YAML_FILES:
        for doc in documents(path):
            if "kind" not in doc:
                continue
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in seen, f"{path} and {seen[key]} both define {key}"
            seen[key] = path


def test_dra_examples_use_the_claim_the_install_shares() -> None:
    template = documents(EXAMPLES / "dra" / "resourceclaimtemplate.yaml")[0]
    for path in (EXAMPLES / "dra" / "vmi-qat-dra.yaml", EXAMPLES / "plugin/dra/vmi-qat-dra.yaml"):
        vmi = documents(path)[0]
        # deploy/components/dra shares the pod claim named "qat".
        assert vmi["spec"]["resourceClaims"] == [
            {"name": "qat", "resourceClaimTemplateName": template["metadata"]["name"]}
        ]
        assert vmi["metadata"]["annotations"]["qat.vm.kubevirt.io/enabled"] == "true"


def test_example_comments_point_at_what_exists() -> None:
    for path in [*YAML_FILES, EXAMPLES / "README.md"]:
        text = path.read_text()
        for overlay in re.findall(r"deploy/overlays/([\w.-]+)", text):
            assert (ROOT / "deploy" / "overlays" / overlay / "kustomization.yaml").is_file(), path
        for target in re.findall(r"(deploy/gates/[\w.-]+)", text):
            assert (ROOT / target).is_file(), path
        for link in re.findall(r"\]\(([^)#:]+)\)", text):
            assert (path.parent / link).exists(), f"{path}: {link}"


def test_static_pinning_pins_node_and_device() -> None:
    vmi = documents(EXAMPLES / "static-pinning.yaml")[0]
    assert vmi["spec"]["nodeSelector"]
    args = json.loads(vmi["metadata"]["annotations"]["hooks.kubevirt.io/hookSidecars"])[0]["args"]
    parsed = build_parser({}).parse_args(["serve", *args])
    devices = [d if isinstance(d, PciAddress) else PciAddress.parse(d) for d in parsed.device]
    assert devices == [PciAddress.parse("0000:3d:02.2")]


def qat_resources(spec: dict[str, Any]) -> set[str]:
    resources = spec["domain"].get("resources", {})
    return {
        r for section in ("requests", "limits") for r in resources.get(section, {}) if "qat" in r
    }


def test_one_resource_name_across_examples() -> None:
    names: set[str] = set()
    for path in YAML_FILES:
        for doc in documents(path):
            pair = vmi_like(doc)
            if pair:
                names |= qat_resources(pair[1])
    assert names == {"qat.intel.com/generic"}


def test_plugin_route_has_a_virtual_machine_you_can_log_in_to() -> None:
    """The recommended route's VM: no annotation, asks for a VF, cloud-init login for lspci."""
    (vm,) = documents(EXAMPLES / "plugin" / "vm-qat.yaml")
    assert vm["kind"] == "VirtualMachine"
    metadata, spec = vmi_like(vm) or ({}, {})
    assert "hooks.kubevirt.io/hookSidecars" not in metadata.get("annotations", {})
    request = vmis.read_request(
        {"metadata": metadata, "spec": spec}, config.DEFAULT_RESOURCE_PATTERNS, False
    )
    assert request.wanted and request.expected == 1
    assert spec["domain"]["memory"]["reservedOverhead"]["memLock"] == "Required"
    assert spec["evictionStrategy"] == "None"
    volumes = {v["name"]: v for v in spec["volumes"]}
    cloud_config = yaml.safe_load(volumes["cloudinitdisk"]["cloudInitNoCloud"]["userData"])
    (user,) = cloud_config["users"]
    assert user["ssh_authorized_keys"] == ["ssh-ed25519 REPLACE-WITH-YOUR-PUBLIC-KEY"]
    assert "pciutils" in cloud_config["packages"]
    disks = {d["name"] for d in spec["domain"]["devices"]["disks"]}
    assert disks == set(volumes)
    text = (EXAMPLES / "plugin" / "vm-qat.yaml").read_text()
    assert f"virtctl ssh {user['name']}@vm/{vm['metadata']['name']}" in text
    assert "REPLACE-WITH-YOUR-PUBLIC-KEY|$(cat ~/.ssh/" in text  # how to set the key
