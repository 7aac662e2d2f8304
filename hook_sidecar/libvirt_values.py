"""Integers and cpusets read the way libvirt reads them, so the hook decides on libvirt's values.

No lxml here: the host CPU -> NUMA node reader in ``sysfs`` parses the
kernel's cpulists with the same ``cpuset``.
"""

from __future__ import annotations

MAX_CPUS = 16384
"""libvirt's own bound on a cpuset (VIR_DOMAIN_CPUMASK_LEN); larger ids are not CPUs."""
MAX_NODES = 1024
MAX_EXPANDED = 1 << 18
"""CPU and node ids one domain may expand to in total: 16 cells' worth of a 16384-CPU host.

Each cpuset alone is bounded by MAX_CPUS, but a domain could repeat
``cpuset="0-16383"`` on thousands of vcpupins; past this budget the rest are
read as invalid.
"""
MAX_INT = (1 << 31) - 1
_C_SPACE = " \t\n\v\f\r"
_DIGITS = {8: frozenset("01234567"), 10: frozenset("0123456789"), 16: frozenset("0123456789abcdef")}


def number(text: str | None, base: int = 10) -> int | None:
    """A non-negative libvirt integer attribute, read as C's ``strtol`` reads it; None if invalid.

    Leading white space and a ``+`` are allowed, nothing may follow the
    digits. ``base`` 0 is libvirt's choice for bus numbers and chassis: ``0x``
    hex, a leading ``0`` octal, else decimal.
    """
    if text is None:
        return None
    body = text.lstrip(_C_SPACE)
    if body.startswith("+"):
        body = body[1:]
    radix = base
    if base == 0 and body[:2] in ("0x", "0X"):
        body, radix = body[2:], 16
    elif base == 0:
        radix = 8 if body.startswith("0") else 10
    if not body or not set(body.lower()) <= _DIGITS[radix]:
        return None
    value = _int(body, radix)
    return value if value is not None and value <= MAX_INT else None


def _int(digits: str, radix: int) -> int | None:
    """``int(digits, radix)``; None past the digits Python converts (far past any limit)."""
    try:
        return int(digits, radix)
    except ValueError:
        return None


def _small(text: str) -> int | None:
    """Decimal digits as an id, None for anything else."""
    return _int(text, 10) if text.isascii() and text.isdigit() else None


class Budget:
    """How many more ids the cpusets of one document may expand to."""

    def __init__(self, left: int = MAX_EXPANDED) -> None:
        self.left = left


def cpuset(
    text: str | None, limit: int = MAX_CPUS, budget: Budget | None = None
) -> frozenset[int] | None:
    """A libvirt cpuset or nodeset (``0-3,^2,8``) as libvirt reads it; None when libvirt refuses it.

    Items apply in order: ``^N`` clears only what was set before it, so
    ``^0,0`` is ``{0}``; a negated range or a sign is refused, and a trailing
    comma ignored, as libvirt does.
    Bounded: ids at or above ``limit`` make the set invalid, and ``budget``
    (when given) caps what a whole document expands to: None once it runs out.
    """
    if text is None or not text.strip(_C_SPACE):
        return None
    ids: set[int] = set()
    # libvirt stops at the end of the text after a comma: "1," is {1}.
    for item in text.rstrip(_C_SPACE).removesuffix(",").split(","):
        body = item.strip(_C_SPACE)
        negated = body.startswith("^")
        first_text, dash, last_text = body[1 if negated else 0 :].partition("-")
        first_text, last_text = first_text.rstrip(_C_SPACE), last_text.lstrip(_C_SPACE)
        first = _small(first_text)
        last = _small(last_text) if dash and not negated else first
        if first is None or last is None or (dash and negated):
            return None
        if last < first or last >= limit:
            return None
        if budget is not None:
            budget.left -= last - first + 1
            if budget.left < 0:
                return None
        if negated:
            ids.discard(first)
        else:
            ids.update(range(first, last + 1))
    return frozenset(ids)
