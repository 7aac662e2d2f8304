"""The plugin deployment: Plugin object, sidecar-injecting policies, and what they do to a pod.

No API server runs here, so the policies are exercised as far as real tools allow:
- every CEL condition (the Plugin's and each policy's matchConditions) is evaluated for
  real with cel-python against a captured virt-launcher pod or an example VMI;
- cel-python cannot build Kubernetes' typed objects (``Object.spec.containers{...}``,
  ``JSONPatch{...}``), so the mutation expressions, which are written as typed
  constructions with literal values only, are turned into the JSON data they denote
  (``cel_literal_to_json``) and applied to the captured pod: JSONPatch with the jsonpatch
  library, ApplyConfiguration with a merge of list-maps by name, as server-side apply does
  for containers, volumes, env and claims.
"""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path
from typing import Any

import celpy
import jsonpatch
import pytest
import yaml

from hook_sidecar.cli import build_parser
from hook_sidecar.server import serve_config
from tests.conftest import EXAMPLES, ROOT
from tests.test_examples import makefile_image

PLUGIN = EXAMPLES / "plugin"
POD = yaml.safe_load((ROOT / "tests" / "data" / "virt-launcher-pod.yaml").read_text())
SIDECAR_POLICIES = {
    "plain": PLUGIN / "sidecar-policy.yaml",
    "dra": PLUGIN / "dra" / "sidecar-policy.yaml",
    "podresources": EXAMPLES / "podresources" / "plugin-route-policy.yaml",
}


