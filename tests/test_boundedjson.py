"""Bounded JSON: the exact field names and messages, at and around each bound."""

from __future__ import annotations

import json

import pytest

from hook_sidecar import boundedjson
from hook_sidecar.boundedjson import JsonLimitError, field_path
from tests.test_vmi import nested


@pytest.mark.parametrize(
    ("path", "text"),
    [
        ((), "(top level)"),
        (("spec",), "spec"),
        (("spec", "domain", 0, "a_b"), "spec.domain[0].a_b"),
        ((0, "x"), "[0].x"),
        (("spec", "_"), 'spec["_"]'),
        (("spec", ""), 'spec[""]'),
        (("limits", "qat.intel.com/generic"), 'limits["qat.intel.com/generic"]'),
        (("é",), '["\\u00e9"]'),
        (("a" * 64,), "a" * 64),
        (("a" * 65,), '["' + "a" * 64 + '..."]'),
    ],
)
def test_field_path(path: tuple[str | int, ...], text: str) -> None:
    assert field_path(path) == text


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"NaN", "VMI field (top level) is NaN, which is not JSON"),
        (b"[1, -Infinity]", "VMI field [1] is -Infinity, which is not JSON"),
        (
            json.dumps({"spec": {"x": nested(70)}}).encode(),
            "VMI field spec.x[0][0][0][0][0][0]... nests deeper than 64 levels",
        ),
        (b"[" * 100_000, "VMI nests deeper than 64 levels"),
    ],
)
def test_loads_messages_in_full(raw: bytes, message: str) -> None:
    with pytest.raises(JsonLimitError) as info:
        boundedjson.loads(raw, "VMI")
    assert str(info.value) == message


def test_a_scalar_document_is_returned() -> None:
    assert boundedjson.loads(b"12", "VMI") == 12
    assert boundedjson.loads(b'"x"', "VMI") == "x"


def test_explain_has_a_message_even_within_bounds() -> None:
    """The fallback of the slow walk, should the fast one ever disagree with it."""
    with pytest.raises(JsonLimitError) as info:
        boundedjson._explain({"a": [1]}, "VMI", 64)
    assert str(info.value) == "VMI is outside the bounds on depth and numbers"
