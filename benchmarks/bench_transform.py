#!/usr/bin/env python3
"""The transform's cost beside lxml's own floor, and how it scales with the input.

The floor is a bare lxml parse plus serialize of the same bytes: the least any
lxml-based rewrite can cost. The transform parses (hardened), checks, edits the
tree, serializes, and reads its output back once more as a last guard, so the
guard's share is reported on its own. The ratio is the median of per-round
ratios, each round timing both back to back.

The scaling table grows one dimension of a domain (comments, elements,
attributes) by 1k, 10k and 100k: time per KB stays roughly flat when no step
grows faster than the input.

    python benchmarks/bench_transform.py [--rounds N] [--json] [--no-scaling]
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

from hook_sidecar import transform as transform_module  # noqa: E402
from hook_sidecar.hostdevs import HostDevice  # noqa: E402
from hook_sidecar.pci import PciAddress  # noqa: E402
from hook_sidecar.transform import transform  # noqa: E402

DEVICES = [HostDevice(PciAddress.parse("0000:3d:02.2"))]
SIZES = (1_000, 10_000, 100_000)


def batch_us(function: Callable[[], object], batch: int) -> float:
    started = time.perf_counter()
    for _ in range(batch):
        function()
    return (time.perf_counter() - started) / batch * 1e6


def _floor(data: bytes) -> Callable[[], object]:
    parser = etree.XMLParser(resolve_entities=False, no_network=True)
    return lambda: etree.tostring(
        etree.fromstring(data, parser).getroottree(), encoding="UTF-8", xml_declaration=True
    )


def measure(rounds: int = 31, batch: int = 200) -> dict[str, float]:
    """Medians over ``rounds``; each round times a batch of both, back to back.

    Interleaving keeps the ratio honest on a shared, noisy machine: whatever slows
    one batch down slows its neighbour too.
    """
    data = (ROOT / "examples" / "domain.xml").read_bytes()
    result = transform(data, DEVICES)

    def hook() -> object:
        return transform(data, DEVICES)

    def guard() -> None:
        transform_module._verify(result.xml, result.added)

    floor = _floor(data)
    for function in (hook, floor, guard):
        batch_us(function, batch)  # warm caches and the parser
    hooks, floors, guards, ratios = [], [], [], []
    for _ in range(rounds):
        hook_us, floor_us = batch_us(hook, batch), batch_us(floor, batch)
        guard_us = batch_us(guard, batch)
        hooks.append(hook_us)
        floors.append(floor_us)
        guards.append(guard_us)
        ratios.append(hook_us / floor_us)
    transform_us = statistics.median(hooks)
    floor_us = statistics.median(floors)
    guard_us = statistics.median(guards)
    return {
        "domain_bytes": len(data),
        "transform_us": round(transform_us, 1),
        "parse_serialize_us": round(floor_us, 1),
        "guard_us": round(guard_us, 1),
        "ratio": round(statistics.median(ratios), 2),
        "ratio_without_guard": round((transform_us - guard_us) / floor_us, 2),
    }


def grown(kind: str, count: int) -> bytes:
    """The example domain with ``count`` more comments, elements or attributes."""
    data = (ROOT / "examples" / "domain.xml").read_bytes()
    if kind == "comments":
        extra = b"".join(b"\t\t<!-- c%d </devices> -->\n" % i for i in range(count))
        return data.replace(b"\t</devices>", extra + b"\t</devices>")
    if kind == "elements":
        extra = b"".join(
            b'\t\t<controller type="pci" index="%d" model="pcie-root-port"></controller>\n' % i
            for i in range(count)
        )
        return data.replace(b"\t</devices>", extra + b"\t</devices>")
    attrs = b"".join(b' a%d="%d"' % (i, i) for i in range(count))
    return data.replace(b"<devices>", b"<devices" + attrs + b">", 1)


def scaling(repeat: int = 5) -> list[dict[str, float | str]]:
    rows: list[dict[str, float | str]] = []
    for kind in ("comments", "elements", "attributes"):
        for count in SIZES:
            data = grown(kind, count)
            floor = _floor(data)

            def hook(data: bytes = data) -> object:
                return transform(data, DEVICES)

            hook_s = min(batch_us(hook, 1) for _ in range(repeat))
            floor_s = min(batch_us(floor, 1) for _ in range(repeat))
            kb = len(data) / 1024
            rows.append(
                {
                    "kind": kind,
                    "count": count,
                    "kb": round(kb, 1),
                    "transform_ms": round(hook_s / 1000, 2),
                    "us_per_kb": round(hook_s / kb, 2),
                    "floor_us_per_kb": round(floor_s / kb, 2),
                    "ratio": round(hook_s / floor_s, 2),
                }
            )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=31)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--no-scaling", action="store_true", help="skip the scaling table")
    args = parser.parse_args()
    result = measure(args.rounds)
    rows = [] if args.no_scaling else scaling()
    if args.json:
        print(json.dumps({**result, "scaling": rows}))
        return 0
    print(
        f"machine:              {platform.machine()} {platform.python_implementation()} "
        f"{platform.python_version()}, lxml {etree.__version__}"
    )
    print(f"domain:               examples/domain.xml, {result['domain_bytes']} bytes")
    print(f"transform (median):   {result['transform_us']:.1f} us")
    print(f"  of which the guard: {result['guard_us']:.1f} us (reading the output back)")
    print(f"lxml parse+serialize: {result['parse_serialize_us']:.1f} us  (floor)")
    print(f"ratio:                {result['ratio']:.2f}x the floor (target 1.1x)")
    print(f"ratio without guard:  {result['ratio_without_guard']:.2f}x")
    if rows:
        print()
        header = ("grown by", "count", "KB", "ms", "us/KB", "floor us/KB", "ratio")
        print("{:<11}{:>8}{:>9}{:>9}{:>8}{:>13}{:>7}".format(*header))
        for row in rows:
            print(
                f"{row['kind']:<11}{row['count']:>8}{row['kb']:>9}{row['transform_ms']:>9}"
                f"{row['us_per_kb']:>8}{row['floor_us_per_kb']:>13}{row['ratio']:>7}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