def load_all(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def plugin() -> dict[str, Any]:
    return load_all(PLUGIN / "plugin.yaml")[0]


def socket_path() -> str:
    hooks = plugin()["spec"]["domainHooks"]
    assert len(hooks) == 1
    return str(hooks[0]["sidecar"]["socketPath"])


_TOKENS = re.compile(
    r'(?P<string>"(?:[^"\\]|\\.)*")'
    r"|(?P<type>[A-Z]\w*(?:\.\w+)*\s*\{)"
    r"|(?P<key>[A-Za-z_]\w*)\s*:"
    r"|(?P<word>[A-Za-z_]\w*)"
    r'|(?P<other>[^"A-Za-z_]+)',
    re.S,
)


def cel_literal_to_json(expression: str) -> Any:
    """The JSON data a CEL expression of typed object literals denotes.

    Handles exactly what the examples use: ``Type.path{field: value}`` constructions,
    lists, string-keyed maps, strings, numbers and booleans. Anything else (a variable,
    a function call) makes json.loads fail, so the test fails rather than guesses.
    """
    out = []
    for match in _TOKENS.finditer(expression):
        kind = match.lastgroup
        if kind == "type":
            out.append("{")
        elif kind == "key":
            out.append(f'"{match.group("key")}":')
        else:
            out.append(match.group(0))
    return json.loads("".join(out))


def merge_by_name(target: Any, patch: Any) -> Any:
    """Server-side apply's merge for these fields: maps recursively, list-maps by name."""
    if isinstance(target, dict) and isinstance(patch, dict):
        for key, value in patch.items():
            target[key] = merge_by_name(target.get(key), value) if key in target else value
        return target
    if (
        isinstance(target, list)
        and isinstance(patch, list)
        and all(isinstance(i, dict) and "name" in i for i in target + patch)
    ):
        by_name = {item["name"]: item for item in target}
        for item in patch:
            if item["name"] in by_name:
                merge_by_name(by_name[item["name"]], item)
            else:
                target.append(item)
        return target
    return patch


def cel(expression: str, **variables: Any) -> bool:
    environment = celpy.Environment()
    program = environment.program(environment.compile(expression))
    activation = {name: celpy.json_to_cel(value) for name, value in variables.items()}  # type: ignore[attr-defined]
    return bool(program.evaluate(activation))


def admit(policy_path: Path, pod: dict[str, Any]) -> dict[str, Any] | None:
    """What the policy does to ``pod`` on CREATE; None when its conditions do not match."""
    policy = load_all(policy_path)[0]
    spec = policy["spec"]
    selector = spec["matchConstraints"]["objectSelector"]["matchLabels"]
    if any(pod["metadata"].get("labels", {}).get(k) != v for k, v in selector.items()):
        return None
    if not all(cel(c["expression"], object=pod) for c in spec.get("matchConditions", [])):
        return None
    result = copy.deepcopy(pod)
    for mutation in spec["mutations"]:
        if mutation["patchType"] == "JSONPatch":
            operations = cel_literal_to_json(mutation["jsonPatch"]["expression"])
            result = dict(jsonpatch.apply_patch(result, operations))
        else:
            patch = cel_literal_to_json(mutation["applyConfiguration"]["expression"])
            result = merge_by_name(result, patch)
    return result


def container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    matches: list[dict[str, Any]] = [c for c in pod["spec"]["containers"] if c["name"] == name]
    assert len(matches) == 1, f"{len(matches)} containers named {name}"
    return matches[0]


# --- the Plugin object ----------------------------------------------------------------------


def test_plugin_object() -> None:
    doc = plugin()
    assert doc["apiVersion"] == "plugin.kubevirt.io/v1alpha1"
    assert doc["kind"] == "Plugin"
    assert doc["metadata"]["name"] == "qat"
    assert doc["spec"]["failureStrategy"] == "Fail"
    assert socket_path() == "/var/run/kubevirt-plugin/qat/qat.sock"
    referenced = [ref["name"] for ref in doc["spec"]["mutatingAdmissionPolicies"]]
    for path in SIDECAR_POLICIES.values():
        policy, binding = load_all(path)
        assert policy["metadata"]["name"] in referenced
        assert binding["spec"]["policyName"] == policy["metadata"]["name"]


@pytest.mark.parametrize(
    ("vmi_path", "expected"),
    [
        (PLUGIN / "vmi-qat.yaml", True),
        (PLUGIN / "dra" / "vmi-qat-dra.yaml", True),
        (EXAMPLES / "vmi-qat.yaml", True),
    ],
)
def test_plugin_condition(vmi_path: Path, expected: bool) -> None:
    vmi = load_all(vmi_path)[0]
    assert cel(plugin()["spec"]["condition"], vmi=vmi) is expected


def test_plugin_condition_skips_plain_vmis() -> None:
    vmi = {
        "metadata": {"name": "plain"},
        "spec": {"domain": {"resources": {"requests": {"memory": "1Gi"}}}},
    }
    assert cel(plugin()["spec"]["condition"], vmi=vmi) is False


# --- the sidecar-injecting policies ------------------------------------------------------------


@pytest.mark.parametrize("variant", list(SIDECAR_POLICIES))
def test_policy_adds_a_restricted_plugin_sidecar(variant: str) -> None:
    pod = admit(SIDECAR_POLICIES[variant], POD)
    assert pod is not None
    hook = container(pod, "qat-hook")
    assert hook["image"] == makefile_image()

    mounts = [m for m in hook["volumeMounts"] if m["name"] == "kubevirt-plugin-sockets"]
    assert mounts == [
        {
            "name": "kubevirt-plugin-sockets",
            "mountPath": os.path.dirname(socket_path()) + "/",
            "subPath": plugin()["metadata"]["name"],
        }
    ]
    assert any(v["name"] == "kubevirt-plugin-sockets" for v in pod["spec"]["volumes"])

    security = hook["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == 107
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert security["readOnlyRootFilesystem"] is True

    limits = hook["resources"]["limits"]
    assert limits == {"cpu": "200m", "memory": "64Mi"}

    args = build_parser().parse_args(["serve", *hook["args"]])
    config = serve_config(args)
    assert config.hook_socket is None  # plugin mode: no legacy socket
    assert str(config.plugin_socket) == socket_path()


@pytest.mark.parametrize("variant", list(SIDECAR_POLICIES))
def test_policy_adds_the_container_once(variant: str) -> None:
    once = admit(SIDECAR_POLICIES[variant], POD)
    assert once is not None
    assert admit(SIDECAR_POLICIES[variant], once) is None


@pytest.mark.parametrize("variant", list(SIDECAR_POLICIES))
def test_policy_ignores_pods_without_the_plugin_volume(variant: str) -> None:
    pod = copy.deepcopy(POD)
    pod["spec"]["volumes"] = [
        v for v in pod["spec"]["volumes"] if v["name"] != "kubevirt-plugin-sockets"
    ]
    assert admit(SIDECAR_POLICIES[variant], pod) is None
    other = copy.deepcopy(POD)
    other["metadata"]["labels"] = {"app": "web"}
    assert admit(SIDECAR_POLICIES[variant], other) is None


def test_dra_variant_shares_the_claim() -> None:
    pod = admit(SIDECAR_POLICIES["dra"], POD)
    assert pod is not None
    assert container(pod, "qat-hook")["resources"]["claims"] == [{"name": "qat"}]
    assert container(pod, "compute")["resources"]["claims"] == [{"name": "qat"}]
    # The compute container keeps everything else it had.
    assert container(pod, "compute")["resources"]["limits"]["qat.intel.com/generic"] == "1"
    without_claim = copy.deepcopy(POD)
    del without_claim["spec"]["resourceClaims"]
    assert admit(SIDECAR_POLICIES["dra"], without_claim) is None


def test_dra_variant_matches_its_claim_template_and_vmi() -> None:
    template = load_all(PLUGIN / "dra" / "resourceclaimtemplate.yaml")[0]
    vmi = load_all(PLUGIN / "dra" / "vmi-qat-dra.yaml")[0]
    claim = vmi["spec"]["resourceClaims"][0]
    assert claim == {"name": "qat", "resourceClaimTemplateName": template["metadata"]["name"]}
    assert POD["spec"]["resourceClaims"][0] == claim


def test_podresources_variant_mounts_kubelet_socket_read_only() -> None:
    pod = admit(SIDECAR_POLICIES["podresources"], POD)
    assert pod is not None
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == "qat-hook-pod-resources")
    assert volume["hostPath"] == {"path": "/var/lib/kubelet/pod-resources", "type": "Directory"}
    hook = container(pod, "qat-hook")
    mount = next(m for m in hook["volumeMounts"] if m["name"] == "qat-hook-pod-resources")
    assert mount == {
        "name": "qat-hook-pod-resources",
        "mountPath": "/var/lib/kubelet/pod-resources",
        "readOnly": True,
    }
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in hook["env"]}
    assert env == {"POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace"}
    # The hook's default socket path is inside that mount.
    args = build_parser().parse_args(["serve", *hook["args"]])
    assert args.podresources_socket == "/var/lib/kubelet/pod-resources/kubelet.sock"


