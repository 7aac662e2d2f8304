"""JSON read within bounds on nesting, numbers and value count, for input the hook does not control.

The VMI comes over the socket and DRA metadata from files in the pod. Python's
``json`` builds the whole document before anyone can look at it: a few MiB of
``[{},{},...]`` become gigabytes of dicts, 100,000 ``[`` a RecursionError, and
a 5,000-digit number a ValueError. The bounds are kept two ways:

* the counting reader (``counting_loads``): the standard library's own scanner
  (``json.scanner.py_make_scanner``, which asks the decoder for every object,
  array, key and number) with each of those steps counted as it happens, so a
  document is refused at the first value past a bound, before the rest of it is
  built. Every refusal is one ``JsonLimitError`` naming the field where the
  bound was crossed.
* ``loads`` first counts the characters that can start a value (``[ { , :``, in C):
  one more than that is at least the number of values the counting reader would
  count, so when it is within the bound the C scanner reads the document (15
  times faster), its number and constant hooks checking what they are given. A
  document it reads with every bound kept is the counting reader's result; any
  other (a bound crossed, not JSON) is read again by the counting reader, which
  words the refusal. Either way the result, or the refusal, is the same.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from json import scanner
from typing import Any

from hook_sidecar.errors import InvalidInput

# A VirtualMachineInstance nests about 12 levels deep (spec.domain.devices.disks[0]...);
# kubectl's own limits are far above what KubeVirt writes, so 64 leaves headroom.
MAX_DEPTH = 64
# int64 is 19 digits; Kubernetes has no integer field wider than that.
MAX_NUMBER_CHARS = 40
MAX_VALUES = 50_000
"""Objects, arrays, keys, strings, numbers and literals together. A real VMI holds a few
hundred (KubeVirt's converter fixtures: 58 to 101); each costs Python 50-100 bytes, so
the bound keeps any accepted document's objects under about 10 MiB."""
# Keys are shown in messages; a megabyte of key must not become a megabyte of message.
MAX_KEY_SHOWN = 64
_PATH_SHOWN = 8

Scan = Callable[[str, int], tuple[Any, int]]


class JsonLimitError(InvalidInput):
    """The document nests too deep, holds a huge number or too many values, or is not JSON."""


class NotJson(JsonLimitError):
    """The document is not JSON at all; ``at_start`` when not even its first character is."""

    def __init__(self, message: str, at_start: bool = False) -> None:
        super().__init__(message)
        self.at_start = at_start


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


class _Reading:
    """One document being read: where the scanner is, and how much it has built so far."""

    def __init__(self, what: str, max_depth: int, max_values: int) -> None:
        self.what = what
        self.max_depth = max_depth
        self.max_values = max_values
        self.values = 0
        self.path: list[str | int] = []
        """The key or index of the value being read, one per open container."""

    def field(self) -> str:
        return field_path(tuple(self.path))

    def count(self) -> None:
        self.values += 1
        if self.values > self.max_values:
            raise JsonLimitError(
                f"{self.what} holds more than {self.max_values} JSON values (counted up to "
                f"field {self.field()}); no real one has that many"
            )

    def open(self) -> None:
        """A container starts; refused if it would be one level too many."""
        if len(self.path) >= self.max_depth:
            shown = field_path(tuple(self.path[:_PATH_SHOWN]))
            raise JsonLimitError(
                f"{self.what} field {shown}... nests deeper than {self.max_depth} levels"
            )

    def number(self, text: str, kind: Callable[[str], Any]) -> Any:
        # The pure-Python scanner's \d also matches other scripts' digits, which JSON
        # (and the C scanner) does not take.
        if not text.isascii():
            raise NotJson(
                f"{self.what} is not valid JSON: field {self.field()} has non-ASCII digits"
            )
        if len(text) > MAX_NUMBER_CHARS:
            raise JsonLimitError(
                f"{self.what} field {self.field()} is a number of {len(text)} characters "
                f"(at most {MAX_NUMBER_CHARS})"
            )
        value = kind(text)
        if isinstance(value, float) and not math.isfinite(value):
            raise JsonLimitError(
                f"{self.what} field {self.field()} is {text}, out of a float's range"
            )
        return value

    def constant(self, text: str) -> Any:
        # NaN and Infinity are not JSON; Go's encoding/json (KubeVirt) never writes them.
        raise JsonLimitError(f"{self.what} field {self.field()} is {text}, which is not JSON")


class _KeyMemo(dict):  # type: ignore[type-arg]
    """The decoder's key memo, which the scanner calls once per key just before its value."""

    def __init__(self, reading: _Reading) -> None:
        super().__init__()
        self.reading = reading

    def setdefault(self, key: Any, default: Any = None) -> Any:
        self.reading.path[-1] = key  # a bound crossed here names this key
        self.reading.count()
        return super().setdefault(key, default)


def _decoder(reading: _Reading) -> json.JSONDecoder:
    """A decoder whose scanner reports every container, key and value to ``reading``."""
    decoder: Any = json.JSONDecoder(
        parse_int=lambda text: reading.number(text, int),
        parse_float=lambda text: reading.number(text, float),
        parse_constant=reading.constant,
    )
    base_object, base_array = decoder.parse_object, decoder.parse_array

    def counted(scan_once: Scan) -> Scan:
        def member(text: str, end: int) -> tuple[Any, int]:
            reading.count()
            return scan_once(text, end)

        return member

    def parse_object(
        s_and_end: tuple[str, int],
        strict: bool,
        scan_once: Scan,
        object_hook: Any,
        pairs_hook: Any,
        memo: Any,
    ) -> Any:
        reading.open()
        reading.path.append("")
        try:
            return base_object(s_and_end, strict, counted(scan_once), object_hook, pairs_hook, memo)
        finally:
            reading.path.pop()

    def parse_array(s_and_end: tuple[str, int], scan_once: Scan) -> Any:
        reading.open()
        reading.path.append(-1)

        def element(text: str, end: int) -> tuple[Any, int]:
            reading.path[-1] = int(reading.path[-1]) + 1
            reading.count()
            return scan_once(text, end)

        try:
            return base_array(s_and_end, element)
        finally:
            reading.path.pop()

    decoder.parse_object = parse_object
    decoder.parse_array = parse_array
    decoder.memo = _KeyMemo(reading)
    # The pure-Python scanner (typeshed lists only make_scanner): the C one calls no hook.
    decoder.scan_once = scanner.py_make_scanner(decoder)  # type: ignore[attr-defined]
    result: json.JSONDecoder = decoder
    return result


class _Unsure(Exception):
    """The quick read met something only the counting reader may accept or word."""


def _quick_number(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def number(text: str) -> Any:
        if len(text) > MAX_NUMBER_CHARS:
            raise _Unsure
        value = kind(text)
        if isinstance(value, float) and not math.isfinite(value):
            raise _Unsure
        return value

    return number


def _quick_constant(text: str) -> Any:
    raise _Unsure


# The C scanner (json.JSONDecoder's default): it calls these for every number and for
# NaN/Infinity, and reads digits only in ASCII.
_QUICK = json.JSONDecoder(
    parse_int=_quick_number(int),
    parse_float=_quick_number(float),
    parse_constant=_quick_constant,
)


def _depth_within(value: Any, max_depth: int) -> bool:
    """Whether ``value`` nests at most ``max_depth`` containers deep, level by level."""
    level = [value] if type(value) in (dict, list) else []
    for _ in range(max_depth):
        below = []
        for container in level:
            for item in container.values() if type(container) is dict else container:
                if type(item) is list or type(item) is dict:
                    below.append(item)
        if not below:
            return True
        level = below
    return not level


# bytes.translate deletes these in one pass in C: what is left is the bytes counted.
_ALL_BUT_VALUE_STARTS = bytes(sorted(set(range(256)) - set(b"[{,:")))
_ALL_BUT_CONTAINERS = bytes(sorted(set(range(256)) - set(b"[{")))


def _quick(raw: bytes | str, text: str, max_depth: int, max_values: int) -> tuple[bool, Any]:
    """``(True, value)`` when the C scanner reads ``text`` within every bound; else not done.

    Every value but the document itself follows one of ``[ { , :`` (an array's first
    element, an object's first key, any later element or key, a key's value), so
    their count, strings included, bounds the values the counting reader would count
    before it stopped, whatever follows. They are counted as bytes of ``raw``: in
    UTF-8, -16 and -32 each such character holds its byte, so the count only errs
    high. Containers nest at most as deep as there are ``[`` and ``{``; a document
    with more is measured once built.
    """
    data = text.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    if 1 + len(data.translate(None, _ALL_BUT_VALUE_STARTS)) > max_values:
        return False, None
    try:
        value = _QUICK.decode(text)
    except (ValueError, RecursionError, _Unsure):
        return False, None
    if len(data.translate(None, _ALL_BUT_CONTAINERS)) > max_depth and not _depth_within(
        value, max_depth
    ):
        return False, None
    return True, value


def _text(raw: bytes | str, what: str) -> str:
    """The document as text, decoded as ``json.loads`` decodes bytes."""
    try:
        if isinstance(raw, str):
            if raw.startswith("\ufeff"):
                raise ValueError("Unexpected UTF-8 BOM")
            return raw
        return raw.decode(json.detect_encoding(raw), "surrogatepass")
    except ValueError as err:  # UnicodeDecodeError too
        raise NotJson(f"{what} is not valid JSON: {err}") from None


def loads(
    raw: bytes | str, what: str, max_depth: int = MAX_DEPTH, max_values: int = MAX_VALUES
) -> Any:
    """Parse ``raw``; any problem is a ``JsonLimitError`` whose message starts with ``what``.

    Memory stays within the decoded text plus ``max_values`` small objects, whatever
    the document holds. The same result or refusal as ``counting_loads``, faster.
    """
    text = _text(raw, what)
    done, value = _quick(raw, text, max_depth, max_values)
    return value if done else _counted(text, what, max_depth, max_values)


def counting_loads(
    raw: bytes | str, what: str, max_depth: int = MAX_DEPTH, max_values: int = MAX_VALUES
) -> Any:
    """``loads`` by the counting reader alone: every value counted as it is read."""
    return _counted(_text(raw, what), what, max_depth, max_values)


def _counted(text: str, what: str, max_depth: int, max_values: int) -> Any:
    try:
        reading = _Reading(what, max_depth, max_values)
        reading.count()
        return _decoder(reading).decode(text)
    except RecursionError:  # only if the caller's max_depth is beyond Python's stack
        raise JsonLimitError(f"{what} nests deeper than Python can read") from None
    except json.JSONDecodeError as err:
        at_start = err.pos == len(err.doc) - len(err.doc.lstrip(" \t\n\r"))
        raise NotJson(f"{what} is not valid JSON: {err}", at_start) from None
    except ValueError as err:  # int() past sys.get_int_max_str_digits, say
        raise NotJson(f"{what} is not valid JSON: {err}") from None
