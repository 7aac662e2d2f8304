#!/usr/bin/env python3
"""Time and memory at the domain size cap: peak RSS, time, linear scaling, lxml's name dictionary.

Every number comes from a fresh process, so one measurement never inherits
another's memory:

* peak RSS (VmHWM) of a process that imports grpc and lxml, as the server
  does, and transforms the largest accepted domain (``DEFAULT_MAX_BYTES``) of
  each shape: nothing but tiny elements (the most nodes per byte), attributes,
  hostdevs with aliases, and KubeVirt's own domain padded with disks;
* peak RSS of a real ``qat-hook serve`` answering OnDefineDomain over gRPC with
  the example domain and with the worst shape at the cap (the manifests give
  the sidecar 64 MiB);
* time against size (1, 2 and 4 MiB, cap raised) for hostdevs with aliases and
  for guest NUMA cells: the work must grow linearly;
* lxml's name dictionary (lxml keeps every name a thread parses for the thread's
  life): RSS after 15 calls, each with 20,000 element and 20,000 attribute names
  never seen before, of a real ``qat-hook serve`` (which renews its threads past a
  budget of domain XML) and of one long-lived thread calling the transform itself
  (no bound: what the server's budget is there for).

``--baseline DIR`` runs the time and dictionary rows with another copy of the
``hook_sidecar`` package too (say, the last release's), for a before/after.

    python benchmarks/bench_limits.py [--baseline DIR] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hook_sidecar.hostdevs import DEFAULT_MAX_BYTES  # noqa: E402

MIB = 1 << 20
# A retired server thread ends (freeing its lxml names) just after the call it ran.
SETTLE_SECONDS = 0.2
VMI = ROOT / "examples" / "vmi.json"

# Runs in a child process: argv = package dir, package name, job, shape, size.
CHILD = r"""
import gc, json, sys, threading, time
sys.path.insert(0, sys.argv[1])
package, job, shape, size = sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
import grpc  # noqa: F401 - the server's own baseline
transform = __import__(package + ".transform", fromlist=["transform"])
hostdevs = __import__(package + ".hostdevs", fromlist=["HostDevice"])
pci = __import__(package + ".pci", fromlist=["PciAddress"])


def status(key):
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(key):
                return int(line.split()[1]) / 1024


def domain(shape, size):
    head, tail = b"<domain type='kvm'><name>vm</name><devices>", b"</devices></domain>"
    cells = b""
    if shape == "elements":
        unit = b"<a/>"
    elif shape == "attributes":
        unit = b'<a b="" c="" d="" e="" f="" g="" h="" i="" j=""/>'
    elif shape == "hostdevs":
        unit = (
            b'<hostdev type="pci"><source><address domain="0" bus="1" slot="1" function="1"/>'
            b'</source><alias name="ua-%08d"/></hostdev>'
        )
    elif shape == "kubevirt":
        unit = (
            b'<disk device="disk" type="file"><source file="/var/run/kubevirt/disk%08d.img"/>'
            b'<target bus="virtio" dev="vdz"/><driver name="qemu" type="raw"/>'
            b'<alias name="ua-disk%08d"/></disk>'
        )
    elif shape == "cells":
        unit = b""
        one = b'<cell id="%d" cpus="%d" memory="1048576"/>'
        count = (size - 300) // len(one % (10**6, 10**6))
        cells = b"<cpu><numa>" + b"".join(one % (i, i) for i in range(count)) + b"</numa></cpu>"
        head = b"<domain type='kvm'><name>vm</name><os><type machine='q35'>hvm</type></os>" + cells
        head += b"<devices>"
    if unit:
        count = (size - len(head) - len(tail)) // len(unit.replace(b"%08d", b"00000000"))
        if b"%08d" in unit:
            body = b"".join(unit.replace(b"%08d", b"%08d" % i) for i in range(count))
        else:
            body = unit * count
    else:
        body = b""
    return head + body + tail


device = hostdevs.HostDevice(pci.PciAddress.parse("3d:02.2"), numa_node=0)
options = hostdevs.TransformOptions(max_bytes=size + 1)
if job == "peak":
    data = domain(shape, size)
    before = status("VmRSS")
    started = time.perf_counter()
    transform.transform(data, [device], options)
    print(json.dumps({"bytes": len(data), "idle_mib": before, "peak_mib": status("VmHWM"),
                      "seconds": time.perf_counter() - started}))