# --- the annotation-route policies (ApplyConfiguration with CEL comprehensions) ----------------


@pytest.mark.parametrize(
    "path",
    [
        EXAMPLES / "podresources" / "annotation-route-policy.yaml",
        EXAMPLES / "dra" / "share-claim-policy.yaml",
    ],
    ids=["podresources", "dra"],
)
def test_annotation_route_policy_conditions(path: Path) -> None:
    policy = load_all(path)[0]
    pod = copy.deepcopy(POD)
    pod["spec"]["containers"].append({"name": "hook-sidecar-0", "image": makefile_image()})
    pod["spec"]["containers"].append({"name": "hook-sidecar-1", "image": "example.com/other:1"})
    conditions = [c["expression"] for c in policy["spec"]["matchConditions"]]
    assert all(cel(expression, object=pod) for expression in conditions)
    # The mutation filters the containers it touches with this very CEL predicate.
    expression = policy["spec"]["mutations"][0]["applyConfiguration"]["expression"]
    predicate = re.search(r"\.filter\(c, (.+?)\)\s*\.map", expression, re.S)
    assert predicate is not None
    touched = [c["name"] for c in pod["spec"]["containers"] if cel(predicate.group(1), c=c)]
    assert "hook-sidecar-0" in touched
    assert "hook-sidecar-1" not in touched  # another hook's sidecar gets nothing
    assert "volumecontainerdisk" not in touched


def test_every_plugin_example_names_the_same_plugin_socket_and_image() -> None:
    texts = [p.read_text() for p in sorted(PLUGIN.rglob("*.yaml"))] + [
        (EXAMPLES / "podresources" / "plugin-route-policy.yaml").read_text()
    ]
    for text in texts:
        for image in re.findall(r"ghcr\.io/[\w./-]+:[\w.]+", text):
            assert image == makefile_image()
        for path in re.findall(r"/var/run/kubevirt-plugin/[\w./-]+", text):
            assert path in (socket_path(), os.path.dirname(socket_path()) + "/")
