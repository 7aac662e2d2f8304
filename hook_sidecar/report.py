"""How ``qat-hook discover`` shows a ``Discovery``: a short text, or JSON for scripts.

Kept apart from discovery itself so the decision code carries no formatting.
``guest_cells`` is what a transform of a given domain would do with each VF
(``discover --domain``); absent, nothing is said about guest cells. Warnings
are not part of the text: the CLI writes them to stderr, as for ``transform``.
Every line is escaped (``errors.escape``): a detail such as a DRA file name is
not ours and may hold a newline.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hook_sidecar.discovery import Discovery
from hook_sidecar.errors import escape
from hook_sidecar.pci import PciAddress

GuestCells = Mapping[PciAddress, int | None]


def _node_text(discovery: Discovery, address: PciAddress) -> str:
    known = discovery.host_nodes.get(address)
    if known is None or known.node is None:
        why = f" ({known.origin})" if known is not None else ""
        return f"host NUMA node unknown{why}"
    return f"host NUMA node {known.node} ({known.origin})"


def _cell_text(cell: int | None) -> str:
    return "not placed on a guest NUMA cell" if cell is None else f"guest NUMA cell {cell}"


def describe(discovery: Discovery, guest_cells: GuestCells | None = None) -> str:
    """A short human summary, one device per line, each line escaped."""
    lines = []
    if not discovery.wanted:
        lines.append(f"no injection: {discovery.reason}")
    else:
        lines.append(f"inject {len(discovery.devices)} device(s): {discovery.reason}")
        lines.append(f"  source:   {discovery.source} ({discovery.detail})")
        lines.append(f"  expected: {discovery.expected if discovery.expected is not None else '-'}")
        for address in discovery.devices:
            where = _node_text(discovery, address)
            if guest_cells is not None:
                where += f", {_cell_text(guest_cells.get(address))}"
            lines.append(f"  device:   {address}  {where}")
    return "\n".join(escape(line) for line in lines)


def as_json(discovery: Discovery, guest_cells: GuestCells | None = None) -> dict[str, Any]:
    """The same facts as a JSON object (``discover --format json``)."""
    numa = []
    for address in discovery.devices:
        known = discovery.host_nodes.get(address)
        entry: dict[str, Any] = {
            "device": str(address),
            "host_node": None if known is None else known.node,
            "from": None if known is None else known.origin,
        }
        if guest_cells is not None:
            entry["guest_cell"] = guest_cells.get(address)
        numa.append(entry)
    return {
        "wanted": discovery.wanted,
        "reason": discovery.reason,
        "devices": [str(address) for address in discovery.devices],
        "source": discovery.source,
        "detail": discovery.detail,
        "expected": discovery.expected,
        "warnings": list(discovery.warnings),
        "numa": numa,
    }
