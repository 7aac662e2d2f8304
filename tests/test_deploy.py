"""The install package (deploy/) and the Helm chart, rendered by the real kubectl and helm.

Every overlay and chart variant is rendered once per session (tests.k8s_render) and every
Kubernetes object is validated strictly against the Kubernetes versions its overlay
targets (kubernetes-validate). What the admission policies do to virt-launcher pods is
decided by a real API server: tests/test_cluster.py installs every variant on one.
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
from hook_sidecar.pci import PciAddress, PciAddressError
from tests import k8s_render as render
from tests.conftest import ROOT

OVERLAYS = sorted(p.name for p in render.OVERLAYS.iterdir())
OTHER_IMAGE = "registry.example.com/platform/qat-hook:9.8.7"
DEVICES = ("0000:3d:02.2", "3d:02.3")
KUBEVIRT_KINDS = {"Plugin"}  # no schema here: checked by shape in test_plugin.py
STATIC_PLACEHOLDER = "static_devices_not_set__set_spec_variables_0_of_qat_hook_static"


def rendered(name: str) -> list[dict[str, Any]]:
    """An overlay as it is installed; static overlays with the devices a user sets."""
    if render.overlay_choices(name)[1] == "static":
        return render.parse(render.wrapped_overlay_text(name, devices=DEVICES))
    return render.kustomize(render.OVERLAYS / name)


# --- the package's shape --------------------------------------------------------------------


def test_one_overlay_per_route_source_api_and_flavor() -> None:
    assert sorted(render.overlay_name(*choice) for choice in render.all_choices()) == OVERLAYS


@pytest.mark.parametrize("name", OVERLAYS)
def test_overlay_first_comment_says_what_it_needs(name: str) -> None:
    route, source, api, flavor = render.overlay_choices(name)
    text = (render.OVERLAYS / name / "kustomization.yaml").read_text()
    head = text.split("apiVersion:", 1)[0]
    assert head.startswith("# Needs: Kubernetes " + ("1.36+" if api == "v1" else "1.34-1.35"))
    assert ("Plugins" if route == "plugin" else "Sidecar") in head
    assert "ReservedOverheadMemlock" in head
    assert {"podresources": "PodResources", "dra": "DRA", "static": "devices"}[source] in head
    assert ("shim flavor" in head) == (flavor == "shim")
    assert f"kubectl apply --server-side -k deploy/overlays/{name}\n" in head


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
    shim = "-shim" if render.overlay_choices(name)[3] == "shim" else ""
    default = f"{render.DEFAULT_REPOSITORY}:{__version__}{shim}"
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


# --- what the policies select (their effect is tested on a real API server: test_cluster.py) -


def policies_of(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return render.of_kind(objects, "MutatingAdmissionPolicy")


def every_install() -> list[tuple[str, list[dict[str, Any]]]]:
    """Every overlay and chart variant, rendered as installed."""
    installs = [(f"overlay:{name}", rendered(name)) for name in OVERLAYS]
    for route, source, api, flavor in render.all_choices():
        if api == "v1":
            installs.append((f"chart:{route}-{source}-{flavor}", chart(route, source, flavor)))
    return installs


def chart(route: str, source: str, flavor: str = "server", api: str = "v1") -> list[dict[str, Any]]:
    args = render.helm_args(route, source, api, flavor)
    if source == "static":  # the last --set wins
        args = (*args, "--set", "staticDevices={" + ",".join(DEVICES) + "}")
    return render.parse(render.helm_text(*args))


@pytest.mark.parametrize(("name", "objects"), every_install(), ids=[n for n, _ in every_install()])
def test_every_policy_selects_the_same_pods(name: str, objects: list[dict[str, Any]]) -> None:
    """One selection (issue: VMs that want no VF pay nothing), guarded against absent fields."""
    selections = set()
    for policy in policies_of(objects):
        variables = {v["name"]: v["expression"] for v in policy["spec"].get("variables", [])}
        conditions = {c["name"]: c["expression"] for c in policy["spec"]["matchConditions"]}
        selections.add(conditions["wants-qat"])
        assert policy["spec"]["failurePolicy"] == "Fail"
        for expression in [*variables.values(), *conditions.values()]:
            for optional in ("volumes", "resourceClaims", "annotations"):
                if f"object.spec.{optional}." in expression or f"metadata.{optional}" in expression:
                    assert f"has(object.spec.{optional})" in expression or (
                        f"has(object.metadata.{optional})" in expression
                    ), f"{policy['metadata']['name']}: {optional} read without has()"
    assert len(selections) == 1, selections
    assert "params.data.resourcePattern" in selections.pop()
    assert "qat.intel.com" not in json.dumps(policies_of(objects))  # the pattern is a parameter


def plugin_patterns(objects: list[dict[str, Any]]) -> list[str]:
    condition = render.one(objects, "Plugin")["spec"]["condition"]
    return re.findall(r'matches\(r"([^"]*)"\)', condition)


@pytest.mark.parametrize(
    ("name", "objects"),
    [i for i in every_install() if ":plugin-" in i[0]],
    ids=[n for n, _ in every_install() if ":plugin-" in n],
)
def test_plugin_condition_holds_the_params_pattern(
    name: str, objects: list[dict[str, Any]]
) -> None:
    pattern = render.one(objects, "ConfigMap")["data"]["resourcePattern"]
    assert pattern == "^qat\\.intel\\.com/"
    assert plugin_patterns(objects) == [pattern, pattern]


def test_a_new_resource_pattern_reaches_the_plugin_and_the_policies() -> None:
    """Set once, as deploy/README.md says (kustomize) or as one value (chart)."""
    pattern = "^(qat\\.intel\\.com|intel\\.com)/q"
    overlay = render.parse(render.wrapped_overlay_text("plugin-dra", resource_pattern=pattern))
    values = ("--set-json", f"resourcePattern={json.dumps(pattern)}")
    helm = render.parse(render.helm_text(*render.helm_args("plugin", "dra", "v1"), *values))
    for objects in (overlay, helm):
        assert render.one(objects, "ConfigMap")["data"]["resourcePattern"] == pattern
        assert plugin_patterns(objects) == [pattern, pattern]


def test_static_overlays_carry_no_address_until_the_user_sets_one() -> None:
    """Rendered as shipped, the devices variable is a placeholder the API server refuses."""
    for name in [o for o in OVERLAYS if "-static" in o]:
        policy = next(
            p for p in policies_of(render.kustomize(render.OVERLAYS / name))
            if p["metadata"]["name"] == "qat-hook-static"
        )  # fmt: skip
        devices = policy["spec"]["variables"][0]
        assert devices["name"] == "devices"
        assert devices["expression"] == STATIC_PLACEHOLDER


# --- the Helm chart -----------------------------------------------------------------------


@pytest.mark.parametrize(("route", "source", "api", "flavor"), render.all_choices())
def test_chart_renders_what_kustomize_renders(
    route: str, source: str, api: str, flavor: str
) -> None:
    name = render.overlay_name(route, source, api, flavor)
    expected = [o for o in rendered(name) if o["kind"] != "Namespace"]
    assert render.by_key(chart(route, source, flavor, api)) == render.by_key(expected)


@pytest.mark.parametrize("route", render.ROUTES)
def test_chart_picks_the_admission_api_from_the_cluster(route: str) -> None:
    def versions(*extra: str) -> set[str]:
        objects = render.parse(render.helm_text(*render.helm_args(route, "dra"), *extra))
        return {o["apiVersion"] for o in objects if o["kind"].startswith("MutatingAdmission")}

    assert versions("--api-versions", render.MAP_V1) == {"admissionregistration.k8s.io/v1"}
    assert versions() == {"admissionregistration.k8s.io/v1beta1"}
    override = ("--set", "admissionApiVersion=v1")
    assert versions(*override) == {"admissionregistration.k8s.io/v1"}


@pytest.mark.parametrize(
    ("route", "flavor"), [("plugin", "server"), ("annotation", "server"), ("annotation", "shim")]
)
@pytest.mark.parametrize("source", render.SOURCES)
def test_helm_lint_is_clean(route: str, source: str, flavor: str) -> None:
    out = render.run(
        render.tool("helm"),
        "lint",
        "--strict",
        render.CHART,
        *render.helm_args(route, source, None, flavor),
    )
    assert "0 chart(s) failed" in out
    assert "[WARNING]" not in out and "[ERROR]" not in out


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (("--set", "addressSource=static"), "addressSource=static needs staticDevices"),
        (("--set", "route=webhook"), "route"),
        (("--set", "staticDevices={3d:02.8}"), "staticDevices"),
        (("--set", "flavor=shim"), "flavor=shim needs route=annotation"),
        (("--set", "flavor=fat"), "flavor"),
        (("--set-string", 'resourcePattern=qat"x'), "resourcePattern"),
        (("--set", "admissionApiVersion=v1alpha1"), "admissionApiVersion"),
    ],
)
def test_chart_refuses_bad_values(values: tuple[str, ...], message: str) -> None:
    with pytest.raises(AssertionError, match=re.escape(message)):
        render.helm_text(*values)


# Spellings around the CLI's rule (hook_sidecar.pci): domain optional, 1-2 digit bus and
# slot (slot up to 0x1f), function 0-7, hex in any case.
ADDRESSES = [
    "0000:3d:02.2", "3d:02.2", "3D:1f.7", "0:0:0.0", "ffff:ff:1f.7", "d:2.2", "3d:2.2",
    "3d:02.8", "3d:20.0", "10000:3d:02.2", "3d:02", "0000:3d:02.2.1", "3d-02.2", "3d:002.2",
    "g0:00.0", "", "0x3d:02.2",
]  # fmt: skip


def cli_accepts(address: str) -> bool:
    try:
        PciAddress.parse(address)
    except PciAddressError:
        return False
    return True


def test_chart_accepts_exactly_the_addresses_the_cli_accepts() -> None:
    """One rule for static addresses: the chart's schema and qat-hook --device agree."""
    base = ("--set", "addressSource=static", "--set", "admissionApiVersion=v1")
    verdicts = {}
    for address in ADDRESSES:
        result = subprocess.run(
            [str(render.tool("helm")), "template", "q", str(render.CHART), *base,
             "--set-json", f"staticDevices={json.dumps([address])}"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        verdicts[address] = result.returncode == 0
        if result.returncode != 0:
            assert "staticDevices" in result.stderr, result.stderr
    assert verdicts == {a: cli_accepts(a) for a in ADDRESSES}
    assert sum(verdicts.values()) >= 5  # the list holds both kinds


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
    shim = yaml.safe_load((render.DEPLOY / "components/flavor-shim/kustomization.yaml").read_text())
    assert shim["images"] == [{"name": render.DEFAULT_REPOSITORY, "newTag": f"{__version__}-shim"}]
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
    commands = set(
        re.findall(r"kubectl apply (?:--server-side )?-k deploy/overlays/([\w.-]+)", readme)
    )
    assert commands <= set(OVERLAYS)
    assert {o for o in OVERLAYS if "-shim" not in o} <= commands
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
