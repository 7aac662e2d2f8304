#!/usr/bin/env python3
"""Benchmark ``qat-hook serve`` as it runs in a pod: start-up, latency, memory, throughput.

Starts the server as a subprocess on a temporary socket directory (one VF in QAT0, the
bundled example domain and VMI) and measures:

- ready_cpu_ms, ready_wall_ms: CPU time (user+sys, all threads, from /proc; 10 ms
  resolution) and wall time from exec until the socket answers Info;
- p50_ms, p90_ms, p99_ms, max_ms: N sequential OnDefineDomain round trips, a new channel
  per call as virt-launcher does;
- peak_rss_mib (VmHWM) and rss_anon_mib of the server after the run;
- concurrent_calls_per_s: 16 client threads, new channel per call;
- transform_us, parse_serialize_us: the transform alone and the lxml floor.

    python benchmarks/bench_sidecar.py [--calls N] [--json]

With --json the last line of stdout is one JSON object with exactly those keys.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bench_transform import measure as measure_transform  # noqa: E402
from hook_sidecar._generated import (  # noqa: E402
    info_pb2,
    info_pb2_grpc,
    v1alpha3_pb2,
    v1alpha3_pb2_grpc,
)

KEYS = (
    "ready_cpu_ms",
    "ready_wall_ms",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "max_ms",
    "peak_rss_mib",
    "rss_anon_mib",
    "concurrent_calls_per_s",
    "transform_us",
    "parse_serialize_us",
)
BUDGETS = {"peak_rss_mib": 40, "ready_cpu_ms": 150, "p50_ms": 1.0}
CLIENTS = 16
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_ms(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / TICKS  # utime + stime


def status_mib(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def answers_info(target: str) -> bool:
    try:
        with grpc.insecure_channel(target) as channel:
            info_pb2_grpc.InfoStub(channel).Info(info_pb2.InfoParams(), timeout=0.5)
        return True
    except grpc.RpcError:
        return False


def one_call(target: str, request: v1alpha3_pb2.OnDefineDomainParams) -> float:
    started = time.perf_counter()
    with grpc.insecure_channel(target) as channel:
        result = v1alpha3_pb2_grpc.CallbacksStub(channel).OnDefineDomain(request, timeout=10)
    elapsed = (time.perf_counter() - started) * 1000
    if b"ua-qat-0" not in result.domainXML:
        raise SystemExit("bench: the hook did not inject the device")
    return elapsed


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def start(tmp: str) -> tuple[subprocess.Popen[bytes], float, float]:
    """Start the server; return it with its CPU and wall time until Info answered."""
    socket = Path(tmp) / "qat.sock"
    env = {
        **os.environ,
        "QAT0": "0000:3d:02.2",
        "QAT_HOOK_VERIFY_SYSFS": "off",
        "QAT_HOOK_PODRESOURCES_SOCKET": "",
        "PYTHONPATH": str(ROOT),
    }
    command = [sys.executable, "-m", "hook_sidecar", "serve", "--socket-dir", tmp]
    started = time.perf_counter()
    server = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)
    while not (socket.exists() and answers_info(f"unix:{socket}")):
        if server.poll() is not None:
            raise SystemExit(f"bench: server exited with {server.returncode}")
        time.sleep(0.002)
    return server, cpu_ms(server.pid), (time.perf_counter() - started) * 1000


def leak_check(
    target: str, request: v1alpha3_pb2.OnDefineDomainParams, pid: int
) -> tuple[float, float]:
    """RSS (MiB) after 1,000 and after 10,000 further calls over 32 concurrent clients."""

    def calls(count: int) -> None:
        with ThreadPoolExecutor(max_workers=32) as pool:
            list(
                pool.map(
                    lambda _: [one_call(target, request) for _ in range(count // 32)], range(32)
                )
            )

    calls(1024)
    after_1k = status_mib(pid, "VmRSS")
    calls(9024)
    return after_1k, status_mib(pid, "VmRSS")


@dataclass(frozen=True)
class Report:
    numbers: dict[str, float]
    ratio: float  # transform / floor, median of paired rounds
    leak: tuple[float, float] | None  # RSS after 1k and 10k calls, when asked for


def run(calls: int, starts: int = 7, leak: bool = False) -> Report:
    leak_numbers = None
    with tempfile.TemporaryDirectory(prefix="qat-bench-") as tmp:
        socket = Path(tmp) / "qat.sock"
        target = f"unix:{socket}"
        cpu_samples, wall_samples = [], []
        for _ in range(starts - 1):  # start-up varies: take the median of several
            server, cpu, wall = start(tmp)
            server.terminate()
            server.wait(10)
            cpu_samples.append(cpu)
            wall_samples.append(wall)
        server, cpu, wall = start(tmp)
        cpu_samples.append(cpu)
        wall_samples.append(wall)
        ready_cpu = statistics.median(cpu_samples)
        ready_wall = statistics.median(wall_samples)
        try:
            request = v1alpha3_pb2.OnDefineDomainParams(
                domainXML=(ROOT / "examples" / "domain.xml").read_bytes(),
                vmi=(ROOT / "examples" / "vmi.json").read_bytes(),
            )
            for _ in range(20):
                one_call(target, request)  # warm up
            latencies = [one_call(target, request) for _ in range(calls)]

            per_client = max(1, calls // CLIENTS)
            t0 = time.perf_counter()
            with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
                list(
                    pool.map(
                        lambda _: [one_call(target, request) for _ in range(per_client)],
                        range(CLIENTS),
                    )
                )
            throughput = per_client * CLIENTS / (time.perf_counter() - t0)

            peak = status_mib(server.pid, "VmHWM")
            anon = status_mib(server.pid, "RssAnon")
            if leak:
                leak_numbers = leak_check(target, request, server.pid)
        finally:
            server.terminate()
            server.wait(10)
    floor = measure_transform(rounds=21)
    numbers = {
        "ready_cpu_ms": round(ready_cpu, 1),
        "ready_wall_ms": round(ready_wall, 1),
        "p50_ms": round(statistics.median(latencies), 3),
        "p90_ms": round(percentile(latencies, 0.90), 3),
        "p99_ms": round(percentile(latencies, 0.99), 3),
        "max_ms": round(max(latencies), 3),
        "peak_rss_mib": round(peak, 1),
        "rss_anon_mib": round(anon, 1),
        "concurrent_calls_per_s": round(throughput, 1),
        "transform_us": floor["transform_us"],
        "parse_serialize_us": floor["parse_serialize_us"],
    }
    return Report(numbers, floor["ratio"], leak_numbers)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000, help="sequential calls (default 1000)")
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    parser.add_argument(
        "--leak", action="store_true", help="also report RSS after 1k and 10k concurrent calls"
    )
    args = parser.parse_args()
    report = run(args.calls, leak=args.leak)
    result, leak = report.numbers, report.leak
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, grpcio {grpc.__version__}; {args.calls} calls, "
        "start-up: median of 7"
    )
    for key in KEYS:
        budget = BUDGETS.get(key)
        note = ""
        if budget is not None:
            note = f"  (budget <= {budget}: {'ok' if result[key] <= budget else 'OVER'})"
        if key == "transform_us":
            note = f"  ({report.ratio:.2f}x the floor, median of paired rounds; target 1.2x)"
        print(f"{key:24} {result[key]:>10}{note}")
    if leak is not None:
        print(f"{'rss_after_1k_mib':24} {leak[0]:>10.1f}")
        print(f"{'rss_after_10k_mib':24} {leak[1]:>10.1f}  (growth {leak[1] - leak[0]:.2f} MiB)")
    if args.json:
        print(json.dumps({key: result[key] for key in KEYS}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
