"""Logging in KubeVirt's shape, so sidecar lines read naturally beside virt-launcher's.

One JSON object per line on stderr: ``component``, ``level``, ``msg``,
``timestamp`` (RFC 3339, UTC, microseconds), ``pos``, and the structured
fields a call adds (``vmi``, ``devices``, ``source``, ``duration_ms``...).
``--log-format text`` is for people at a terminal.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone
from typing import Any

COMPONENT = "qat-hook"
LOGGER_NAME = "qat_hook"

_LEVELS = {
    logging.DEBUG: "debug",
    logging.INFO: "info",
    logging.WARNING: "warning",
    logging.ERROR: "error",
    logging.CRITICAL: "error",
}
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {key: value for key, value in vars(record).items() if key not in _STANDARD}


def _timestamp(record: logging.LogRecord) -> str:
    moment = datetime.fromtimestamp(record.created, tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class KubeVirtJsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "component": COMPONENT,
            "level": _LEVELS.get(record.levelno, "info"),
            "msg": record.getMessage(),
            "pos": f"{record.module}.py:{record.lineno}",
            "timestamp": _timestamp(record),
        }
        entry.update(_fields(record))
        if record.exc_info:
            entry["reason"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extra = " ".join(f"{key}={value}" for key, value in _fields(record).items())
        line = f"{_timestamp(record)} {_LEVELS.get(record.levelno, 'info'):7} {record.getMessage()}"
        if extra:
            line += f" [{extra}]"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def setup(log_format: str = "json", level: str = "info") -> logging.Logger:
    """Configure the hook's logger once; repeated calls replace the handler."""
    logger = logging.getLogger(LOGGER_NAME)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KubeVirtJsonFormatter() if log_format == "json" else TextFormatter())
    logger.handlers[:] = [handler]
    logger.setLevel(level.upper())
    logger.propagate = False
    return logger


def get() -> logging.Logger:
    return logging.getLogger(LOGGER_NAME)
