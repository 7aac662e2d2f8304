"""PCI addresses as a value type.

Every source the hook reads (device-plugin variables, DRA metadata, kubelet,
operator flags) spells addresses slightly differently; normalising them in one
place is what lets the transform compare a discovered VF with a ``<hostdev>``
that KubeVirt or an earlier run already wrote.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from hook_sidecar.errors import InvalidInput

_ADDRESS_RE = re.compile(
    r"^(?:(?P<domain>[0-9a-fA-F]{1,4}):)?(?P<bus>[0-9a-fA-F]{1,2}):"
    r"(?P<slot>[0-9a-fA-F]{1,2})\.(?P<function>[0-9a-fA-F])$"
)

ACCEPTED_FORMS = "DDDD:BB:SS.F or BB:SS.F in hex, for example 0000:3d:02.2 or 3d:02.2"

MAX_DOMAIN = 0xFFFF
MAX_BUS = 0xFF
MAX_SLOT = 0x1F
MAX_FUNCTION = 7


class PciAddressError(InvalidInput):
    """A PCI address that cannot be used; the message names the value and the fix."""


class _Fields(NamedTuple):
    domain: int
    bus: int
    slot: int
    function: int


class PciAddress(_Fields):
    """A PCI address (domain, bus, slot, function), ordered as the kernel lists them.

    A NamedTuple, as every value type here: a dataclass costs about 0.5 ms to create
    at import, paid by every sidecar start and every shim call (docs/performance.md).
    """

    __slots__ = ()

    def __new__(cls, domain: int, bus: int, slot: int, function: int) -> PciAddress:
        for name, value, limit in (
            ("domain", domain, MAX_DOMAIN),
            ("bus", bus, MAX_BUS),
            ("slot", slot, MAX_SLOT),
            ("function", function, MAX_FUNCTION),
        ):
            if not 0 <= value <= limit:
                raise PciAddressError(f"PCI {name} {value:#x} is out of range (0 to {limit:#x})")
        return super().__new__(cls, domain, bus, slot, function)

    @classmethod
    def parse(cls, text: str) -> PciAddress:
        """Parse ``DDDD:BB:SS.F`` or ``BB:SS.F`` (domain 0), hex in any case."""
        match = _ADDRESS_RE.match(text.strip())
        if match is None:
            raise PciAddressError(f"{text!r} is not a PCI address; expected {ACCEPTED_FORMS}")
        try:
            return cls(
                domain=int(match["domain"] or "0", 16),
                bus=int(match["bus"], 16),
                slot=int(match["slot"], 16),
                function=int(match["function"], 16),
            )
        except PciAddressError as err:
            raise PciAddressError(f"{text.strip()!r}: {err}") from None

    @classmethod
    def from_libvirt(cls, attrs: dict[str, str]) -> PciAddress:
        """Read libvirt's ``<address domain= bus= slot= function=>`` attributes.

        libvirt accepts hex with ``0x`` and plain decimal; missing parts are 0.
        """
        values = {}
        for name in ("domain", "bus", "slot", "function"):
            raw = attrs.get(name, "0").strip()
            try:
                values[name] = _c_integer(raw)
            except ValueError:
                raise PciAddressError(
                    f"PCI {name} {raw!r} is not a number (libvirt wants 0x-prefixed hex)"
                ) from None
        return cls(**values)

    def __str__(self) -> str:
        return f"{self.domain:04x}:{self.bus:02x}:{self.slot:02x}.{self.function:x}"

    def libvirt_attributes(self) -> dict[str, str]:
        """The attribute values of a libvirt ``<address>`` element, in libvirt's order."""
        return {
            "domain": f"0x{self.domain:04x}",
            "bus": f"0x{self.bus:02x}",
            "slot": f"0x{self.slot:02x}",
            "function": f"0x{self.function:x}",
        }


def _c_integer(text: str) -> int:
    """Read an integer as libvirt's strtoul(base 0) does: 0x hex, leading-0 octal, decimal."""
    lowered = text.lower()
    if lowered.startswith("0x"):
        return int(lowered[2:], 16)
    if len(lowered) > 1 and lowered.startswith("0"):
        return int(lowered[1:], 8)
    return int(lowered)
