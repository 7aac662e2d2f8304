"""The install package (deploy/) and the Helm chart, rendered by the real kubectl and helm.

Every overlay and chart variant is rendered once per session (tests.k8s_render), every
Kubernetes object is validated strictly against the Kubernetes versions its overlay
targets (kubernetes-validate), and every admission policy is run over a captured
virt-launcher pod (tests.k8s_policy) to check what it really does to the pod.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
from typing import Any

import jsonpatch
import kubernetes_validate
import pytest
import yaml

from hook_sidecar import __version__
from tests import k8s_render as render
from tests.conftest import ROOT, run_cli
from tests.k8s_policy import admit

POD = yaml.safe_load((ROOT / "tests" / "data" / "virt-launcher-pod.yaml").read_text())
OVERLAYS = sorted(p.name for p in render.OVERLAYS.iterdir())
OTHER_IMAGE = "registry.example.com/platform/qat-hook:9.8.7"
DEVICE = "0000:3d:02.2"
CHOICES = [(r, s, a) for r in render.ROUTES for s in render.SOURCES for a in render.APIS]
KUBEVIRT_KINDS = {"Plugin"}  # no schema here: checked by shape in test_plugin.py


def rendered(name: str) -> list[dict[str, Any]]:
    """An overlay as it is installed; static overlays with the devices a user sets."""
    if render.overlay_choices(name)[1] == "static":
        return render.parse(render.wrapped_overlay_text(name, devices=DEVICE))
    return render.kustomize(render.OVERLAYS / name)


def container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    matches: list[dict[str, Any]] = [c for c in pod["spec"]["containers"] if c["name"] == name]
    assert len(matches) == 1, f"{len(matches)} containers named {name}"
    return matches[0]


def annotation_pod(tag: str = "0.0.9") -> dict[str, Any]:
    """The pod KubeVirt makes for an annotated VMI: our image, and another hook's sidecar."""
    pod: dict[str, Any] = copy.deepcopy(POD)
    pod["spec"]["volumes"] = [
        v for v in pod["spec"]["volumes"] if v["name"] != "kubevirt-plugin-sockets"
    ]
    pod["spec"]["containers"] += [
        {"name": "hook-sidecar-0", "image": f"{render.DEFAULT_REPOSITORY}:{tag}"},
        {"name": "hook-sidecar-1", "image": "example.com/other-hook:1"},
    ]
    return pod


# --- the package's shape --------------------------------------------------------------------


def test_one_overlay_per_route_source_and_api() -> None:
    assert sorted(render.overlay_name(*choice) for choice in CHOICES) == OVERLAYS


@pytest.mark.parametrize("name", OVERLAYS)
def test_overlay_first_comment_says_what_it_needs(name: str) -> None:
    route, source, api = render.overlay_choices(name)
    text = (render.OVERLAYS / name / "kustomization.yaml").read_text()
    head = text.split("apiVersion:", 1)[0]
    assert head.startswith("# Needs: Kubernetes " + ("1.36+" if api == "v1" else "1.34-1.35"))
    assert ("Plugins" if route == "plugin" else "Sidecar") in head
    assert "ReservedOverheadMemlock" in head
    assert {"podresources": "PodResources", "dra": "DRA", "static": "data.devices"}[source] in head
    assert f"kubectl apply -k deploy/overlays/{name}\n" in head


# --- validation against the Kubernetes versions each overlay targets ------------------------


@pytest.mark.parametrize("name", OVERLAYS)
def test_overlay_objects_validate_strictly(name: str) -> None:
    api = render.overlay_choices(name)[2]
    objects = rendered(name)
    policies = render.of_kind(objects, "MutatingAdmissionPolicy")
    assert policies and all(
        p["apiVersion"] == f"admissionregistration.k8s.io/{api}" for p in policies
    )
    for version in render.KUBERNETES[api]:
        for obj in objects:
            if obj["kind"] not in KUBEVIRT_KINDS:
                kubernetes_validate.validate(obj, version, strict=True)


def test_v1_policies_do_not_exist_before_1_36() -> None:
    """Why the v1beta1 overlays exist: 1.35 has no v1 MutatingAdmissionPolicy."""
    objects = render.kustomize(render.OVERLAYS / "annotation-dra")
    policy = render.one(objects, "MutatingAdmissionPolicy")
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        kubernetes_validate.validate(policy, "1.35.0", strict=True)


# --- the image is named once ---------------------------------------------------------------


