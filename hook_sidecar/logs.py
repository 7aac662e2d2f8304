"""Logging in KubeVirt's shape, so sidecar lines read naturally beside virt-launcher's.

One JSON object per line on stderr: ``component``, ``level``, ``msg``,
``timestamp`` (RFC 3339, UTC, microseconds), ``pos``, and the structured
fields a call adds (``vmi``, ``devices``, ``source``, ``duration_ms``...).
``--log-format text`` is for people at a terminal.

Log lines quote text the hook was sent (a VMI name, an error message): in
text mode every value is escaped with ``errors.escape`` so a name holding a
newline cannot forge a line; JSON escapes by itself.

grpc's C core logs through absl straight to file descriptor 2 in its own
format ("E1127 13:44:35.357766 9522 file.cc:164] ..."), which would break a
reader expecting one JSON object per line. ``capture_stderr`` points fd 2 at
a pipe and re-emits every line written there as a JSON entry, while the
hook's own handler keeps writing to the real stderr.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
from datetime import datetime, timezone
from typing import Any, BinaryIO, TextIO

from hook_sidecar.errors import escape

COMPONENT = "qat-hook"
LOGGER_NAME = "qat_hook"
MAX_CAPTURED_LINE = 16 * 1024
"""A captured stderr line longer than this is split: a runaway writer cannot grow our memory."""

_LEVELS = {
    logging.DEBUG: "debug",
    logging.INFO: "info",
    logging.WARNING: "warning",
    logging.ERROR: "error",
    logging.CRITICAL: "error",
}
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
# absl's prefix: severity letter, MMDD, time, thread id, file:line]
_ABSL_LINE = re.compile(r"^([IWEF])\d{4} [\d:.]+\s+\d+ ([^\]\s]+)\] ?(.*)$")
_ABSL_LEVELS = {"I": logging.INFO, "W": logging.WARNING, "E": logging.ERROR, "F": logging.CRITICAL}


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {key: value for key, value in vars(record).items() if key not in _STANDARD}


def _timestamp(record: logging.LogRecord) -> str:
    moment = datetime.fromtimestamp(record.created, tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _pos(record: logging.LogRecord) -> str:
    return str(getattr(record, "pos", None) or f"{record.module}.py:{record.lineno}")


class KubeVirtJsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "component": COMPONENT,
            "level": _LEVELS.get(record.levelno, "info"),
            "msg": record.getMessage(),
            "pos": _pos(record),
            "timestamp": _timestamp(record),
        }
        entry.update(_fields(record))
        if record.exc_info:
            entry["reason"] = self.formatException(record.exc_info)
        # ensure_ascii (the default) also writes a lone surrogate as an escape.
        return json.dumps(entry, default=str, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extra = " ".join(
            f"{key}={escape(str(value))}" for key, value in _fields(record).items() if key != "pos"
        )
        line = (
            f"{_timestamp(record)} {_LEVELS.get(record.levelno, 'info'):7} "
            f"{escape(record.getMessage())}"
        )
        if extra:
            line += f" [{extra}]"
        if record.exc_info:
            # Indented, so no line of a traceback can pass for an entry of its own.
            trace = self.formatException(record.exc_info).splitlines()
            line += "".join(f"\n    {escape(part)}" for part in trace)
        return line


class _DroppingHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """While fd 2 is captured, a record that cannot be written is dropped.

    The default reports the failure with a traceback on stderr, which the capture would
    feed back into this handler: with stderr gone, one failure would repeat forever.
    """

    def handleError(self, record: logging.LogRecord) -> None:
        pass


class _StderrCapture:
    """fd 2 -> pipe -> one JSON entry per line, written by the hook's handler to the real stderr."""

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger
        self._saved = os.dup(2)
        read_end, write_end = os.pipe()
        os.dup2(write_end, 2)
        os.close(write_end)
        self.stream: TextIO = open(  # noqa: SIM115 - lives as long as the capture
            os.dup(self._saved), "w", encoding="utf-8", errors="backslashreplace"
        )
        self._pipe: BinaryIO = open(read_end, "rb", buffering=0)  # noqa: SIM115 - closed by the pump
        self._thread = threading.Thread(target=self._pump, name="qat-hook-stderr", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        with self._pipe:
            buffered = b""
            while chunk := self._pipe.read(4096):
                buffered += chunk
                *lines, buffered = buffered.split(b"\n")
                if len(buffered) > MAX_CAPTURED_LINE:
                    lines.append(buffered)
                    buffered = b""
                for line in lines:
                    self._emit(line)
            if buffered:
                self._emit(buffered)

    def _emit(self, raw: bytes) -> None:
        text = raw.decode("utf-8", "backslashreplace").rstrip("\r")
        if not text.strip():
            return
        level, pos = logging.WARNING, "stderr"
        match = _ABSL_LINE.match(text)
        if match:
            level, pos, text = _ABSL_LEVELS[match.group(1)], match.group(2), match.group(3)
        elif text.startswith(("WARNING:", "ERROR:")):  # absl's start-up notice, Python warnings
            level = logging.WARNING if text.startswith("WARNING") else logging.ERROR
        self._logger.log(level, "%s", text, extra={"pos": pos, "stream": "stderr"})

    def close(self, timeout: float) -> None:
        """Give fd 2 back; the pipe then reaches EOF and the pump drains what is left."""
        sys.stderr.flush()
        os.dup2(self._saved, 2)
        os.close(self._saved)
        self._thread.join(timeout)
        self.stream.flush()


_capture: _StderrCapture | None = None


def setup(
    log_format: str = "json", level: str = "info", *, capture_stderr: bool = False
) -> logging.Logger:
    """Configure the hook's logger; repeated calls replace the handler.

    ``capture_stderr`` (JSON mode, in the serving process only) also turns whatever C code writes
    to fd 2 into JSON entries; ``close`` undoes it.
    """
    global _capture
    logger = logging.getLogger(LOGGER_NAME)
    handler: logging.StreamHandler[TextIO]
    if capture_stderr and log_format == "json":
        if _capture is None:
            _capture = _StderrCapture(logger)
        handler = _DroppingHandler(_capture.stream)
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KubeVirtJsonFormatter() if log_format == "json" else TextFormatter())
    logger.handlers[:] = [handler]
    logger.setLevel(level.upper())
    logger.propagate = False
    return logger


def close(timeout: float = 0.5) -> None:
    """Stop capturing fd 2 (re-emitting what is still in the pipe) and flush the handlers."""
    global _capture
    if _capture is not None:
        _capture.close(timeout)
        _capture = None
    for handler in logging.getLogger(LOGGER_NAME).handlers:
        handler.flush()


def get() -> logging.Logger:
    return logging.getLogger(LOGGER_NAME)
