"""JSON with a bound on nesting depth and number size, for input the hook does not control.

The VMI comes over the socket and DRA metadata from files in the pod; Python's
``json`` recurses once per nesting level (100,000 ``[`` is a RecursionError)
and ``int()`` refuses more than 4,300 digits with a ValueError. Both would
surface as internal errors. Here every such document becomes one
``JsonLimitError`` that names the field where the bound was crossed, decided
on the parsed value, never on the raw bytes.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, NoReturn

from hook_sidecar.errors import InvalidInput

# A VirtualMachineInstance nests about 12 levels deep (spec.domain.devices.disks[0]...);
# kubectl's own limits are far above what KubeVirt writes, so 64 leaves headroom.
MAX_DEPTH = 64
# int64 is 19 digits; Kubernetes has no integer field wider than that.
MAX_NUMBER_CHARS = 40
# Keys are shown in messages; a megabyte of key must not become a megabyte of message.
MAX_KEY_SHOWN = 64


class JsonLimitError(InvalidInput):
    """The document is JSON, but nests too deep, holds a huge number, or is not JSON."""


@dataclass(frozen=True)
class _Rejected:
    """Stands in for a number that cannot be used; the walk below names its field."""

    problem: str


def _parse_int(text: str) -> Any:
    if len(text) > MAX_NUMBER_CHARS:
        return _Rejected(f"a number of {len(text)} characters (at most {MAX_NUMBER_CHARS})")
    return int(text)


def _parse_float(text: str) -> Any:
    if len(text) > MAX_NUMBER_CHARS:
        return _Rejected(f"a number of {len(text)} characters (at most {MAX_NUMBER_CHARS})")
    value = float(text)
    return value if math.isfinite(value) else _Rejected(f"{text}, out of a float's range")


def _parse_constant(text: str) -> Any:
    # NaN and Infinity are not JSON; Go's encoding/json (KubeVirt) never writes them.
    return _Rejected(f"{text}, which is not JSON")


def field_path(path: tuple[str | int, ...]) -> str:
    """``spec.domain.resources.limits["qat.intel.com/generic"]``: how the user names a field."""
    parts: list[str] = []
    for key in path:
        if isinstance(key, str) and len(key) > MAX_KEY_SHOWN:
            key = key[:MAX_KEY_SHOWN] + "..."
        if isinstance(key, int):
            parts.append(f"[{key}]")
        elif key.replace("_", "").isalnum() and key.isascii():
            parts.append(f".{key}" if parts else key)
        else:
            parts.append(f"[{json.dumps(key)}]")
    return "".join(parts) or "(top level)"


def _within_bounds(value: Any, max_depth: int) -> bool:
    """The fast walk, without recursion or paths: runs on every VMI, so it stays cheap."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        for child in node.values() if type(node) is dict else node:
            kind = type(child)
            if kind is dict or kind is list:
                if depth + 1 >= max_depth:
                    return False
                stack.append((child, depth + 1))
            elif kind is _Rejected:
                return False
    return True


def _explain(value: Any, what: str, max_depth: int) -> NoReturn:
    """The slow walk, run once a bound is crossed: finds the field and raises naming it."""
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(value, ())]
    while stack:
        node, path = stack.pop()  # a dict, a list or a _Rejected: nothing else is pushed
        if isinstance(node, _Rejected):
            raise JsonLimitError(f"{what} field {field_path(path)} is {node.problem}")
        children: Any = node.items() if isinstance(node, dict) else enumerate(node)
        if len(path) >= max_depth:
            raise JsonLimitError(
                f"{what} field {field_path(path[:8])}... nests deeper than {max_depth} levels"
            )
        for key, child in children:
            if isinstance(child, (dict, list, _Rejected)):
                stack.append((child, (*path, key)))
    raise JsonLimitError(f"{what} is outside the bounds on depth and numbers")  # never reached


def loads(raw: bytes | str, what: str, max_depth: int = MAX_DEPTH) -> Any:
    """Parse ``raw``; any problem is a ``JsonLimitError`` whose message starts with ``what``."""
    try:
        value = json.loads(
            raw,
            parse_int=_parse_int,
            parse_float=_parse_float,
            parse_constant=_parse_constant,
        )
    except RecursionError:
        raise JsonLimitError(f"{what} nests deeper than {max_depth} levels") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise JsonLimitError(f"{what} is not valid JSON: {err}") from None
    if type(value) is _Rejected or (
        type(value) in (dict, list) and not _within_bounds(value, max_depth)
    ):
        _explain(value, what, max_depth)
    return value
