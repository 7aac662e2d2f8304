"""An offline stand-in for Kubernetes CEL, for the one test that runs without a cluster.

What the admission policies do to pods is decided by a real API server in
tests/test_cluster.py (every overlay and chart variant, KubeVirt's own pods and policies);
no test of the install relies on this module. It stays only because tests/test_plugin.py
reads the socket path from the container the plugin policy adds without a control plane.

cel-python cannot build Kubernetes' typed objects (``Object.spec.containers{...}``,
``JSONPatch{...}``), so ``cel_source`` rewrites each typed construction into a map
literal; ``lastIndexOf``, ``substring`` and the list ``indexOf`` are supplied with
Kubernetes' semantics; ApplyConfiguration is imitated by a merge of list-maps by name.
Where it and the API server differ, the API server is right (they did differ: the server
reinvokes only policies it has invoked, and refuses ApplyConfiguration on atomic fields).

KubeVirt's plugin CEL (a Plugin's ``condition``) is not imitated here: tests/test_plugin.py
runs KubeVirt's own Plugin admitter and evaluator (the ``kvplugin`` peer).
"""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Callable, Iterable
from typing import Any

import celpy
import jsonpatch

_TOKENS = re.compile(
    r'(?P<string>"(?:[^"\\]|\\.)*")'
    r"|(?P<type>[A-Z]\w*(?:\.\w+)*\s*\{)"
    r"|(?P<key>[A-Za-z_]\w*)\s*:"
    r"|(?P<word>[A-Za-z_]\w*)"
    r'|(?P<other>[^"A-Za-z_]+)',
    re.S,
)


def cel_source(expression: str) -> str:
    """``Type.path{field: value}`` becomes ``{"field": value}``; the rest is unchanged.

    The policies use no ``?:`` conditional, whose ``:`` this would misread.
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
    return "".join(out)


def _last_index_of(text: Any, sub: Any) -> Any:
    return celpy.celtypes.IntType(str(text).rfind(str(sub)))


def _substring(text: Any, start: Any, end: Any = None) -> Any:
    value = str(text)
    return celpy.celtypes.StringType(
        value[int(start) :] if end is None else value[int(start) : int(end)]
    )


def _index_of(items: Any, item: Any) -> Any:
    """Kubernetes' list library ``<list>.indexOf(x)`` (the policies use it on lists only)."""
    values = list(items)
    return celpy.celtypes.IntType(values.index(item) if item in values else -1)


# Kubernetes' CEL string and list libraries, for the functions the policies call.
K8S_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "lastIndexOf": _last_index_of,
    "substring": _substring,
    "indexOf": _index_of,
}


def to_json(value: Any) -> Any:
    """A cel-python value as plain JSON data."""
    if isinstance(value, celpy.celtypes.MapType):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (celpy.celtypes.ListType, list)):
        return [to_json(v) for v in value]
    if isinstance(value, celpy.celtypes.BoolType):
        return bool(value)
    if isinstance(value, celpy.celtypes.IntType):
        return int(value)
    if isinstance(value, (celpy.celtypes.StringType, str)):
        return str(value)
    if value is None:
        return None
    raise AssertionError(f"unexpected CEL value {value!r}")


@functools.cache
def _program(expression: str) -> Any:
    """Compiled once per session: the policies are few, the evaluations many."""
    environment = celpy.Environment()
    return environment.program(environment.compile(cel_source(expression)), K8S_FUNCTIONS)


def evaluate(expression: str, **variables: Any) -> Any:
    """Evaluate Kubernetes CEL; variables are JSON data or already cel-python values."""
    program = _program(expression)
    activation = {
        name: value if isinstance(value, celpy.celtypes.MapType) else celpy.json_to_cel(value)  # type: ignore[attr-defined]
        for name, value in variables.items()
    }
    return program.evaluate(activation)


def merge_by_name(target: Any, patch: Any) -> Any:
    """Server-side apply's merge for these fields: maps recursively, list-maps by name."""
    if isinstance(target, dict) and isinstance(patch, dict):
        for name, value in patch.items():
            target[name] = merge_by_name(target[name], value) if name in target else value
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