@pytest.mark.parametrize("name", OVERLAYS)
def test_image_is_named_once(name: str) -> None:
    default = f"{render.DEFAULT_REPOSITORY}:{__version__}"
    text = render.kustomize_text(render.OVERLAYS / name)
    assert text.count(render.DEFAULT_REPOSITORY) == 1
    params = render.one(render.parse(text), "ConfigMap")
    assert params["data"]["image"] == default

    other = render.wrapped_overlay_text(name, image=OTHER_IMAGE)
    assert "kubevirt-qat-hook/kubevirt-qat-hook" not in other
    assert __version__ not in other
    assert render.one(render.parse(other), "ConfigMap")["data"]["image"] == OTHER_IMAGE


@pytest.mark.parametrize("route", render.ROUTES)
def test_chart_image_is_named_once(route: str) -> None:
    repository, tag = OTHER_IMAGE.rsplit(":", 1)
    text = render.helm_text(
        *render.helm_args(route, "podresources", "v1"),
        *("--set", f"image.repository={repository}", "--set", f"image.tag={tag}"),
    )
    assert "kubevirt-qat-hook/kubevirt-qat-hook" not in text
    assert render.one(render.parse(text), "ConfigMap")["data"]["image"] == OTHER_IMAGE
    default = render.helm_text(*render.helm_args(route, "podresources", "v1"))
    assert default.count(f"{render.DEFAULT_REPOSITORY}:{__version__}") == 1


# --- what the policies do to a virt-launcher pod ---------------------------------------------


@pytest.mark.parametrize("name", OVERLAYS)
def test_policies_are_idempotent_and_order_free(name: str) -> None:
    objects = rendered(name)
    pod = POD if name.startswith("plugin-") else annotation_pod()
    once = admit(objects, pod)
    assert once != pod
    assert admit(objects, pod, reverse=True) == once
    assert admit(objects, once) == once


@pytest.mark.parametrize("name", [o for o in OVERLAYS if o.startswith("plugin-")])
def test_plugin_route_adds_a_restricted_sidecar(name: str) -> None:
    objects = rendered(name)
    params = render.one(objects, "ConfigMap")["data"]
    hook = container(admit(objects, POD), "qat-hook")
    assert hook["image"] == params["image"]
    assert hook["imagePullPolicy"] == params["imagePullPolicy"]
    assert hook["resources"]["limits"] == {"cpu": "200m", "memory": "64Mi"}
    assert hook["resources"]["requests"] == {"cpu": "20m", "memory": "48Mi"}
    security = hook["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] == 107
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    # Pods that are not virt-launcher pods with the plugin volume are left alone.
    plain = copy.deepcopy(POD)
    plain["spec"]["volumes"] = [
        v for v in plain["spec"]["volumes"] if v["name"] != "kubevirt-plugin-sockets"
    ]
    plain["spec"]["resourceClaims"] = []
    assert admit(objects, plain) == plain
    other = copy.deepcopy(POD)
    other["metadata"]["labels"] = {"app": "web"}
    assert admit(objects, other) == other


@pytest.mark.parametrize("name", [o for o in OVERLAYS if o.startswith("annotation-")])
def test_annotation_route_touches_only_our_sidecars(name: str) -> None:
    objects = rendered(name)
    assert not render.of_kind(objects, "Plugin")
    pod = admit(objects, annotation_pod())
    assert "qat-hook" not in [c["name"] for c in pod["spec"]["containers"]]
    assert container(pod, "hook-sidecar-0") != {
        "name": "hook-sidecar-0",
        "image": f"{render.DEFAULT_REPOSITORY}:0.0.9",
    }
    assert container(pod, "hook-sidecar-1") == {
        "name": "hook-sidecar-1",
        "image": "example.com/other-hook:1",
    }
    # The repository in the params decides, not the tag: after an image change the old
    # repository's sidecars get nothing and the new one's are served.
    static = render.overlay_choices(name)[1] == "static"
    moved_text = render.wrapped_overlay_text(
        name, image=OTHER_IMAGE, devices=DEVICE if static else None
    )
    moved = render.parse(moved_text)
    old = annotation_pod()
    assert admit(moved, old) == old
    new = copy.deepcopy(old)
    new["spec"]["containers"][-2]["image"] = OTHER_IMAGE.rsplit(":", 1)[0] + ":1.0"
    assert container(admit(moved, new), "hook-sidecar-0") != new["spec"]["containers"][-2]


def targets(name: str, pod: dict[str, Any]) -> list[dict[str, Any]]:
    hook = "qat-hook" if name.startswith("plugin-") else "hook-sidecar-0"
    return [container(pod, hook)]


@pytest.mark.parametrize("name", [o for o in OVERLAYS if "-podresources" in o])
def test_podresources_source(name: str) -> None:
    objects = rendered(name)
    pod = admit(objects, POD if name.startswith("plugin-") else annotation_pod())
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == "qat-hook-pod-resources")
    assert volume["hostPath"] == {"path": "/var/lib/kubelet/pod-resources", "type": "Directory"}
    for hook in targets(name, pod):
        mount = next(m for m in hook["volumeMounts"] if m["name"] == "qat-hook-pod-resources")
        assert mount == {
            "name": "qat-hook-pod-resources",
            "mountPath": "/var/lib/kubelet/pod-resources",
            "readOnly": True,
        }
        env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in hook["env"]}
        assert env == {"POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace"}
    assert "hostPath" not in json.dumps(container(pod, "compute"))