elif job == "time":
    data = domain(shape, size)
    transform.transform(domain(shape, 4096), [device], options)  # imports, warm-up
    started = time.perf_counter()
    transform.transform(data, [device], options)
    print(json.dumps({"bytes": len(data), "seconds": time.perf_counter() - started}))
elif job == "names":
    results = {}

    def calls():
        for call in range(15):
            names = "".join(f'<n{call}x{k} a{call}x{k}="1"/>' for k in range(20000))
            data = f"<domain><name>vm</name><devices>{names}</devices></domain>".encode()
            transform.transform(data, [device], hostdevs.TransformOptions(max_bytes=1 << 30))
            gc.collect()
            if call == 0:
                time.sleep(SETTLE_SECONDS)
                results["after_first_mib"] = status("VmRSS")
        time.sleep(SETTLE_SECONDS)
        results["after_15_mib"] = status("VmRSS")

    thread = threading.Thread(target=calls)
    thread.start()
    thread.join()
    print(json.dumps(results))
"""


def baseline_package(source: Path, into: Path) -> tuple[Path, str]:
    """A copy of another ``hook_sidecar`` under the name ``baseline_hook_sidecar``."""
    target = into / "baseline_hook_sidecar"
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
    for path in target.rglob("*.py"):
        # Not "hook_sidecar/...": the generated modules' serialized descriptors hold
        # their .proto paths, length-prefixed.
        text = re.sub(r"\bhook_sidecar\b(?!/)", "baseline_hook_sidecar", path.read_text())
        path.write_text(text)
    return into, "baseline_hook_sidecar"


def child(package: tuple[Path, str], job: str, shape: str, size: int) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(package[0]), package[1], job, shape, str(size)],
        capture_output=True,
        timeout=900,
        check=False,
        cwd=ROOT,
    )
    if done.returncode != 0:
        return {"error": float("nan")}
    result: dict[str, float] = json.loads(done.stdout)
    return result


@contextlib.contextmanager
def serving(package: tuple[Path, str], *args: str) -> Iterator[tuple[Path, Callable[[str], float]]]:
    """A real ``qat-hook serve`` of ``package``: its socket, and a reader of its /proc status."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            "PATH": os.environ.get("PATH", ""),
            "PYTHONPATH": str(package[0]),
            "QAT0": "0000:3d:02.2",
            "QAT_HOOK_VERIFY_SYSFS": "off",
            "QAT_HOOK_PODRESOURCES_SOCKET": "",
            "LANG": "C.UTF-8",
            "HOME": tmp,
        }
        server = subprocess.Popen(
            [sys.executable, "-m", package[1], "serve", "--socket-dir", tmp, *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=package[0],
        )
        assert server.stdout is not None
        for line in server.stdout:
            if b"ready: serving on" in line:
                break
        # Drain the log, so a full pipe never blocks the server.
        threading.Thread(target=server.stdout.read, daemon=True).start()

        def status(key: str) -> float:
            for line in Path(f"/proc/{server.pid}/status").read_text().splitlines():
                if line.startswith(key):
                    return int(line.split()[1]) / 1024
            return float("nan")

        try:
            yield Path(tmp) / "qat.sock", status
        finally:
            server.terminate()
            server.wait(10)


def define(socket: Path, data: bytes) -> bool:
    """One OnDefineDomain with ``data`` and the example VMI; whether it was answered."""
    import grpc

    from hook_sidecar._generated import v1alpha3_pb2, v1alpha3_pb2_grpc

    big = [("grpc.max_send_message_length", 1 << 30), ("grpc.max_receive_message_length", 1 << 30)]
    with grpc.insecure_channel(f"unix:{socket}", options=big) as channel:
        try:
            v1alpha3_pb2_grpc.CallbacksStub(channel).OnDefineDomain(
                v1alpha3_pb2.OnDefineDomainParams(domainXML=data, vmi=VMI.read_bytes()),
                timeout=60,
            )
        except grpc.RpcError:
            return False
    return True


def server_peak(data: bytes) -> dict[str, float]:
    """Peak RSS of a real ``qat-hook serve`` answering one OnDefineDomain with ``data``."""
    with serving((ROOT, "hook_sidecar")) as (socket, status):
        idle = status("VmRSS")
        started = time.perf_counter()
        ok = define(socket, data)
        seconds = time.perf_counter() - started
        peak = status("VmHWM")
    return {
        "bytes": len(data),
        "idle_mib": idle,
        "peak_mib": peak,
        "seconds": seconds,
        "ok": float(ok),
    }


def new_names(call: int) -> bytes:
    """A domain of 20,000 elements and 20,000 attributes named as no other call names them."""
    names = "".join(f'<n{call}x{k} a{call}x{k}="1"/>' for k in range(20000))
    return f"<domain><name>vm</name><devices>{names}</devices></domain>".encode()


def server_names(package: tuple[Path, str]) -> dict[str, float]:
    """RSS of a real ``qat-hook serve`` after the first and the 15th call of new names."""
    results: dict[str, float] = {}
    with serving(package, "--max-domain-bytes", str(1 << 30)) as (socket, status):
        for call in range(15):
            if not define(socket, new_names(call)):
                return {"error": float("nan")}
            if call == 0:
                time.sleep(SETTLE_SECONDS)
                results["after_first_mib"] = status("VmRSS")
        time.sleep(SETTLE_SECONDS)
        results["after_15_mib"] = status("VmRSS")
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, help="another hook_sidecar package directory")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    current = (ROOT, "hook_sidecar")
    with tempfile.TemporaryDirectory() as tmp:
        packages = {"now": current}
        if args.baseline:
            packages["baseline"] = baseline_package(args.baseline, Path(tmp))
        shapes = ("elements", "attributes", "hostdevs", "kubevirt")
        peaks = {shape: child(current, "peak", shape, DEFAULT_MAX_BYTES) for shape in shapes}
        example = (ROOT / "examples" / "domain.xml").read_bytes()
        elements = b"<domain type='kvm'><name>vm</name><devices>"
        elements += (
            b"<a/>" * ((DEFAULT_MAX_BYTES - len(elements) - 19) // 4) + b"</devices></domain>"
        )
        servers = {"example": server_peak(example), "elements at the cap": server_peak(elements)}
        times = {
            name: {
                shape: [child(package, "time", shape, mib * MIB) for mib in (1, 2, 4)]
                for shape in ("hostdevs", "cells")
            }
            for name, package in packages.items()
        }
        names = {name: child(package, "names", "", 0) for name, package in packages.items()}
        served = {name: server_names(package) for name, package in packages.items()}
    if args.json:
        print(
            json.dumps(
                {
                    "peaks": peaks,
                    "servers": servers,
                    "times": times,
                    "names": names,
                    "server_names": served,
                }
            )
        )
        return 0
    print(f"domain size cap (DEFAULT_MAX_BYTES): {DEFAULT_MAX_BYTES} bytes")
    print("largest accepted domain, transformed in a process that imports grpc and lxml:")
    for shape, peak in peaks.items():
        print(
            f"  {shape:<11} {peak['bytes']:>8} bytes  idle {peak['idle_mib']:5.1f} MiB  "
            f"peak {peak['peak_mib']:5.1f} MiB  {peak['seconds'] * 1000:7.1f} ms"
        )
    print("qat-hook serve, one OnDefineDomain over gRPC (the manifests' limit: 64 MiB):")
    for name, peak in servers.items():
        print(
            f"  {name:<20} {peak['bytes']:>8} bytes  idle {peak['idle_mib']:5.1f} MiB  "
            f"peak {peak['peak_mib']:5.1f} MiB  {peak['seconds'] * 1000:7.1f} ms"
            + ("" if peak["ok"] else "  (refused)")
        )
    print("time against size, cap raised (linear: seconds per MiB stays flat):")
    for name, shapes_done in times.items():
        for shape, rows in shapes_done.items():
            cells = "  ".join(
                f"{row['bytes'] / MIB:4.1f} MiB {row['seconds']:6.2f} s" for row in rows
            )
            print(f"  {name:<8} {shape:<9} {cells}")
    print("15 calls with 20,000 new names each (RSS after the first, after all):")
    for label, measured in (("qat-hook serve", served), ("one thread, transform", names)):
        for name, row in measured.items():
            print(
                f"  {label:<22} {name:<8} {row.get('after_first_mib', 0):6.1f} MiB -> "
                f"{row.get('after_15_mib', 0):6.1f} MiB"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
