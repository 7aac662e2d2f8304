"""Both CEL dialects this project writes, evaluated as far as real tools run here.

No API server and no KubeVirt run in the tests, so:

- **Kubernetes CEL** (MutatingAdmissionPolicy): every matchCondition, variable and
  mutation is evaluated for real with cel-python over a captured virt-launcher pod and
  the policy's params ConfigMap. cel-python cannot build Kubernetes' typed objects
  (``Object.spec.containers{...}``, ``JSONPatch{...}``), so ``cel_source`` rewrites each
  typed construction into the CEL map literal with the same fields before compiling;
  everything else (params, variables, filter/map) is evaluated as written. The two
  Kubernetes string-library functions the policies use, ``lastIndexOf`` and
  ``substring``, are supplied with Kubernetes' semantics. The result is applied to the
  pod as the API server would: JSONPatch with the jsonpatch library, ApplyConfiguration
  with a merge of list-maps by name (server-side apply for containers, volumes, env,
  mounts and claims).
- **KubeVirt's plugin CEL** is typed over Go structs (cel-go ``ext.NativeTypes``):
  ``go_view`` builds a Go-named view of a VMI from its JSON with an explicit json->Go
  name map, so an expression that uses a JSON name, or any field outside the map, fails
  here as it fails in KubeVirt.
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


# Kubernetes' CEL string library (ext.Strings), for the functions the policies call.
K8S_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "lastIndexOf": _last_index_of,
    "substring": _substring,
}


def to_json(value: Any) -> Any:
    """A cel-python value as plain JSON data."""
    if isinstance(value, celpy.celtypes.MapType):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, celpy.celtypes.ListType):
        return [to_json(v) for v in value]
    if isinstance(value, celpy.celtypes.BoolType):
        return bool(value)
    if isinstance(value, celpy.celtypes.IntType):
        return int(value)
    if isinstance(value, celpy.celtypes.StringType):
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


def matches(policy: dict[str, Any], pod: dict[str, Any]) -> bool:
    """matchConstraints and matchConditions for a pod CREATE (conditions see no params)."""
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
    return all(bool(evaluate(c["expression"], object=pod)) for c in spec.get("matchConditions", []))


def mutate(policy: dict[str, Any], params: dict[str, Any], pod: dict[str, Any]) -> dict[str, Any]:
    """One policy's mutations applied to a matching pod."""
    spec = policy["spec"]
    scope: dict[str, Any] = {"object": pod, "params": params}
    computed: dict[str, Any] = {}
    for variable in spec.get("variables", []):
        value = evaluate(variable["expression"], variables=computed, **scope)
        computed[variable["name"]] = to_json(value)
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
    those with ``reinvocationPolicy: IfNeeded`` run once more if a later one changed
    the pod, as the API server reinvokes them.
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
        if matches(policy, current):
            after = mutate(policy, params_for(binding, objects), current)
            ran.append((policy, after))
            current = after
    for policy in policies:
        if policy["spec"].get("reinvocationPolicy") != "IfNeeded":
            continue
        earlier = [after for p, after in ran if p is policy]
        if earlier and earlier[-1] == current:
            continue
        if matches(policy, current):
            binding = bindings[policy["metadata"]["name"]]
            current = mutate(policy, params_for(binding, objects), current)
    return current


# --- KubeVirt's plugin CEL ---------------------------------------------------------------

