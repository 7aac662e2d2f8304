"""The KubeVirt Plugin object: its CEL judged by KubeVirt's own code, its socket, its policies.

KubeVirt compiles a Plugin's ``condition`` (and any hook's ``condition`` or
``cel.expression``) against Go structs when the object is created, so a JSON field name
there makes ``kubectl apply`` fail and, if it ever got in, every VM fail to boot. Every
Plugin the repository ships (rendered from deploy/ and the chart, and any in examples/) goes
through KubeVirt's own Plugin admitter, and the condition is evaluated by virt-launcher's
own evaluator, both run by the ``kvplugin`` peer (tests/peers/kubevirt/cmd/kvplugin).
KubeVirt builds its CEL environment over the Go types in each run (seconds), so each
module-scoped fixture below asks ``kvplugin`` once for every case its tests read.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import k8s_render as render
from tests.conftest import EXAMPLES, ROOT
from tests.support.peers import run_peer

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


# --- KubeVirt's Plugin admission --------------------------------------------------------------


def plugin_doc(name: str, condition: str) -> dict[str, Any]:
    return {
        "apiVersion": "plugin.kubevirt.io/v1alpha1",
        "kind": "Plugin",
        "metadata": {"name": name},
        "spec": {
            "condition": condition,
            "domainHooks": [{"sidecar": {"socketPath": f"/var/run/kubevirt-plugin/{name}/x.sock"}}],
        },
    }


# Conditions KubeVirt must refuse when the Plugin is created, and why.
REJECTED = {
    "json-spec": (
        'vmi.spec.domain.resources.requests.exists(r, r.startsWith("qat.intel.com/"))',
        "undefined field 'spec'",
    ),
    "json-metadata": (
        '"qat.vm.kubevirt.io/enabled" in vmi.metadata.annotations',
        "undefined field 'metadata'",
    ),
    "no-domain-variable": ("domain.Devices.Hostdevs.size() > 0", "undeclared reference"),
    "not-bool": ("vmi.Name", "must return bool"),
}


def admission_lines(path: Path) -> list[dict[str, Any]]:
    result = run_peer("kvplugin", "admit", str(path))
    assert result.returncode == 0, result.stderr.decode()
    return [json.loads(line) for line in result.stdout.decode().splitlines()]


@pytest.fixture(scope="module")
def admissions(
    plugins: list[tuple[str, dict[str, Any]]], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, dict[str, Any]]:
    """KubeVirt's admission verdict for every shipped Plugin and every REJECTED case."""
    docs = [
        dict(plugin, metadata={"name": f"shipped-{i}"}) for i, (_, plugin) in enumerate(plugins)
    ]
    docs += [plugin_doc(f"rejected-{case}", expr) for case, (expr, _) in REJECTED.items()]
    path = tmp_path_factory.mktemp("admit") / "plugins.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    return {line["name"]: line for line in admission_lines(path)}


def test_kubevirt_admits_every_shipped_plugin(
    plugins: list[tuple[str, dict[str, Any]]], admissions: dict[str, dict[str, Any]]
) -> None:
    for i, (where, _) in enumerate(plugins):
        verdict = admissions[f"shipped-{i}"]
        assert verdict["allowed"], (where, verdict.get("message"))


@pytest.mark.parametrize("case", sorted(REJECTED))
def test_kubevirt_rejects_a_condition_it_cannot_compile(
    case: str, admissions: dict[str, dict[str, Any]]
) -> None:
    verdict = admissions[f"rejected-{case}"]
    assert verdict["allowed"] is False
    assert REJECTED[case][1] in verdict["message"]
    assert [c["field"] for c in verdict["causes"]] == ["spec.condition"]


def test_admission_verdicts_name_the_file_and_plugin(tmp_path: Path) -> None:
    path = tmp_path / "one.json"
    path.write_text(json.dumps(plugin_doc("qat", 'vmi.Labels["app"] == "test"')))
    assert admission_lines(path) == [{"file": str(path), "name": "qat", "allowed": True}]


# --- the condition, evaluated by virt-launcher's evaluator ----------------------------------


def bare_vmi() -> dict[str, Any]:
    vmi = copy.deepcopy(example_vmi())
    del vmi["spec"]["domain"]["resources"]
    vmi["metadata"].pop("annotations", None)
    vmi["metadata"].pop("labels", None)
    return vmi


def opted_in(vmi: dict[str, Any]) -> dict[str, Any]:
    vmi = copy.deepcopy(vmi)
    vmi["metadata"].setdefault("annotations", {})["qat.vm.kubevirt.io/enabled"] = "true"
    return vmi


# case -> (VMI or VirtualMachine, whether the shipped condition must select it)
SELECTION: dict[str, tuple[dict[str, Any], bool]] = {
    "requests": (vmi_with({"memory": "4Gi", "qat.intel.com/generic": "1"}, None), True),
    "limits": (vmi_with({"memory": "4Gi"}, {"qat.intel.com/cy": "1"}), True),
    "none": (vmi_with({"memory": "4Gi"}, {"memory": "4Gi"}), False),
    "other-vendor": (vmi_with({"intel.com/qat": "1"}, None), False),
    "annotation": (opted_in(vmi_with({"memory": "4Gi"}, None)), True),
    "no-resources-no-metadata-maps": (bare_vmi(), False),
    **{f"generated-{name}": (vmi, False) for name, vmi in render.generated_vmis().items()},
    **{f"example-{name}": (doc, True) for name, doc in render.example_vmis().items()},
}
# The generated VMIs that ask for a VF in a way the condition sees (DRA without the
# annotation requests no resource, so it is not selected: the README tells users to annotate).
SELECTED_GENERATED = {
    "requests-only",
    "limits-only",
    "annotation-only",
    "dra-claim-with-annotation",
}
for _name in SELECTED_GENERATED:
    SELECTION[f"generated-{_name}"] = (SELECTION[f"generated-{_name}"][0], True)


@pytest.fixture(scope="module")
def selections(
    plugins: list[tuple[str, dict[str, Any]]], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, dict[str, Any]]:
    """virt-launcher's evaluation of the shipped condition on every SELECTION case."""
    tmp = tmp_path_factory.mktemp("select")
    plugin_path = tmp / "plugin.json"
    plugin_path.write_text(json.dumps(plugins[0][1]))
    paths = {}
    for case, (doc, _) in SELECTION.items():
        paths[case] = tmp / f"{case.replace('/', '_').replace(':', '_')}.json"
        paths[case].write_text(json.dumps(doc))
    result = run_peer("kvplugin", "select", "-plugins", str(plugin_path), *map(str, paths.values()))
    assert result.returncode == 0, result.stderr.decode()
    by_path = {json.loads(line)["vmi"]: json.loads(line) for line in result.stdout.splitlines()}
    return {case: by_path[str(path)] for case, path in paths.items()}


def test_every_shipped_plugin_has_the_same_condition(condition: str) -> None:
    assert "vmi.Spec.Domain.Resources.Requests" in condition


@pytest.mark.parametrize("case", sorted(SELECTION))
def test_the_shipped_condition_selects_exactly_the_vms_that_ask(
    case: str, selections: dict[str, dict[str, Any]]
) -> None:
    outcome = selections[case]
    assert "error" not in outcome, outcome["error"]
    assert outcome["selected"] is SELECTION[case][1]


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
