"""The errors a user can meet, grouped by who has to act, and the shape of their messages.

The grouping is the contract with both front ends: the CLI exits 1 for any
of them, and the gRPC server maps ``InvalidInput`` to INVALID_ARGUMENT and
``PreconditionFailed`` to FAILED_PRECONDITION (``status_code_name``), so
virt-launcher puts the message into the VMI's events unchanged. Messages are
therefore written for the person reading those events: what is wrong and what
to change.

A message often quotes what it was given (a VMI name, a device id from
kubelet, a file name), and that text is not ours: it may hold newlines,
terminal escapes, lone surrogates or a megabyte of anything. grpc carries the
status message in a header that clients refuse past 16 KiB, so a long message
would replace the hook's explanation with ``RESOURCE_EXHAUSTED``. ``one_line``
is the single place that makes any text safe to show; ``str()`` of every
``HookError`` goes through it, and the server passes every status message
through it too.
"""

from __future__ import annotations

import re

MAX_MESSAGE_BYTES = 2048
"""UTF-8 bytes of a message; percent-encoded on the wire it stays far below grpc's 8 KiB."""

# C0 and C1 controls, DEL, lone surrogates (unencodable in UTF-8) and the two
# Unicode line separators that splitlines() and many log viewers honour.
# Compiled by re on first use: most text is printable and never needs it.
_UNSAFE = "[\x00-\x1f\x7f-\x9f\ud800-\udfff\u2028\u2029]"
_CUT_MARK = " ... [cut: {} more bytes]"


def escape(text: str) -> str:
    """``text`` on one line of encodable characters: each unsafe one becomes a visible escape.

    The escape is Python's own (``repr`` of the one character, quotes dropped): ``\\n``,
    ``\\r``, ``\\t``, ``\\xNN`` up to 0xff and ``\\uNNNN`` above.
    """
    if text.isprintable():  # every character _UNSAFE matches is non-printable
        return text
    return re.sub(_UNSAFE, lambda match: repr(match.group())[1:-1], text)


def one_line(text: str, limit: int = MAX_MESSAGE_BYTES) -> str:
    """``text`` escaped and, as a last resort, cut to ``limit`` UTF-8 bytes, saying how much."""
    safe = escape(text)
    encoded = safe.encode()
    if len(encoded) <= limit:
        return safe
    # Reserve room for the mark with the largest count it can show.
    keep = max(limit - len(_CUT_MARK.format(len(encoded))), 0)
    head = encoded[:keep].decode(errors="ignore")  # never half a character
    return head + _CUT_MARK.format(len(encoded) - len(head.encode()))


class HookError(Exception):
    """Base of every error whose message is meant for a user.

    ``details`` are lines a user may want after the message (every place discovery
    looked at): ``qat-hook discover`` prints them, servers log them at debug level.
    """

    def __init__(self, *args: object, details: tuple[str, ...] = ()) -> None:
        super().__init__(*args)
        self.details = details

    def __str__(self) -> str:
        return one_line(super().__str__())


class InvalidInput(HookError):
    """The domain XML, the VMI or a value given to the hook cannot be used as is."""


class PreconditionFailed(HookError):
    """The input is fine, but the node or the configuration does not fit it."""


class SetupFailed(HookError):
    """The server cannot start here (socket path, directory, permissions): fix the deployment."""


def status_code_name(error: HookError) -> str:
    """The gRPC status a front end answers ``error`` with, as its ``grpc.StatusCode`` name.

    A name rather than the enum keeps this module free of grpc, so the mapping is
    tested (and mutation-tested) without it; ``callbacks.status_for`` converts it.
    """
    if isinstance(error, InvalidInput):
        return "INVALID_ARGUMENT"
    if isinstance(error, PreconditionFailed):
        return "FAILED_PRECONDITION"
    return "INTERNAL"
