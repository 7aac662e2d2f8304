"""Faults and load: the server keeps serving or exits cleanly, never hangs, never leaks."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from hook_sidecar._generated import v1alpha3_pb2, v1alpha3_pb2_grpc
from tests.conftest import ServerProcess, start_server
from tests.test_server import EXPECTED, define, info

BIG_DOMAIN = (
    "<domain><name>big</name><devices>"
    + "".join(f"<disk type='file'><target dev='vd{i}'/></disk>" for i in range(60000))
    + "</devices></domain>"
).encode()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_client_cancels_mid_call(server: ServerProcess, domain_xml: bytes, vmi_json: bytes) -> None:
    with grpc.insecure_channel(f"unix:{server.socket}") as channel:
        future = v1alpha3_pb2_grpc.CallbacksStub(channel).OnDefineDomain.future(
            v1alpha3_pb2.OnDefineDomainParams(domainXML=BIG_DOMAIN, vmi=vmi_json), timeout=30
        )
        time.sleep(0.05)
        future.cancel()
    assert define(server.socket, domain_xml, vmi_json) == EXPECTED


def test_client_deadline_expires_mid_call(
    server: ServerProcess, domain_xml: bytes, vmi_json: bytes
) -> None:
    with (
        grpc.insecure_channel(f"unix:{server.socket}") as channel,
        pytest.raises(grpc.RpcError) as err,
    ):
        v1alpha3_pb2_grpc.CallbacksStub(channel).OnDefineDomain(
            v1alpha3_pb2.OnDefineDomainParams(domainXML=BIG_DOMAIN, vmi=vmi_json), timeout=0.02
        )
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert define(server.socket, domain_xml, vmi_json) == EXPECTED


def test_client_disconnects_mid_call(
    server: ServerProcess, domain_xml: bytes, vmi_json: bytes
) -> None:
    channel = grpc.insecure_channel(f"unix:{server.socket}")
    future = v1alpha3_pb2_grpc.CallbacksStub(channel).OnDefineDomain.future(
        v1alpha3_pb2.OnDefineDomainParams(domainXML=BIG_DOMAIN, vmi=vmi_json), timeout=30
    )
    time.sleep(0.05)
    channel.close()
    assert future.cancelled() or future.done()
    assert define(server.socket, domain_xml, vmi_json) == EXPECTED


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x00" * 64,
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + os.urandom(512),
        os.urandom(4096),
    ],
    ids=["zeros", "http1", "h2-preface-then-noise", "random"],
)
def test_garbage_peer(
    server: ServerProcess, domain_xml: bytes, vmi_json: bytes, garbage: bytes
) -> None:
    peer = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    peer.settimeout(2)
    peer.connect(str(server.socket))
    try:
        peer.sendall(garbage)
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            peer.recv(1024)
    finally:
        peer.close()
    assert define(server.socket, domain_xml, vmi_json) == EXPECTED


def test_idle_peer_does_not_block_others(
    server: ServerProcess, domain_xml: bytes, vmi_json: bytes
) -> None:
    idle = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(20)]
    try:
        for peer in idle:
            peer.connect(str(server.socket))
        assert define(server.socket, domain_xml, vmi_json) == EXPECTED
    finally:
        for peer in idle:
            peer.close()


def test_socket_directory_removed(tmp_path: Path) -> None:
    proc = start_server(tmp_path)
    shutil.rmtree(proc.socket.parent)
    assert proc.process.wait(5) == 1
    assert not proc.socket.parent.exists()
    messages = [json.loads(line)["msg"] for line in proc.log_lines()]
    assert any("was removed; virt-launcher can no longer reach the hook" in m for m in messages)
    assert messages[-1] == "stopped"


def test_sigterm_while_clients_hammer(
    server: ServerProcess, domain_xml: bytes, vmi_json: bytes
) -> None:
    stop = threading.Event()
    unexpected: list[grpc.StatusCode] = []

    def client() -> None:
        while not stop.is_set():
            try:
                define(server.socket, domain_xml, vmi_json)
            except grpc.RpcError as err:
                # Calls that arrive while the server stops are refused: UNAVAILABLE or
                # CANCELLED. A failed hook call (INTERNAL, UNKNOWN) would be a bug.
                if err.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
                    unexpected.append(err.code())

    threads = [threading.Thread(target=client) for _ in range(8)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)
    server.process.send_signal(signal.SIGTERM)
    try:
        assert server.process.wait(5) == 0
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    assert not server.socket.exists()
    assert unexpected == []


def test_load_and_no_leak(server: ServerProcess, domain_xml: bytes, vmi_json: bytes) -> None:
    """10,000 calls over 32 concurrent clients, zero errors; RSS flat after warm-up."""

    def batch(calls: int) -> set[bytes]:
        def client(count: int) -> set[bytes]:
            return {define(server.socket, domain_xml, vmi_json) for _ in range(count)}

        with ThreadPoolExecutor(max_workers=32) as pool:
            return set().union(*pool.map(client, [calls // 32] * 32))

    assert batch(1024) == {EXPECTED}
    after_1k = rss_kib(server.process.pid)
    assert batch(9024) == {EXPECTED}
    after_10k = rss_kib(server.process.pid)
    growth_mib = (after_10k - after_1k) / 1024
    assert growth_mib <= 2.0, f"RSS grew {growth_mib:.2f} MiB from 1k to 10k calls"
    assert info(server.socket).name == "qat"
