#!/usr/bin/env python3
"""Drive a running sidecar from outside, as virt-launcher would (used by make image-test).

    python tests/image_client.py SOCKET

Waits for the socket, then: Info; OnDefineDomain (v1alpha3) of the bundled domain for a
VMI asking for two VFs, checking both hostdevs come back; Shutdown. Exits non-zero with a
message on the first mismatch.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import grpc
from lxml import etree

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hook_sidecar._generated import (  # noqa: E402
    info_pb2,
    info_pb2_grpc,
    v1alpha3_pb2,
    v1alpha3_pb2_grpc,
)


def wait_for(path: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return
        time.sleep(0.1)
    raise SystemExit(f"image-client: no socket at {path} after {timeout:.0f} s")


def main(socket: str) -> int:
    path = Path(socket)
    wait_for(path)
    target = f"unix:{path}"
    started = time.monotonic()
    with grpc.insecure_channel(target) as channel:
        info = info_pb2_grpc.InfoStub(channel).Info(info_pb2.InfoParams(), timeout=5)
    points = [p.name for p in info.hookPoints]
    if points != ["OnDefineDomain", "Shutdown"] or "v1alpha3" not in info.versions:
        raise SystemExit(f"image-client: unexpected Info {info}")

    vmi = json.loads((ROOT / "examples" / "vmi.json").read_text())
    vmi["spec"]["domain"]["resources"]["limits"]["qat.intel.com/generic"] = "2"
    vmi["spec"]["domain"]["resources"]["requests"]["qat.intel.com/generic"] = "2"
    domain = (ROOT / "examples" / "domain.xml").read_bytes()
    with grpc.insecure_channel(target) as channel:
        result = v1alpha3_pb2_grpc.CallbacksStub(channel).OnDefineDomain(
            v1alpha3_pb2.OnDefineDomainParams(domainXML=domain, vmi=json.dumps(vmi).encode()),
            timeout=30,
        )
    root = etree.fromstring(result.domainXML)
    sources = [
        (hostdev.find("source/address").get("slot"), hostdev.find("source/address").get("function"))  # type: ignore[union-attr]
        for hostdev in root.iterfind("devices/hostdev")
    ]
    if sources != [("0x02", "0x2"), ("0x02", "0x3")]:
        raise SystemExit(f"image-client: unexpected hostdevs {sources}")

    with grpc.insecure_channel(target) as channel:
        v1alpha3_pb2_grpc.CallbacksStub(channel).Shutdown(v1alpha3_pb2.ShutdownParams(), timeout=5)
    elapsed = (time.monotonic() - started) * 1000
    print(f"image-client: Info, OnDefineDomain (2 VFs) and Shutdown passed in {elapsed:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