def params_for(binding: dict[str, Any], objects: Iterable[dict[str, Any]]) -> dict[str, Any]:
    ref = binding["spec"]["paramRef"]
    for obj in objects:
        meta = obj["metadata"]
        if obj["kind"] == "ConfigMap" and (meta["name"], meta.get("namespace")) == (
            ref["name"],
            ref["namespace"],
        ):
            return obj
    raise AssertionError(f"binding {binding['metadata']['name']}: no params {ref}")


def variables_of(policy: dict[str, Any], params: dict[str, Any], pod: dict[str, Any]) -> Any:
    """The policy's variables, in order, each seeing the ones before it."""
    computed: dict[str, Any] = {}
    for variable in policy["spec"].get("variables", []):
        value = evaluate(variable["expression"], variables=computed, object=pod, params=params)
        computed[variable["name"]] = to_json(value)
    return computed


def matches(policy: dict[str, Any], params: dict[str, Any], pod: dict[str, Any]) -> bool:
    """matchConstraints and matchConditions (which see params and variables) for a pod CREATE."""
    spec = policy["spec"]
    constraints = spec["matchConstraints"]
    if not any(
        "pods" in rule["resources"] and "CREATE" in rule["operations"]
        for rule in constraints["resourceRules"]
    ):
        return False
    labels = pod["metadata"].get("labels", {})
    selector = constraints.get("objectSelector", {}).get("matchLabels", {})
    if any(labels.get(k) != v for k, v in selector.items()):
        return False
    computed = variables_of(policy, params, pod)
    return all(
        bool(evaluate(c["expression"], object=pod, params=params, variables=computed))
        for c in spec.get("matchConditions", [])
    )


def mutate(policy: dict[str, Any], params: dict[str, Any], pod: dict[str, Any]) -> dict[str, Any]:
    """One policy's mutations applied to a matching pod."""
    spec = policy["spec"]
    scope: dict[str, Any] = {"object": pod, "params": params}
    computed = variables_of(policy, params, pod)
    result = copy.deepcopy(pod)
    for mutation in spec["mutations"]:
        if mutation["patchType"] == "JSONPatch":
            expression = mutation["jsonPatch"]["expression"]
            operations = to_json(evaluate(expression, variables=computed, **scope))
            result = dict(jsonpatch.apply_patch(result, operations))
        else:
            expression = mutation["applyConfiguration"]["expression"]
            patch = to_json(evaluate(expression, variables=computed, **scope))
            result = merge_by_name(result, patch)
    return dict(result)


def admit(
    objects: list[dict[str, Any]], pod: dict[str, Any], reverse: bool = False
) -> dict[str, Any]:
    """Every MutatingAdmissionPolicy in ``objects`` applied to a pod CREATE.

    Policies run in name order (or reversed: the API server promises no order), then
    those with ``reinvocationPolicy: IfNeeded`` that ran run once more if a later one
    changed the pod, as the API server reinvokes them (never one that did not match).
    """
    policies = sorted(
        (o for o in objects if o["kind"] == "MutatingAdmissionPolicy"),
        key=lambda o: str(o["metadata"]["name"]),
        reverse=reverse,
    )
    bindings = {
        o["spec"]["policyName"]: o for o in objects if o["kind"] == "MutatingAdmissionPolicyBinding"
    }
    current = copy.deepcopy(pod)
    ran: list[tuple[dict[str, Any], dict[str, Any]]] = []
    for policy in policies:
        binding = bindings[policy["metadata"]["name"]]
        params = params_for(binding, objects)
        if matches(policy, params, current):
            after = mutate(policy, params, current)
            ran.append((policy, after))
            current = after
    for policy in policies:
        if policy["spec"].get("reinvocationPolicy") != "IfNeeded":
            continue
        earlier = [after for p, after in ran if p is policy]
        if not earlier or earlier[-1] == current:
            continue
        params = params_for(bindings[policy["metadata"]["name"]], objects)
        if matches(policy, params, current):
            current = mutate(policy, params, current)
    return current
