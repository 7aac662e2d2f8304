#!/usr/bin/env python3
"""Peak memory and time of reading a VMI: real ones, the largest accepted, hostile ones.

Each case runs in a fresh Python process: it loads its input from a file,
resets the kernel's peak RSS (``/proc/self/clear_refs``), reads the input with
``vmi.parse_vmi`` (what the server runs on every call) and reads the peak
(``VmHWM``). The difference is
what reading that input costs on top of holding it. The sidecar container's
limit is 64 MiB in all (``deploy/``), shared with grpc, lxml and the domain XML.

Largest accepted: ``MAX_VMI_BYTES`` (2 MiB) of JSON just inside ``MAX_VALUES``
values, in the shapes that cost Python the most per input byte (empty objects,
unique keys, short strings, a non-Latin-1 character that makes the decoded text
four bytes a character). Hostile: 60 MiB of ``[{},...]`` (refused by size) and
2 MiB of it (refused by count, at the first value past the bound).

``--baseline DIR`` reads each input with the ``hook_sidecar`` package in DIR too (say,
the last release's), in the same run, for a before/after.

    python benchmarks/bench_vmi.py [--baseline DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hook_sidecar import boundedjson, config  # noqa: E402

CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
from hook_sidecar import vmi
from hook_sidecar.errors import InvalidInput


def status(field):
    with open("/proc/self/status") as lines:
        return next(int(line.split()[1]) for line in lines if line.startswith(field + ":"))


raw = open(sys.argv[2], "rb").read()
with open("/proc/self/clear_refs", "w") as reset:
    reset.write("5")  # the peak (VmHWM) starts again from the current RSS
before = status("VmRSS")
started = time.perf_counter()
try:
    vmi.parse_vmi(raw)
    outcome = "accepted"
except InvalidInput as err:
    outcome = "refused: " + str(err)[:40]
elapsed = time.perf_counter() - started
after = status("VmHWM")
print(json.dumps({"bytes": len(raw), "baseline_kib": before, "peak_kib": after,
                  "ms": elapsed * 1000, "outcome": outcome}))
"""


def _padded(doc: dict[str, object], pad: str = "x") -> bytes:
    """``doc`` filled up to the byte cap with one string: its value count stays the same."""
    text = json.dumps(doc, separators=(",", ":"))
    room = config.MAX_VMI_BYTES - len(text.encode()) - len(',"pad":""')
    doc["pad"] = pad + "x" * (room - len(pad.encode()))
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


def build(case: str) -> bytes:
    """The input of one case, built here so the child's peak holds only the reading."""
    values = boundedjson.MAX_VALUES - 8
    if case == "real":
        return (ROOT / "examples" / "vmi.json").read_bytes()
    if case == "string":
        return _padded({"metadata": {"name": "big"}})
    if case == "objects":
        return _padded({"a": [{} for _ in range(values)]})
    if case == "keys":
        return _padded({"a": {f"k{i:06d}": None for i in range(values // 2)}})
    if case == "strings":
        return _padded({"a": [f"s{i:05d}" for i in range(values)]})
    if case == "wide":
        return _padded({"a": [{} for _ in range(values)]}, pad="\U0001f600")
    if case == "hostile-2mib":
        return b"[" + b"{}," * (config.MAX_VMI_BYTES // 3 - 1) + b"{}]"
    return b"[" + b"{}," * (60 * 1024 * 1024 // 3) + b"{}]"


CASES = {
    "real": "KubeVirt's converter fixture VMI (examples/vmi.json)",
    "string": "2 MiB, one long string",
    "objects": "2 MiB, 50k values: empty objects",
    "keys": "2 MiB, 50k values: unique keys",
    "strings": "2 MiB, 50k values: short strings",
    "wide": "2 MiB, 50k values, a non-Latin-1 character",
    "hostile-2mib": "2 MiB of [{},...] (over the value bound)",
    "hostile-60mib": "60 MiB of [{},...] (over the size cap)",
}


def measure(case: str, root: Path = ROOT) -> dict[str, object]:
    with tempfile.NamedTemporaryFile(suffix=".json") as data:
        data.write(build(case))
        data.flush()
        proc = subprocess.run(
            [sys.executable, "-c", CHILD, str(root), data.name],
            capture_output=True,
            check=True,
            text=True,
        )
    result: dict[str, object] = json.loads(proc.stdout)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON")
    parser.add_argument(
        "--baseline",
        type=Path,
        metavar="DIR",
        help="a directory holding another hook_sidecar package: measured too, same run",
    )
    args = parser.parse_args()
    roots = {"now": ROOT} | ({"baseline": args.baseline} if args.baseline else {})
    rows = {name: {case: measure(case, root) for case in CASES} for name, root in roots.items()}
    if args.json:
        print(json.dumps(rows if args.baseline else rows["now"], indent=2))
        return 0
    print(f"python {platform.python_version()}; peak RSS added by reading (MiB)")
    for case in CASES:
        for name, measured in rows.items():
            row = measured[case]
            added = (int(row["peak_kib"]) - int(row["baseline_kib"])) / 1024  # type: ignore[call-overload]
            label = CASES[case] if name == "now" else f"  ({name})"
            print(
                f"  {label:48} {int(row['bytes']):>10} B  +{added:6.1f} MiB  "  # type: ignore[call-overload]
                f"{float(row['ms']):8.3f} ms  {row['outcome']}"  # type: ignore[arg-type]
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
