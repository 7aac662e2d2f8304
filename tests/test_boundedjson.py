"""Bounded JSON: the exact field names and messages, at and around each bound."""

from __future__ import annotations

import json
from json import scanner
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hook_sidecar import boundedjson
from hook_sidecar.boundedjson import (
    MAX_NUMBER_CHARS,
    MAX_VALUES,
    JsonLimitError,
    NotJson,
    field_path,
)
from tests.conftest import EXAMPLES
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
        (b"[" * 100_000, "VMI field [0][0][0][0][0][0][0][0]... nests deeper than 64 levels"),
        (b'{"a": [1, 1\xd9\xa1]}', "VMI is not valid JSON: field a[1] has non-ASCII digits"),
        (
            b"[" + b"0," * MAX_VALUES + b"0]",
            f"VMI holds more than {MAX_VALUES} JSON values (counted up to field [49999]); "
            "no real one has that many",
        ),
        (
            json.dumps({"m": {f"k{i}": None for i in range(MAX_VALUES)}}).encode(),
            f"VMI holds more than {MAX_VALUES} JSON values (counted up to field m.k24998); "
            "no real one has that many",
        ),
        (  # a number at the bound and a float are read on the way to the refusal
            b'{"n": [' + b"9" * MAX_NUMBER_CHARS + b', 1.5], "x": NaN}',
            "VMI field x is NaN, which is not JSON",
        ),
    ],
)
def test_loads_messages_in_full(raw: bytes, message: str) -> None:
    with pytest.raises(JsonLimitError) as info:
        boundedjson.loads(raw, "VMI")
    assert str(info.value) == message


@pytest.mark.parametrize("read", [boundedjson.loads, boundedjson.counting_loads])
def test_a_bom_in_text_is_refused_in_full(read: Any) -> None:
    with pytest.raises(NotJson) as info:
        read("\ufeff{}", "VMI")
    assert str(info.value) == "VMI is not valid JSON: Unexpected UTF-8 BOM"


@pytest.mark.parametrize(
    "raw",
    [
        '["\ud800"]',
        b'["\xed\xa0\x80"]',
        '["\ud800"]'.encode("utf-16-le", "surrogatepass"),
    ],
)
def test_a_lone_surrogate_is_read_as_json_loads_reads_it(raw: bytes | str) -> None:
    assert json.loads(raw) == ["\ud800"]
    assert boundedjson.loads(raw, "VMI") == ["\ud800"]
    assert boundedjson.counting_loads(raw, "VMI") == ["\ud800"]


def test_a_scalar_document_is_returned() -> None:
    assert boundedjson.loads(b"12", "VMI") == 12
    assert boundedjson.loads(b'"x"', "VMI") == "x"


def test_values_at_the_bound_are_read() -> None:
    """The top-level array and its elements: MAX_VALUES values in all."""
    assert len(boundedjson.loads(b"[" + b"0," * (MAX_VALUES - 2) + b"0]", "VMI")) == MAX_VALUES - 1
    keys = {f"k{i}": None for i in range((MAX_VALUES - 1) // 2)}  # each key and value count
    assert boundedjson.loads(json.dumps(keys), "VMI") == keys


def test_the_value_bound_stops_the_reading_where_it_is_crossed() -> None:
    """What follows the value past the bound is never read: here it is not even JSON."""
    raw = b"[" + b"{}," * MAX_VALUES + b" this is not JSON"
    with pytest.raises(JsonLimitError, match="holds more than"):
        boundedjson.loads(raw, "VMI")


def test_a_depth_beyond_pythons_stack_is_refused_too() -> None:
    with pytest.raises(JsonLimitError) as info:
        boundedjson.loads(b"[" * 100_000, "VMI", max_depth=10**6)
    assert str(info.value) == "VMI nests deeper than Python can read"


def test_a_caller_sets_its_own_bounds() -> None:
    assert boundedjson.loads(b"[[1]]", "file", max_depth=2, max_values=3) == [[1]]
    with pytest.raises(JsonLimitError, match="file holds more than 2 JSON values"):
        boundedjson.loads(b"[[1]]", "file", max_values=2)
    with pytest.raises(JsonLimitError, match="file holds more than 1 JSON values"):
        boundedjson.loads(b'{"a": 1}', "file", max_values=1)  # crossed at an object's first key
    with pytest.raises(JsonLimitError) as info:
        boundedjson.loads(b'{"spec": {"a": 1}}', "VMI", max_values=3)
    assert str(info.value) == (  # the key being read, at a first key as at any other
        "VMI holds more than 3 JSON values (counted up to field spec.a); no real one has that many"
    )
    with pytest.raises(JsonLimitError, match=r"file field \[0\]... nests deeper than 1 levels"):
        boundedjson.loads(b"[[1]]", "file", max_depth=1)


@pytest.mark.parametrize(
    ("raw", "at_start"),
    [
        (b"apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\n", True),
        (b"  \n---\n", True),
        (b"\t\r\napiVersion: v1", True),
        (b"", True),
        (b'{"a": }', False),
        (b'{"a": 1} x', False),
        ("\ufeff{}", False),
    ],
)
def test_not_json_says_whether_even_the_first_character_is_not(raw: Any, at_start: bool) -> None:
    with pytest.raises(NotJson) as info:
        boundedjson.loads(raw, "VMI")
    assert info.value.at_start is at_start
    assert str(info.value).startswith("VMI is not valid JSON: ")


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**30), 10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=5), inner, max_size=5)
    ),
    max_leaves=40,
)