# Go field path -> JSON path, for the VMI fields the Plugin's CEL may use. This mirrors
# KubeVirt's plugin environment (cel-go ext.NativeTypes over v1.VirtualMachineInstance):
# fields carry their Go names, ObjectMeta's fields are promoted (vmi.Annotations, not
# vmi.ObjectMeta.Annotations), and a Go map the JSON leaves out is nil, which CEL reads
# as an empty map. Nothing outside this map exists in the view, so an expression using a
# JSON name (vmi.spec) or an unlisted field fails to evaluate, as it fails to compile in
# KubeVirt.
VMI_GO_FIELDS: dict[str, tuple[str, ...]] = {
    "Name": ("metadata", "name"),
    "Namespace": ("metadata", "namespace"),
    "Labels": ("metadata", "labels"),
    "Annotations": ("metadata", "annotations"),
    "Spec.Domain.Resources.Requests": ("spec", "domain", "resources", "requests"),
    "Spec.Domain.Resources.Limits": ("spec", "domain", "resources", "limits"),
}
_GO_MAPS = {
    "Labels",
    "Annotations",
    "Spec.Domain.Resources.Requests",
    "Spec.Domain.Resources.Limits",
}


def go_view(vmi: dict[str, Any]) -> dict[str, Any]:
    """The VMI as KubeVirt's plugin CEL sees it, for the fields in ``VMI_GO_FIELDS``."""
    view: dict[str, Any] = {}
    for go_path, json_path in VMI_GO_FIELDS.items():
        value: Any = vmi
        for part in json_path:
            value = value.get(part) if isinstance(value, dict) else None
        if value is None:
            value = {} if go_path in _GO_MAPS else ""
        *parents, leaf = go_path.split(".")
        node = view
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    return view


def undefined_vmi_fields(expression: str) -> list[str]:
    """Field paths under ``vmi`` that the Go-named view does not define.

    cel-go type-checks field selections when the expression compiles; cel-python does
    not (``has(vmi.spec)`` is simply false over a map), so this check does it here.
    """
    code = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expression)
    known = {tuple(path.split(".")) for path in VMI_GO_FIELDS}
    prefixes = {path[:i] for path in known for i in range(1, len(path) + 1)}
    undefined = []
    for match in re.finditer(r"(?<![.\w])vmi((?:\s*\.\s*[A-Za-z_]\w*)+)(\s*\()?", code):
        segments = tuple(s.strip() for s in match.group(1).split(".")[1:])
        if match.group(2):  # the last segment is a method: exists(), size(), ...
            segments = segments[:-1]
        if segments and segments not in prefixes:
            undefined.append("vmi." + ".".join(segments))
    return undefined


def plugin_condition(expression: str, vmi: dict[str, Any]) -> bool:
    """A Plugin condition over a VMI; a non-bool result fails, as KubeVirt requires bool."""
    undefined = undefined_vmi_fields(expression)
    assert not undefined, f"undefined field(s) {undefined}: not Go names of the VMI"
    environment = celpy.Environment()
    program = environment.program(environment.compile(expression))
    result = program.evaluate({"vmi": celpy.json_to_cel(go_view(vmi))})  # type: ignore[attr-defined]
    assert isinstance(result, celpy.celtypes.BoolType), f"condition returned {result!r}"
    return bool(result)


_KUBEVIRT_VARIABLES = {"vmi", "domainSpec"}
_CEL_WORDS = {"true", "false", "null", "in", "has"}


def kubevirt_cel_problems(expression: str) -> list[str]:
    """What keeps a KubeVirt plugin expression from compiling in KubeVirt's environment.

    Only ``vmi`` and ``domainSpec`` exist, and both are Go structs: the first segment
    after them is an exported (upper-case) Go field name.
    """
    code = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expression)
    bound = set(re.findall(r"\.\w+\(\s*([A-Za-z_]\w*)\s*,", code))  # comprehension vars
    problems = []
    for name in re.findall(r"(?<![.\w])([A-Za-z_]\w*)(?!\s*\()", code):
        if name not in _KUBEVIRT_VARIABLES | _CEL_WORDS | bound:
            problems.append(f"unknown variable {name!r} (only vmi and domainSpec exist)")
    for variable, field in re.findall(r"(?<![.\w])(vmi|domainSpec)\.([A-Za-z_]\w*)", code):
        if not field[0].isupper():
            problems.append(f"{variable}.{field}: a JSON name; KubeVirt uses Go field names")
    return problems
