"""Messages and log lines stay one safe line whatever text they quote."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hook_sidecar import callbacks, logs
from hook_sidecar.boundedjson import JsonLimitError
from hook_sidecar.errors import (
    MAX_MESSAGE_BYTES,
    HookError,
    InvalidInput,
    PreconditionFailed,
    SetupFailed,
    escape,
    one_line,
    status_code_name,
)
from tests.conftest import ROOT, clean_env


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a\nb", "a\\nb"),
        ("a\r\nb", "a\\r\\nb"),
        ("tab\there", "tab\\there"),
        ("\x1b[31mred", "\\x1b[31mred"),
        ("nul\x00", "nul\\x00"),
        ("del\x7f", "del\\x7f"),
        ("c1\x85", "c1\\x85"),
        ("lone\udc80", "lone\\udc80"),
        ("ls\u2028ps\u2029", "ls\\u2028ps\\u2029"),
        ("plain ünïcode ✓", "plain ünïcode ✓"),
    ],
)
def test_escape(text: str, expected: str) -> None:
    assert escape(text) == expected


@given(st.text())
def test_one_line_is_one_encodable_bounded_line(text: str) -> None:
    line = one_line(text)
    assert len(line.splitlines()) <= 1
    assert len(line.encode("utf-8")) <= MAX_MESSAGE_BYTES  # strict: no lone surrogate survives
    if len(escape(text).encode()) <= MAX_MESSAGE_BYTES:
        assert line == escape(text)  # short text is never cut


def test_one_line_cuts_at_the_limit_and_says_how_much() -> None:
    text = "é" * 5000  # 10,000 bytes: a cut inside a character must not happen
    line = one_line(text)
    assert len(line.encode()) <= MAX_MESSAGE_BYTES
    kept = line.split(" ... [cut: ")[0]
    assert set(kept) == {"é"}
    assert line.endswith(f" ... [cut: {10000 - len(kept.encode())} more bytes]")
    assert len(line.encode()) > MAX_MESSAGE_BYTES - 40  # the room is used, not wasted


def test_hook_error_str_is_one_line() -> None:
    err = PreconditionFailed("VMI ns/evil\nQAT hook: forged asks for " + "x" * 100_000)
    assert "\n" not in str(err)
    assert "ns/evil\\nQAT hook: forged" in str(err)
    assert len(str(err).encode()) <= MAX_MESSAGE_BYTES
    assert str(HookError("fine")) == "fine"


def _record(msg: str, **fields: object) -> logging.LogRecord:
    record = logging.makeLogRecord({"msg": msg, "levelno": logging.INFO, "levelname": "INFO"})
    record.__dict__.update(fields)
    return record


FORGED = "x\n2026-11-27T00:00:00.000000Z error   forged line"


def test_text_format_cannot_be_forged() -> None:
    line = logs.TextFormatter().format(_record(f"call for {FORGED}", vmi=FORGED))
    assert len(line.splitlines()) == 1
    assert line.count("forged line") == 2  # shown, escaped, in the message and the field


def test_text_format_indents_tracebacks() -> None:
    try:
        raise RuntimeError(FORGED)
    except RuntimeError:
        record = _record("failed")
        record.exc_info = sys.exc_info()
    first, *rest = logs.TextFormatter().format(record).splitlines()
    assert first.endswith(" failed")
    assert rest and all(line.startswith("    ") for line in rest)


def test_json_format_is_one_object_per_line_for_any_text() -> None:
    line = logs.KubeVirtJsonFormatter().format(_record(f"bad\udc80{FORGED}", vmi="a\udc80\n"))
    assert len(line.splitlines()) == 1
    entry = json.loads(line)
    assert entry["msg"] == f"bad\udc80{FORGED}"
    assert entry["vmi"] == "a\udc80\n"


CAPTURE_SCRIPT = textwrap.dedent(
    """
    import os, sys
    from hook_sidecar import logs
    logs.setup("json", capture_stderr=True)
    logs.get().info("from the hook")
    # What grpc core writes through absl, and other writers of fd 2:
    os.write(2, b"E1127 13:44:35.357766    9522 posix_engine_listener.cc:164] "
                b"File descriptor limit reached. Retrying.\\n")
    os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called"
                b" are written to STDERR\\n")
    print("a plain print to sys.stderr", file=sys.stderr)
    os.write(2, b"no newline at the end")
    logs.close()
    print("after close", file=sys.stderr)
    """
)


def test_json_mode_turns_everything_on_fd2_into_json() -> None:
    done = subprocess.run(
        [sys.executable, "-c", CAPTURE_SCRIPT],
        capture_output=True,
        env=clean_env(),
        cwd=ROOT,
        timeout=30,
        check=True,
    )
    lines = done.stderr.decode().splitlines()
    assert lines[-1] == "after close"  # fd 2 is given back
    entries = [json.loads(line) for line in lines[:-1]]  # everything else is JSON
    by_msg = {entry["msg"]: entry for entry in entries}
    grpc_line = by_msg["File descriptor limit reached. Retrying."]
    assert (grpc_line["level"], grpc_line["pos"]) == ("error", "posix_engine_listener.cc:164")
    assert grpc_line["component"] == "qat-hook"
    assert by_msg["from the hook"]["level"] == "info"
    assert by_msg["a plain print to sys.stderr"]["stream"] == "stderr"
    assert "no newline at the end" in by_msg
    assert any(msg.startswith("WARNING: All log messages") for msg in by_msg)


# --- the error-to-status mapping: pure, so it is mutation-tested without a server ------------


@pytest.mark.parametrize(
    ("error", "name"),
    [
        (InvalidInput("x"), "INVALID_ARGUMENT"),
        (JsonLimitError("x"), "INVALID_ARGUMENT"),  # subclasses map as their group
        (PreconditionFailed("x"), "FAILED_PRECONDITION"),
        (SetupFailed("x"), "INTERNAL"),
        (HookError("x"), "INTERNAL"),
    ],
)
def test_status_code_name(error: HookError, name: str) -> None:
    assert status_code_name(error) == name
    assert callbacks.status_for(error) is grpc.StatusCode[name]


UNSAFE = [
    *range(0x00, 0x20),
    *range(0x7F, 0xA0),
    *range(0xD800, 0xE000),
    0x2028,
    0x2029,
]


def test_every_unsafe_character_has_its_escape() -> None:
    named = {0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r"}
    for code in UNSAFE:
        expected = named.get(code) or (f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}")
        assert escape(f"<{chr(code)}>") == f"<{expected}>"


def test_neighbours_of_the_unsafe_ranges_are_kept() -> None:
    kept = "".join(map(chr, (0x20, 0x7E, 0xA0, 0xFF, 0x100, 0xD7FF, 0xE000, 0x2027, 0x202A)))
    assert escape(kept) == kept


def test_one_line_keeps_a_message_of_exactly_the_limit() -> None:
    assert one_line("a" * MAX_MESSAGE_BYTES) == "a" * MAX_MESSAGE_BYTES
    assert one_line("abc", limit=3) == "abc"


def test_one_line_cut_never_splits_a_character() -> None:
    text = "a" + "é" * 5000  # 10,001 bytes; the cut at 2,020 bytes falls inside an é
    kept = "a" + "é" * 1009
    assert one_line(text) == kept + f" ... [cut: {10001 - 2019} more bytes]"


def test_one_line_with_no_room_keeps_only_the_mark() -> None:
    assert one_line("x" * 100, limit=10) == " ... [cut: 100 more bytes]"


def test_an_error_has_no_details_unless_given() -> None:
    assert HookError("x").details == ()
    assert PreconditionFailed("x", details=("a", "b")).details == ("a", "b")
    assert str(PreconditionFailed("x", details=("a",))) == "x"