@settings(max_examples=300, deadline=None)
@given(JSON_VALUES, st.sampled_from([None, 0, 2]))
def test_within_bounds_a_document_reads_as_the_standard_library_reads_it(
    value: Any, indent: int | None
) -> None:
    text = json.dumps(value, indent=indent)
    assert boundedjson.loads(text, "VMI") == json.loads(text)
    assert boundedjson.loads(text.encode("utf-16"), "VMI") == json.loads(text.encode("utf-16"))


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet='[]{}",:0123456789.eE+-truefalsnNI \\u\n', max_size=30))
def test_any_text_reads_as_the_standard_library_or_is_refused(text: str) -> None:
    try:
        expected = json.loads(text)
    except (ValueError, RecursionError):
        with pytest.raises(JsonLimitError):
            boundedjson.loads(text, "VMI")
        return
    try:
        assert boundedjson.loads(text, "VMI") == expected
    except JsonLimitError as err:  # only the bounds the standard library does not have
        assert "NaN" in str(err) or "Infinity" in str(err) or "float's range" in str(err)


def outcome(read: Any, raw: Any, max_depth: int, max_values: int) -> tuple[Any, ...]:
    """What a reader makes of ``raw``: the value as JSON text (types kept), or the refusal."""
    try:
        return ("value", json.dumps(read(raw, "VMI", max_depth, max_values)))
    except NotJson as err:
        return ("NotJson", str(err), err.at_start)
    except JsonLimitError as err:
        return (type(err).__name__, str(err))


JSONISH = st.text(alphabet='[]{}",:0123456789.eE+-truefalsnNIity \\u\n\t\ufeff\u0661', max_size=40)


@settings(max_examples=1500, deadline=None)
@given(
    JSONISH | JSON_VALUES.map(json.dumps) | JSON_VALUES.map(lambda v: json.dumps(v, indent=1)),
    st.integers(0, 6),
    st.integers(1, 40),
    st.sampled_from([None, "utf-8", "utf-16", "utf-32-be"]),
)
def test_loads_gives_the_counting_readers_result_or_refusal_for_any_input(
    text: str, max_depth: int, max_values: int, encoding: str | None
) -> None:
    raw: Any = text.encode(encoding, "surrogatepass") if encoding else text
    assert outcome(boundedjson.loads, raw, max_depth, max_values) == outcome(
        boundedjson.counting_loads, raw, max_depth, max_values
    )


@pytest.mark.parametrize(
    "raw",
    [
        (EXAMPLES / "vmi.json").read_bytes(),
        json.dumps({"spec": {"x": nested(64)}}).encode(),
        json.dumps({"spec": {"x": nested(65)}}).encode(),
        b"[" + b"0," * (MAX_VALUES - 2) + b"0]",
        b"[" + b"0," * (MAX_VALUES - 1) + b"0]",
        b"[" + b"{}," * MAX_VALUES + b" this is not JSON",
        b"[" + b"1" * 41 + b"]",
        b"[" + b"1" * 40 + b", 1e400]",
        b'{"a": [1, NaN]}',
        b'{"a": [1, 1\xd9\xa1]}',
        b"[" * 100_000,
        b"\xef\xbb\xbf\xef\xbb\xbf{}",
        b"\xff\xfe{\x00}\x00",
        json.dumps({f"k{i}": [[]] for i in range(200)}).encode(),
    ],
)
def test_loads_and_the_counting_reader_agree_at_the_bounds(raw: bytes) -> None:
    assert outcome(boundedjson.loads, raw, 64, MAX_VALUES) == outcome(
        boundedjson.counting_loads, raw, 64, MAX_VALUES
    )


@pytest.fixture
def counting_reads(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """The decoders the counting reader builds its pure-Python scanner for, one per read."""
    built: list[object] = []
    make_scanner = vars(scanner)["py_make_scanner"]

    def recording(decoder: object) -> Any:
        built.append(decoder)
        return make_scanner(decoder)

    monkeypatch.setattr(scanner, "py_make_scanner", recording)
    return built


@pytest.mark.parametrize(
    ("raw", "max_depth", "max_values"),
    [
        ((EXAMPLES / "vmi.json").read_bytes(), 64, MAX_VALUES),
        # 401 containers, 3 levels deep: measured once built
        (json.dumps({f"k{i}": [[]] for i in range(200)}).encode(), 64, MAX_VALUES),
        (b"[[1]]", 2, 3),  # at both bounds
        (b"[" + b"9" * MAX_NUMBER_CHARS + b", 1.5, -2e-3]", 64, MAX_VALUES),
        ('"[{"', 0, MAX_VALUES),  # brackets in a string are no container
    ],
)
def test_a_document_within_every_bound_is_read_by_the_c_scanner_alone(
    counting_reads: list[object], raw: bytes | str, max_depth: int, max_values: int
) -> None:
    assert boundedjson.loads(raw, "VMI", max_depth, max_values) == json.loads(raw)
    assert counting_reads == []


def test_a_document_past_a_bound_is_read_again_by_the_counting_reader(
    counting_reads: list[object],
) -> None:
    with pytest.raises(JsonLimitError, match="nests deeper than 1 levels"):
        boundedjson.loads(b"[[1]]", "file", max_depth=1)
    assert len(counting_reads) == 1
