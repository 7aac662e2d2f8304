#!/usr/bin/env python3
"""Median time of one transform of the bundled domain, beside the lxml floor.

The floor is a bare lxml parse plus serialize of the same bytes: the least
any lxml-based rewrite can cost. The transform parses (hardened) but does not
serialize; it splices the new block into the input bytes instead. The ratio is
the median of per-round ratios, each round timing both back to back.

    python benchmarks/bench_transform.py [--rounds N] [--json]
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

from hook_sidecar.hostdevs import HostDevice  # noqa: E402
from hook_sidecar.pci import PciAddress  # noqa: E402
from hook_sidecar.transform import transform  # noqa: E402


def batch_us(function: Callable[[], object], batch: int) -> float:
    started = time.perf_counter()
    for _ in range(batch):
        function()
    return (time.perf_counter() - started) / batch * 1e6


def measure(rounds: int = 31, batch: int = 200) -> dict[str, float]:
    """Medians over ``rounds``; each round times a batch of both, back to back.

    Interleaving keeps the ratio honest on a shared, noisy machine: whatever slows
    one batch down slows its neighbour too.
    """
    data = (ROOT / "examples" / "domain.xml").read_bytes()
    devices = [HostDevice(PciAddress.parse("0000:3d:02.2"))]
    parser = etree.XMLParser(resolve_entities=False, no_network=True)

    def hook() -> object:
        return transform(data, devices)

    def floor() -> object:
        return etree.tostring(etree.fromstring(data, parser))

    for function in (hook, floor):
        batch_us(function, batch)  # warm caches and the parser
    hooks, floors, ratios = [], [], []
    for _ in range(rounds):
        hook_us, floor_us = batch_us(hook, batch), batch_us(floor, batch)
        hooks.append(hook_us)
        floors.append(floor_us)
        ratios.append(hook_us / floor_us)
    return {
        "domain_bytes": len(data),
        "transform_us": round(statistics.median(hooks), 1),
        "parse_serialize_us": round(statistics.median(floors), 1),
        "ratio": round(statistics.median(ratios), 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=31)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    result = measure(args.rounds)
    if args.json:
        print(json.dumps(result))
        return 0
    print(
        f"machine:             {platform.machine()} {platform.python_implementation()} "
        f"{platform.python_version()}, lxml {etree.__version__}"
    )
    print(f"domain:              examples/domain.xml, {result['domain_bytes']} bytes")
    print(f"transform (median):  {result['transform_us']:.1f} us")
    print(f"lxml parse+serialize:{result['parse_serialize_us']:.1f} us  (floor)")
    print(f"ratio:               {result['ratio']:.2f}x the floor (target 1.2x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
