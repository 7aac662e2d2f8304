"""The KubeVirt Plugin object: its CEL in KubeVirt's dialect, its socket, its policies.

KubeVirt compiles a Plugin's ``condition`` (and any hook's ``condition`` or
``cel.expression``) against Go structs when the object is created, so a JSON field name
there makes ``kubectl apply`` fail and, if it ever got in, every VM fail to boot.
``tests.k8s_policy.plugin_condition`` evaluates conditions over a Go-named view of the
VMI that mirrors KubeVirt's environment; every Plugin the repository ships (rendered from
deploy/ and the chart, and any in examples/) is checked.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from hook_sidecar.cli import build_parser, serve_config
from tests import k8s_render as render
from tests.conftest import EXAMPLES, ROOT
from tests.k8s_policy import kubevirt_cel_problems, plugin_condition

SOCKET = "/var/run/kubevirt-plugin/qat/qat.sock"
PLUGIN_SPEC_KEYS = {
    "condition",
    "failureStrategy",
    "domainHooks",
    "nodeHooks",
    "mutatingAdmissionPolicies",
    "validatingAdmissionPolicies",
}
DOMAIN_HOOK_KEYS = {"cel", "sidecar", "condition", "failureStrategy", "timeout"}


def load_all(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def shipped_plugins() -> list[tuple[str, dict[str, Any]]]:
    """Every Plugin object the repository ships, with where it comes from."""
    found = []
    for path in sorted(render.OVERLAYS.iterdir()):
        for obj in render.of_kind(render.kustomize(path), "Plugin"):
            found.append((f"deploy/overlays/{path.name}", obj))
    for source in render.SOURCES:
        for obj in render.of_kind(render.helm("plugin", source, "v1"), "Plugin"):
            found.append((f"chart plugin/{source}", obj))
    for path in sorted(EXAMPLES.rglob("*.yaml")):
        for obj in load_all(path):
            if obj.get("kind") == "Plugin":
                found.append((str(path.relative_to(ROOT)), obj))
    return found


def kubevirt_expressions(plugin: dict[str, Any]) -> list[str]:
    spec = plugin["spec"]
    expressions = [spec["condition"]] if "condition" in spec else []
    for hook in spec.get("domainHooks", []):
        if "condition" in hook:
            expressions.append(hook["condition"])
        if "cel" in hook:
            expressions.append(hook["cel"]["expression"])
    return expressions


@pytest.fixture(scope="module")
def plugins() -> list[tuple[str, dict[str, Any]]]:
    found = shipped_plugins()
    assert len(found) >= 9  # 6 plugin overlays, 3 chart variants
    return found


@pytest.fixture(scope="module")
def condition(plugins: list[tuple[str, dict[str, Any]]]) -> str:
    conditions = {plugin["spec"]["condition"] for _, plugin in plugins}
    assert len(conditions) == 1, "the Plugins disagree on their condition"
    return str(conditions.pop())


def example_vmi() -> dict[str, Any]:
    return load_all(EXAMPLES / "plugin" / "vmi-qat.yaml")[0]


def vmi_with(requests: dict[str, str] | None, limits: dict[str, str] | None) -> dict[str, Any]:
    vmi = copy.deepcopy(example_vmi())
    resources: dict[str, Any] = {}
    if requests is not None:
        resources["requests"] = requests
    if limits is not None:
        resources["limits"] = limits
    vmi["spec"]["domain"]["resources"] = resources
    return vmi


# --- the condition, evaluated as KubeVirt does ----------------------------------------------


@pytest.mark.parametrize(
    ("case", "vmi", "wanted"),
    [
        ("requests", vmi_with({"memory": "4Gi", "qat.intel.com/generic": "1"}, None), True),
        ("limits", vmi_with({"memory": "4Gi"}, {"qat.intel.com/cy": "1"}), True),
        ("none", vmi_with({"memory": "4Gi"}, {"memory": "4Gi"}), False),
        ("other-vendor", vmi_with({"intel.com/qat": "1"}, None), False),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_condition_over_resources(
    condition: str, case: str, vmi: dict[str, Any], wanted: bool
) -> None:
    assert plugin_condition(condition, vmi) is wanted, case


def test_condition_annotation(condition: str) -> None:
    vmi = vmi_with({"memory": "4Gi"}, None)
    assert plugin_condition(condition, vmi) is False
    vmi["metadata"]["annotations"] = {"qat.vm.kubevirt.io/enabled": "true"}
    assert plugin_condition(condition, vmi) is True


def test_condition_on_a_vmi_without_resources_or_metadata_maps(condition: str) -> None:
    vmi = copy.deepcopy(example_vmi())
    del vmi["spec"]["domain"]["resources"]
    vmi["metadata"].pop("annotations", None)
    assert plugin_condition(condition, vmi) is False


@pytest.mark.parametrize(
    "path",
    [EXAMPLES / "plugin" / "vmi-qat.yaml", EXAMPLES / "plugin" / "dra" / "vmi-qat-dra.yaml"],
    ids=lambda p: str(p.relative_to(EXAMPLES)),
)
def test_condition_admits_the_plugin_examples(condition: str, path: Path) -> None:
    assert plugin_condition(condition, load_all(path)[0]) is True


def test_the_go_view_rejects_json_names() -> None:
    """The check that would have caught issue 16: JSON names do not evaluate."""
    vmi = example_vmi()
    for expression in (
        "has(vmi.spec.domain.resources.requests)",
        '"qat.vm.kubevirt.io/enabled" in vmi.metadata.annotations',
        "vmi.Spec.Domain.Devices.HostDevices.size() > 0",  # a Go name outside the map
    ):
        with pytest.raises(AssertionError, match="undefined field"):
            plugin_condition(expression, vmi)
    assert plugin_condition('vmi.Labels["kubevirt.io/vm"] == "x" || vmi.Namespace == ""', vmi)


# --- every KubeVirt CEL expression in the repository uses KubeVirt's names -------------------


def test_no_json_names_in_any_kubevirt_cel(plugins: list[tuple[str, dict[str, Any]]]) -> None:
    for where, plugin in plugins:
        for expression in kubevirt_expressions(plugin):
            assert kubevirt_cel_problems(expression) == [], where


@pytest.mark.parametrize(
    ("expression", "problem"),
    [
        ('vmi.spec.domain.resources.requests.exists(r, r == "x")', "vmi.spec"),
        ('"a" in vmi.metadata.annotations', "vmi.metadata"),
        ("domainSpec.devices.hostdevs.size() > 0", "domainSpec.devices"),
        ("object.spec.containers.size() > 0", "'object'"),
        ("domain.Devices.size() > 0", "'domain'"),
    ],
)
def test_the_cel_check_flags_what_kubevirt_rejects(expression: str, problem: str) -> None:
    problems = kubevirt_cel_problems(expression)
    assert problems and any(problem in p for p in problems), problems


def test_the_cel_check_accepts_kubevirt_names() -> None:
    assert (
        kubevirt_cel_problems(
            'vmi.Spec.Domain.Resources.Requests.exists(r, r.startsWith("vmi.spec")) && '
            'domainSpec.Devices.Hostdevs.all(h, h.Managed == "no") && "x" in vmi.Annotations'
        )
        == []
    )


# --- the Plugin object ----------------------------------------------------------------------


def test_plugin_object_shape(plugins: list[tuple[str, dict[str, Any]]]) -> None:
    """No schema for KubeVirt's Plugin CRD exists here: check the fields KubeVirt defines."""
    for where, plugin in plugins:
        assert plugin["apiVersion"] == "plugin.kubevirt.io/v1alpha1", where
        assert plugin["metadata"]["name"] == "qat", where
        spec = plugin["spec"]
        assert set(spec) <= PLUGIN_SPEC_KEYS, where
        assert spec["failureStrategy"] in ("Fail", "Ignore"), where
        assert [h["sidecar"]["socketPath"] for h in spec["domainHooks"]] == [SOCKET], where
        for hook in spec["domainHooks"]:
            assert set(hook) <= DOMAIN_HOOK_KEYS, where
            assert ("cel" in hook) != ("sidecar" in hook), where