@pytest.mark.parametrize("name", [o for o in OVERLAYS if "-dra" in o])
def test_dra_source_shares_the_claim(name: str) -> None:
    objects = rendered(name)
    start = POD if name.startswith("plugin-") else annotation_pod()
    pod = admit(objects, start)
    for hook in [*targets(name, pod), container(pod, "compute")]:
        assert hook["resources"]["claims"] == [{"name": "qat"}]
    # compute keeps everything else it had
    assert container(pod, "compute")["resources"]["limits"]["qat.intel.com/generic"] == "1"
    without_claim = copy.deepcopy(start)
    del without_claim["spec"]["resourceClaims"]
    assert "claims" not in json.dumps(admit(objects, without_claim))


def transform_example(env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    """The real CLI on the bundled VMI and domain, with the environment a policy gave."""
    return run_cli(
        "transform",
        "examples/domain.xml",
        "--vmi",
        "examples/vmi.json",
        "--verify-sysfs",
        "off",
        env=env,
    )


@pytest.mark.parametrize("name", [o for o in OVERLAYS if "-static" in o])
def test_static_source_reaches_the_hook(name: str) -> None:
    objects = rendered(name)
    pod = admit(objects, POD if name.startswith("plugin-") else annotation_pod())
    for hook in targets(name, pod):
        env = {e["name"]: e["value"] for e in hook["env"]}
        assert env == {"QAT_HOOK_DEVICES": DEVICE}
        # The real CLI, with that environment, injects exactly that VF.
        result = transform_example(env)
        assert result.returncode == 0, result.stderr
        assert b'bus="0x3d" slot="0x02" function="0x2"' in result.stdout


def test_static_without_devices_names_no_device() -> None:
    """An unset devices key reaches the hook as an empty QAT_HOOK_DEVICES: no address.

    The real CLI with that environment finds nothing for a VMI that asks, and fails
    (the VM would not start) rather than inventing a VF.
    """
    objects = render.kustomize(render.OVERLAYS / "plugin-static")
    hook = container(admit(objects, POD), "qat-hook")
    assert hook["env"] == [{"name": "QAT_HOOK_DEVICES", "value": ""}]
    result = transform_example({"QAT_HOOK_DEVICES": ""})
    assert result.returncode != 0
    assert b"<hostdev" not in result.stdout


# --- the Helm chart -----------------------------------------------------------------------


@pytest.mark.parametrize(("route", "source", "api"), CHOICES)
def test_chart_renders_what_kustomize_renders(route: str, source: str, api: str) -> None:
    name = render.overlay_name(route, source, api)
    expected = [o for o in rendered(name) if o["kind"] != "Namespace"]
    assert render.by_key(render.helm(route, source, api)) == render.by_key(expected)


@pytest.mark.parametrize("route", render.ROUTES)
def test_chart_picks_the_admission_api_from_the_cluster(route: str) -> None:
    def versions(*extra: str) -> set[str]:
        objects = render.parse(render.helm_text(*render.helm_args(route, "dra"), *extra))
        return {o["apiVersion"] for o in objects if o["kind"].startswith("MutatingAdmission")}

    assert versions("--api-versions", render.MAP_V1) == {"admissionregistration.k8s.io/v1"}
    assert versions() == {"admissionregistration.k8s.io/v1beta1"}
    override = ("--set", "admissionApiVersion=v1")
    assert versions(*override) == {"admissionregistration.k8s.io/v1"}


@pytest.mark.parametrize("route", render.ROUTES)
@pytest.mark.parametrize("source", render.SOURCES)
def test_helm_lint_is_clean(route: str, source: str) -> None:
    out = render.run(
        render.tool("helm"), "lint", "--strict", render.CHART, *render.helm_args(route, source)
    )
    assert "0 chart(s) failed" in out
    assert "[WARNING]" not in out and "[ERROR]" not in out


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (("--set", "addressSource=static"), "addressSource=static needs staticDevices"),
        (("--set", "route=webhook"), "route"),
        (("--set", "staticDevices={3d:02.2}"), "staticDevices"),
        (("--set", "admissionApiVersion=v1alpha1"), "admissionApiVersion"),
    ],
)
def test_chart_refuses_bad_values(values: tuple[str, ...], message: str) -> None:
    with pytest.raises(AssertionError, match=re.escape(message)):
        render.helm_text(*values)


