#!/usr/bin/env python3
"""What guest NUMA placement adds to the transform, on KubeVirt's guest-NUMA domain.

The domain is what KubeVirt's converter wrote for a ``guestMappingPassthrough``
VMI (``examples/numa/domain.xml``); two VFs on host nodes 0 and 1 are added
with ``numa_placement="auto"`` (expander buses, root ports, guest addresses)
and with ``"off"`` (today's root-complex hostdevs). Each round times a batch of
both back to back, so the ratio is the median of per-round ratios and a noisy
shared machine slows both sides alike. ``place()`` alone is timed too: the
decision without the parse and serialise around it.

    python benchmarks/bench_numa.py [--rounds N] [--batch N] [--json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from lxml import etree

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hook_sidecar import numa  # noqa: E402
from hook_sidecar.hostdevs import HostDevice, TransformOptions  # noqa: E402
from hook_sidecar.pci import PciAddress  # noqa: E402
from hook_sidecar.transform import transform  # noqa: E402

DEVICES = [
    HostDevice(PciAddress.parse("0000:3d:01.0"), numa_node=0),
    HostDevice(PciAddress.parse("0000:b1:01.0"), numa_node=1),
]
PLACED = TransformOptions(numa_placement="auto")
UNPLACED = TransformOptions(numa_placement="off")


def batch_us(function: Callable[[], object], batch: int) -> float:
    started = time.perf_counter()
    for _ in range(batch):
        function()
    return (time.perf_counter() - started) / batch * 1e6


def measure(rounds: int = 31, batch: int = 200) -> dict[str, float]:
    data = (ROOT / "examples" / "numa" / "domain.xml").read_bytes()
    placed = transform(data, DEVICES, PLACED)
    if len(placed.added) != 2 or any(a.guest_cell is None for a in placed.added):
        raise SystemExit(f"placement did not place both VFs: {placed.warnings}")
    root = etree.fromstring(data)

    def with_placement() -> object:
        return transform(data, DEVICES, PLACED)

    def without() -> object:
        return transform(data, DEVICES, UNPLACED)

    def place_only() -> object:
        return numa.place(root, DEVICES, "auto")

    for function in (with_placement, without, place_only):
        batch_us(function, batch)  # warm the parser and the imports
    ons, offs, places, ratios = [], [], [], []
    for _ in range(rounds):
        on_us, off_us = batch_us(with_placement, batch), batch_us(without, batch)
        ons.append(on_us)
        offs.append(off_us)
        places.append(batch_us(place_only, batch))
        ratios.append(on_us / off_us)
    return {
        "domain_bytes": len(data),
        "placement_auto_us": statistics.median(ons),
        "placement_off_us": statistics.median(offs),
        "place_only_us": statistics.median(places),
        "ratio_auto_over_off": statistics.median(ratios),
        "extra_us": statistics.median(on - off for on, off in zip(ons, offs, strict=True)),
        "rounds": rounds,
        "batch": batch,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=31)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON")
    args = parser.parse_args(argv)
    numbers = measure(args.rounds, args.batch)
    if args.json:
        print(json.dumps(numbers, indent=2))
        return 0
    print(f"python {platform.python_version()}, guest-NUMA domain {numbers['domain_bytes']} bytes")
    print(f"transform, numa_placement=auto:  {numbers['placement_auto_us']:8.1f} us")
    print(f"transform, numa_placement=off:   {numbers['placement_off_us']:8.1f} us")
    print(
        f"placement adds:                  {numbers['extra_us']:8.1f} us "
        f"(x{numbers['ratio_auto_over_off']:.2f}, median of per-round ratios)"
    )
    print(f"numa.place() alone:              {numbers['place_only_us']:8.1f} us")
    print(f"({numbers['rounds']} rounds of {numbers['batch']} calls each, interleaved)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