@pytest.mark.parametrize(
    "overlay", [o for o in sorted(os.listdir(render.OVERLAYS)) if o.startswith("plugin-")]
)
def test_plugin_lists_exactly_the_policies_installed_with_it(overlay: str) -> None:
    objects = render.kustomize(render.OVERLAYS / overlay)
    plugin = render.one(objects, "Plugin")
    listed = sorted(ref["name"] for ref in plugin["spec"]["mutatingAdmissionPolicies"])
    installed = sorted(
        p["metadata"]["name"] for p in render.of_kind(objects, "MutatingAdmissionPolicy")
    )
    assert listed == installed


def test_plugin_socket_is_what_the_sidecar_serves(monkeypatch: pytest.MonkeyPatch) -> None:
    """The socket the Plugin names is the one the injected container's args serve."""
    from tests.k8s_policy import admit

    monkeypatch.setattr(os, "environ", {})  # the parser reads QAT_HOOK_*: not the developer's
    objects = render.kustomize(render.OVERLAYS / "plugin-podresources")
    pod = admit(objects, yaml.safe_load((ROOT / "tests/data/virt-launcher-pod.yaml").read_text()))
    hook = next(c for c in pod["spec"]["containers"] if c["name"] == "qat-hook")
    config = serve_config(build_parser({}).parse_args(["serve", *hook["args"]]))
    assert config.hook_socket is None  # plugin mode: no legacy socket
    assert str(config.plugin_socket) == SOCKET
    mount = next(m for m in hook["volumeMounts"] if m["name"] == "kubevirt-plugin-sockets")
    assert mount == {
        "name": "kubevirt-plugin-sockets",
        "mountPath": os.path.dirname(SOCKET) + "/",
        "subPath": render.one(objects, "Plugin")["metadata"]["name"],
    }