@pytest.mark.parametrize("route", render.ROUTES)
def test_notes_say_what_to_check(route: str) -> None:
    out = render.run(
        render.tool("helm"),
        "install",
        "--dry-run=client",
        "qat-hook",
        render.CHART,
        "--namespace",
        render.NAMESPACE,
        *render.helm_args(route, "podresources"),
    )
    notes = out.split("NOTES:", 1)[1]
    gate = "Plugins" if route == "plugin" else "Sidecar"
    assert gate in notes and "ReservedOverheadMemlock" in notes
    assert f"{render.DEFAULT_REPOSITORY}:{__version__}" in notes
    assert "memLock: Required" in notes


# --- versions, gates, releases --------------------------------------------------------------


def test_one_version_everywhere() -> None:
    chart = yaml.safe_load((render.CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == __version__
    assert chart["version"] == __version__
    params = yaml.safe_load((render.DEPLOY / "base/common/params.yaml").read_text())
    assert params["data"]["image"] == f"{render.DEFAULT_REPOSITORY}:{__version__}"
    makefile = (ROOT / "Makefile").read_text()
    assert f"IMAGE ?= {render.DEFAULT_REPOSITORY}\n" in makefile
    assert "TAG ?= $(shell sed -n 's/^__version__" in makefile  # the tag is read from the package
    changelog = (ROOT / "CHANGELOG.md").read_text()
    newest = re.search(r"^## \[?(\d+\.\d+\.\d+)", changelog, re.M)
    assert newest is not None and newest.group(1) == __version__


KUBEVIRT_CR: dict[str, Any] = {
    "apiVersion": "kubevirt.io/v1",
    "kind": "KubeVirt",
    "metadata": {"name": "kubevirt", "namespace": "kubevirt"},
    "spec": {"configuration": {"developerConfiguration": {"featureGates": ["CPUManager"]}}},
}


@pytest.mark.parametrize(
    ("patch", "gates"),
    [
        ("plugin-route.json", ["Plugins", "ReservedOverheadMemlock"]),
        ("annotation-route.json", ["Sidecar", "ReservedOverheadMemlock"]),
        ("dra.json", ["HostDevicesWithDRA"]),
    ],
)
def test_gate_patches_add_to_the_list(patch: str, gates: list[str]) -> None:
    operations = json.loads((render.DEPLOY / "gates" / patch).read_text())
    patched = jsonpatch.apply_patch(KUBEVIRT_CR, operations)
    assert patched["spec"]["configuration"]["developerConfiguration"]["featureGates"] == [
        "CPUManager",
        *gates,
    ]
    # On a CR without a gate list the JSON patch fails (the README says to use the merge
    # patch there) rather than doing something else.
    bare = copy.deepcopy(KUBEVIRT_CR)
    bare["spec"]["configuration"] = {}
    with pytest.raises(Exception, match="developerConfiguration"):
        jsonpatch.apply_patch(bare, operations)


def test_readme_installs_every_overlay_in_one_command() -> None:
    readme = (ROOT / "README.md").read_text()
    commands = set(re.findall(r"kubectl apply -k deploy/overlays/([\w.-]+)", readme))
    assert commands == set(OVERLAYS)
    for patch in re.findall(r"deploy/gates/([\w.-]+\.json)", readme):
        assert (render.DEPLOY / "gates" / patch).is_file(), patch


def test_workflows() -> None:
    workflows = ROOT / ".github" / "workflows"
    ci = yaml.safe_load((workflows / "ci.yml").read_text())
    assert "pull_request" in ci[True]  # YAML 1.1 reads the key `on` as True
    steps = [s.get("run", "") for job in ci["jobs"].values() for s in job["steps"]]
    assert any(re.search(r"(^|\s)\.ci/run$", run) for run in steps)
    image = (workflows / "image.yml").read_text()
    for needed in ("sbom: true", "provenance: mode=max", "cosign sign", "id-token: write"):
        assert needed in image, needed
    assert re.search(r"trivy|grype", image)


def test_license_is_apache_2() -> None:
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text
