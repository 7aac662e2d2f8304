#!/usr/bin/env python3
"""Drive a running sidecar from outside, as virt-launcher would (used by make image-test).

    python tests/image_client.py SOCKET
    python tests/image_client.py --check-imports SERVER_LOG [--shim]
    python tests/image_client.py --two-vf-vmi OUT.json
    python tests/image_client.py --check-domain DOMAIN.xml

Waits for the socket, then: Info; OnDefineDomain (v1alpha3) of the bundled domain for a
VMI asking for two VFs, checking both hostdevs come back; Shutdown. Exits non-zero with a
message on the first mismatch.

``--check-imports`` reads the stderr of a server run with PYTHONVERBOSE=1 and fails if any
module was compiled from source (no up-to-date bytecode in the image: every start of every
sidecar would pay for compiling it) or if serving loaded a module the deferral keeps out;
with ``--shim``, the log of the sidecar-shim flavor (whose ``onDefineDomain`` runs must not
load grpc or protobuf at all).

``--two-vf-vmi`` writes the bundled VMI asking for two VFs; ``--check-domain`` checks that a
domain (what KubeVirt's hook manager returned) holds exactly the two VFs the image tests set
(QAT0=0000:3d:02.2, QAT1=0000:3d:02.3).
"""

from __future__ import annotations

import contextlib
import json
import re
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


def two_vf_vmi() -> bytes:
    vmi = json.loads((ROOT / "examples" / "vmi.json").read_text())
    vmi["spec"]["domain"]["resources"]["limits"]["qat.intel.com/generic"] = "2"
    vmi["spec"]["domain"]["resources"]["requests"]["qat.intel.com/generic"] = "2"
    return json.dumps(vmi).encode()


def check_domain(domain: bytes) -> None:
    root = etree.fromstring(domain)
    sources = [
        (hostdev.find("source/address").get("slot"), hostdev.find("source/address").get("function"))  # type: ignore[union-attr]
        for hostdev in root.iterfind("devices/hostdev")
    ]
    if sources != [("0x02", "0x2"), ("0x02", "0x3")]:
        raise SystemExit(f"image-client: unexpected hostdevs {sources}")


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

    domain = (ROOT / "examples" / "domain.xml").read_bytes()
    with grpc.insecure_channel(target) as channel:
        result = v1alpha3_pb2_grpc.CallbacksStub(channel).OnDefineDomain(
            v1alpha3_pb2.OnDefineDomainParams(domainXML=domain, vmi=two_vf_vmi()), timeout=30
        )
    check_domain(result.domainXML)

    with grpc.insecure_channel(target) as channel:
        v1alpha3_pb2_grpc.CallbacksStub(channel).Shutdown(v1alpha3_pb2.ShutdownParams(), timeout=5)
    elapsed = (time.monotonic() - started) * 1000
    print(f"image-client: Info, OnDefineDomain (2 VFs) and Shutdown passed in {elapsed:.0f} ms")
    return 0


# What a served call must never load (see hook_sidecar/startup.py and tests/test_startup.py).
NEVER_LOADED = (
    "asyncio.base_events",
    "asyncio.events",
    "ssl",
    "subprocess",
    "grpc.aio._server",
    "google.protobuf.text_format",
)
# python -v: "# code object from '/x/y.py'" is a compile from source; from a .pyc it names
# the .pyc. "import 'name' # <loader>" is every module executed.
SOURCE_COMPILE = re.compile(r"^# code object from '?(?P<path>[^']+\.py)'?$")
IMPORTED = re.compile(r"^import '(?P<name>[^']+)' # ")


def stderr_lines(text: str) -> list[str]:
    """The server's stderr as written: the JSON log format re-emits fd 2 lines as ``msg``."""
    lines = []
    for line in text.splitlines():
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                line = str(json.loads(line).get("msg", ""))
        lines.append(line)
    return lines


# The shim flavor's script imports neither (KubeVirt's Go shim speaks gRPC for it).
NEVER_LOADED_BY_SHIM = ("grpc", "google.protobuf")


def check_imports(log_path: str, shim: bool = False) -> int:
    lines = stderr_lines(Path(log_path).read_text(errors="replace"))
    compiled = [m["path"] for m in map(SOURCE_COMPILE.match, lines) if m]
    imported = {m["name"] for m in map(IMPORTED.match, lines) if m}
    if len(imported) < 50:
        raise SystemExit(f"image-client: {log_path} has no python -v import log")
    problems = []
    if compiled:
        problems.append(f"compiled from source (no up-to-date bytecode): {', '.join(compiled)}")
    loaded = [name for name in NEVER_LOADED if name in imported]
    if shim:
        loaded += sorted(name for name in imported if name.startswith(NEVER_LOADED_BY_SHIM))
    if loaded:
        problems.append(f"serving loaded {', '.join(loaded)}")
    if problems:
        raise SystemExit("image-client: " + "; ".join(problems))
    print(f"image-client: {len(imported)} modules, all from bytecode; none of {NEVER_LOADED}")
    return 0


if __name__ == "__main__":
    if sys.argv[1] == "--check-imports":
        sys.exit(check_imports(sys.argv[2], shim="--shim" in sys.argv[3:]))
    if sys.argv[1] == "--two-vf-vmi":
        Path(sys.argv[2]).write_bytes(two_vf_vmi())
        sys.exit(0)
    if sys.argv[1] == "--check-domain":
        check_domain(Path(sys.argv[2]).read_bytes())
        print("image-client: the hook manager got both VFs back")
        sys.exit(0)
    sys.exit(main(sys.argv[1]))
