"""Render deploy/ and charts/ with the real kubectl (kustomize) and helm.

The binaries are the ones ``scripts/k8s-tools.sh`` installs next to the test virtualenv
(``make test`` runs it); /usr/bin/kubectl or a helm on PATH is never used, so every
machine renders with the same versions. Renders are cached for the session: each
overlay and chart variant is rendered once however many tests read it.
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from tests.ci import skip_or_fail
from tests.conftest import ROOT

DEPLOY = ROOT / "deploy"
OVERLAYS = DEPLOY / "overlays"
CHART = ROOT / "charts" / "kubevirt-qat-hook"
TOOLS = Path(sys.prefix) / "k8s-tools" / "bin"
NAMESPACE = "kubevirt-qat-hook"
DEFAULT_REPOSITORY = "ghcr.io/kubevirt-qat-hook/kubevirt-qat-hook"
MAP_V1 = "admissionregistration.k8s.io/v1/MutatingAdmissionPolicy"

ROUTES = ("plugin", "annotation")
SOURCES = ("podresources", "dra", "static")
APIS = ("v1", "v1beta1")
FLAVORS = ("server", "shim")  # the shim flavor exists for the annotation route only
# The Kubernetes versions each admission API version is validated against.
KUBERNETES = {"v1": ("1.36.0", "1.37.0"), "v1beta1": ("1.34.0", "1.35.0")}

Objects = list[dict[str, Any]]


def overlay_name(route: str, source: str, api: str, flavor: str = "server") -> str:
    shim = "-shim" if flavor == "shim" else ""
    return f"{route}-{source}{shim}" + ("-v1beta1" if api == "v1beta1" else "")


def overlay_choices(name: str) -> tuple[str, str, str, str]:
    """(route, source, api, flavor) of an overlay directory name."""
    parts = name.split("-")
    api = "v1beta1" if parts[-1] == "v1beta1" else "v1"
    return parts[0], parts[1], api, "shim" if "shim" in parts else "server"


def all_choices() -> list[tuple[str, str, str, str]]:
    """Every (route, source, api, flavor) the package installs: one overlay each."""
    return [
        (route, source, api, flavor)
        for route in ROUTES
        for source in SOURCES
        for api in APIS
        for flavor in FLAVORS
        if route == "annotation" or flavor == "server"
    ]


def static_devices_patch(devices: list[str]) -> dict[str, Any]:
    """The patch a user's overlay adds to set the static source's VF addresses."""
    return {
        "target": {"kind": "MutatingAdmissionPolicy", "name": "qat-hook-static"},
        "patch": json.dumps(
            [
                {
                    "op": "replace",
                    "path": "/spec/variables/0/expression",
                    "value": json.dumps(devices, separators=(",", ":")),
                }
            ]
        ),
    }


def tool(name: str) -> Path:
    path = TOOLS / name
    if not path.is_file():
        skip_or_fail(f"{path} is missing: run scripts/k8s-tools.sh {TOOLS.parent}")
    return path


def run(*command: str | Path) -> str:
    result = subprocess.run(
        [str(c) for c in command], capture_output=True, text=True, timeout=120, check=False
    )
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, command))} failed:\n{result.stderr}")
    return result.stdout


def parse(text: str) -> Objects:
    return [doc for doc in yaml.safe_load_all(text) if doc]


@functools.cache
def kustomize_text(path: Path) -> str:
    return run(tool("kubectl"), "kustomize", path)


def kustomize(path: Path) -> Objects:
    return parse(kustomize_text(path))


@functools.cache
def wrapped_overlay_text(
    name: str,
    image: str | None = None,
    devices: tuple[str, ...] | None = None,
    resource_pattern: str | None = None,
) -> str:
    """Render a user's own overlay on top of ours: a new image, static devices, a pattern.

    A new resource pattern is a ConfigMap patch plus the replacement block of
    deploy/base/plugin/kustomization.yaml, as deploy/README.md tells users to write it.
    """
    with tempfile.TemporaryDirectory() as tmp:
        lines = ["resources:", f"  - {os.path.relpath(OVERLAYS / name, tmp)}"]
        if image is not None:
            repository, tag = image.rsplit(":", 1)
            lines += [
                "images:",
                f"  - name: {DEFAULT_REPOSITORY}",
                f"    newName: {repository}",
                f'    newTag: "{tag}"',
            ]
        patches: list[dict[str, Any]] = []
        if devices is not None:
            patches.append(static_devices_patch(list(devices)))
        if resource_pattern is not None:
            config: dict[str, Any] = {"apiVersion": "v1", "kind": "ConfigMap"}
            config["metadata"] = {"name": "qat-hook", "namespace": NAMESPACE}
            config["data"] = {"resourcePattern": resource_pattern}
            patches.append({"patch": json.dumps(config)})
        text = "\n".join(lines) + "\n"
        if patches:
            text += yaml.safe_dump({"patches": patches})
        if resource_pattern is not None:
            base = yaml.safe_load((DEPLOY / "base" / "plugin" / "kustomization.yaml").read_text())
            text += yaml.safe_dump({"replacements": base["replacements"]})
        (Path(tmp) / "kustomization.yaml").write_text(text)
        return kustomize_text(Path(tmp))


@functools.cache
def helm_text(*args: str) -> str:
    return run(tool("helm"), "template", "qat-hook", CHART, "--namespace", NAMESPACE, *args)


def helm_args(
    route: str, source: str, api: str | None = None, flavor: str = "server"
) -> tuple[str, ...]:
    """Chart values for these choices; api None leaves the version to the capabilities."""
    args = ["--set", f"route={route}", "--set", f"addressSource={source}"]
    if flavor != "server":
        args += ["--set", f"flavor={flavor}"]
    if source == "static":
        args += ["--set", "staticDevices={0000:3d:02.2}"]
    if api is not None:
        args += ["--set", f"admissionApiVersion={api}"]
    return tuple(args)


def helm(route: str, source: str, api: str | None = None, *extra: str) -> Objects:
    return parse(helm_text(*helm_args(route, source, api), *extra))


def key(obj: dict[str, Any]) -> tuple[str, str, str]:
    return obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"]


def by_key(objects: Objects) -> dict[tuple[str, str, str], dict[str, Any]]:
    table = {key(obj): obj for obj in objects}
    assert len(table) == len(objects), "two objects share a kind, namespace and name"
    return table


def of_kind(objects: Objects, kind: str) -> Objects:
    return [obj for obj in objects if obj["kind"] == kind]


def one(objects: Objects, kind: str) -> dict[str, Any]:
    found = of_kind(objects, kind)
    assert len(found) == 1, f"{len(found)} objects of kind {kind}"
    return found[0]


# --- the virt-launcher pods KubeVirt renders for VMIs ---------------------------------------

ENABLED_ANNOTATION = "qat.vm.kubevirt.io/enabled"
SIDECARS_ANNOTATION = "hooks.kubevirt.io/hookSidecars"
EXAMPLES = ROOT / "examples"


def _vmi_skeleton(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachineInstance",
        "metadata": {"name": name},
        "spec": {
            "domain": {
                "memory": {"guest": "1Gi"},
                "resources": {"requests": {"memory": "1Gi"}},
                "devices": {"disks": [{"name": "containerdisk", "disk": {"bus": "virtio"}}]},
            },
            "volumes": [
                {
                    "name": "containerdisk",
                    "containerDisk": {"image": "quay.io/containerdisks/fedora:41"},
                }
            ],
        },
    }


def generated_vmis() -> dict[str, dict[str, Any]]:
    """VMIs that ask for a VF in each way there is, and some that ask in none."""
    cases: dict[str, dict[str, Any]] = {}

    def case(name: str) -> dict[str, Any]:
        cases[name] = _vmi_skeleton(f"gen-{name}")
        return cases[name]

    case("requests-only")["spec"]["domain"]["resources"]["requests"]["qat.intel.com/cy"] = "1"
    case("limits-only")["spec"]["domain"]["resources"]["limits"] = {"qat.intel.com/dc": "2"}
    case("annotation-only")["metadata"]["annotations"] = {ENABLED_ANNOTATION: "true"}
    other = case("other-vendor")["spec"]["domain"]["resources"]
    other["requests"]["nvidia.com/gpu"] = "1"
    other["limits"] = {"nvidia.com/gpu": "1"}
    near = case("near-miss-resource")["spec"]["domain"]["resources"]
    near["limits"] = {"intel.com/qat": "1", "example.com/qat.intel.com": "1"}
    claim = [{"name": "qat", "resourceClaimTemplateName": "qat-vf"}]
    dra = case("dra-claim-with-annotation")
    dra["metadata"]["annotations"] = {ENABLED_ANNOTATION: "true"}
    dra["spec"]["resourceClaims"] = claim
    case("dra-claim-without-annotation")["spec"]["resourceClaims"] = claim
    case("none")
    return cases


def example_vmis() -> dict[str, dict[str, Any]]:
    """Every VMI and VirtualMachine in examples/, by file and name."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(EXAMPLES.rglob("*.yaml")):
        for doc in parse(path.read_text()):
            if doc.get("kind") in ("VirtualMachineInstance", "VirtualMachine"):
                found[f"{path.relative_to(EXAMPLES)}:{doc['metadata']['name']}"] = doc
    return found


def vmi_view(doc: dict[str, Any]) -> dict[str, Any]:
    """The VMI a VirtualMachine's template becomes (a VMI is returned as it is)."""
    if doc["kind"] != "VirtualMachine":
        return doc
    template = doc["spec"]["template"]
    metadata = {"name": doc["metadata"]["name"], **template.get("metadata", {})}
    return {**doc, "kind": "VirtualMachineInstance", "metadata": metadata, "spec": template["spec"]}


def wants_vf(vmi: dict[str, Any], pattern: str) -> bool:
    """The install's documented selection: a resource matching the pattern, or the annotation.

    ``pattern`` is the params' resourcePattern; CEL's matches() is RE2, which agrees with
    Python's re for the patterns tested here.
    """
    view = vmi_view(vmi)
    resources = view["spec"]["domain"].get("resources", {})
    names = [*resources.get("requests", {}), *resources.get("limits", {})]
    annotations = view["metadata"].get("annotations", {})
    return ENABLED_ANNOTATION in annotations or any(re.search(pattern, n) for n in names)
