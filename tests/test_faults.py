"""Faults and load: the server keeps serving or exits cleanly, never hangs, never leaks.

Calls are held open with a hook that waits on an event (in-process) or on a FIFO
(in a subprocess, for real signals), so a cancel, a disconnect or a stop lands
exactly while a call is in flight: no test sleeps to get there.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import signal
import socket
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest

from hook_sidecar._generated import info_pb2, v1alpha3_pb2, v1alpha3_pb2_grpc
from tests.conftest import (
    HeldHook,
    ServerProcess,
    clean_env,
    qat_hook_command,
    running_server,
    spawn_server,
    start_server,
)
from tests.test_server import define, expected, info


def define_async(path: Path, domain: bytes, vmi: bytes, timeout: float = 30) -> Any:
    """Start an OnDefineDomain call; returns (channel, future)."""
    channel = grpc.insecure_channel(f"unix:{path}")
    future = v1alpha3_pb2_grpc.CallbacksStub(channel).OnDefineDomain.future(
        v1alpha3_pb2.OnDefineDomainParams(domainXML=domain, vmi=vmi), timeout=timeout
    )
    return channel, future


# --- a call in flight: cancel, deadline, disconnect, stop ---------------------------------------


def test_client_cancels_mid_call(tmp_path: Path, domain_xml: bytes, vmi_json: bytes) -> None:
    hook = HeldHook()
    with running_server(tmp_path, hook=hook, workers=1):
        channel, future = define_async(tmp_path / "h.sock", domain_xml, vmi_json)
        with channel:
            assert hook.entered.wait(10)
            assert future.cancel()
        hook.release.set()
        assert hook.finished.wait(10)  # the only worker is free again...
        assert define(tmp_path / "h.sock", domain_xml, vmi_json) == expected()  # ...and serves


def test_client_deadline_expires_mid_call(
    tmp_path: Path, domain_xml: bytes, vmi_json: bytes
) -> None:
    hook = HeldHook()
    with running_server(tmp_path, hook=hook, workers=1):
        channel, future = define_async(tmp_path / "h.sock", domain_xml, vmi_json, timeout=2)
        with channel:
            assert hook.entered.wait(10)
            with pytest.raises(grpc.RpcError) as err:
                future.result()  # the hook still holds the call: only the deadline ends it
            assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        hook.release.set()
        assert define(tmp_path / "h.sock", domain_xml, vmi_json) == expected()


def test_client_disconnects_mid_call(tmp_path: Path, domain_xml: bytes, vmi_json: bytes) -> None:
    hook = HeldHook()
    with running_server(tmp_path, hook=hook, workers=1):
        channel, future = define_async(tmp_path / "h.sock", domain_xml, vmi_json)
        assert hook.entered.wait(10)
        channel.close()
        with pytest.raises(grpc.RpcError) as err:
            future.result(10)
        assert err.value.code() == grpc.StatusCode.CANCELLED
        hook.release.set()
        assert hook.finished.wait(10)
        assert define(tmp_path / "h.sock", domain_xml, vmi_json) == expected()


def _stop_in_background(stop: Any) -> Future[bool]:
    pool = ThreadPoolExecutor(max_workers=1)
    future: Future[bool] = pool.submit(stop)
    pool.shutdown(wait=False)
    return future


def test_stop_grace_lets_an_in_flight_call_finish(
    tmp_path: Path, domain_xml: bytes, vmi_json: bytes
) -> None:
    hook = HeldHook()
    with running_server(tmp_path, hook=hook, grace=5.0) as server:
        channel, call = define_async(tmp_path / "h.sock", domain_xml, vmi_json)
        with channel:
            assert hook.entered.wait(10)
            stopped = _stop_in_background(server.stop)
            assert server.stopping.wait(10)  # new calls are refused from here on
            hook.release.set()  # well inside the 5 s grace
            assert call.result(10).domainXML == expected()
            assert stopped.result(10) is True  # nothing left running
    assert not (tmp_path / "h.sock").exists()


def test_stop_does_not_wait_past_the_grace(
    tmp_path: Path, domain_xml: bytes, vmi_json: bytes
) -> None:
    hook = HeldHook()
    with running_server(tmp_path, hook=hook, grace=0.3) as server:
        channel, call = define_async(tmp_path / "h.sock", domain_xml, vmi_json)
        with channel:
            assert hook.entered.wait(10)
            started = time.monotonic()
            try:
                assert server.stop() is False  # a call is still inside the hook
                assert time.monotonic() - started < 2.0
                assert not (tmp_path / "h.sock").exists()
                with pytest.raises(grpc.RpcError) as err:
                    call.result(10)
                assert err.value.code() in (
                    grpc.StatusCode.CANCELLED,
                    grpc.StatusCode.UNAVAILABLE,
                )
            finally:
                hook.release.set()


# --- the real process: signals with a call held open --------------------------------------------

HELD_SERVER = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    from hook_sidecar import callbacks, logs, server
    from hook_sidecar.config import DiscoveryConfig, HookSettings
    from hook_sidecar.hostdevs import TransformOptions

    sockets, gate = Path(sys.argv[1]), sys.argv[2]
    settings = HookSettings(
        DiscoveryConfig(devices=(), verify_sysfs="off"), TransformOptions(), guest_addresses={}
    )
    real = callbacks.bound_hook(settings, {"QAT0": "0000:3d:02.2"})

    def held(domain, vmi, migration_target):
        logs.get().info("test hook: holding the call")
        with open(gate, "rb") as fifo:  # blocks until the test opens the FIFO
            fifo.read(1)
        return real(domain, vmi, migration_target)

    logs.setup("json", capture_stderr=True)
    config = server.ServeConfig(
        hook_socket=str(sockets / "qat.sock"), plugin_socket=str(sockets / "plugin.sock")
    )
    sys.exit(server.run(config, settings, {}, hook=held))
    """
)


@pytest.fixture
def held_server(tmp_path: Path) -> Iterator[tuple[ServerProcess, Path]]:
    """A serving process whose hook holds each call until the test writes to ``gate``."""
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    sockets = tmp_path / "sockets"
    process, log = spawn_server(
        [sys.executable, "-c", HELD_SERVER, str(sockets), str(gate)], tmp_path, clean_env()
    )
    proc = ServerProcess(process, sockets / "qat.sock", sockets / "plugin.sock", log)
    try:
        proc.wait_for_log("ready: serving on")
        yield proc, gate
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)


def _open_gate(gate: Path) -> None:
    """Release the held call; opening the FIFO waits until the hook has it open for reading
    (it logs "holding the call" just before it opens it)."""
    writer = threading.Thread(target=gate.write_bytes, args=(b"go",), daemon=True)
    writer.start()
    writer.join(10)
    assert not writer.is_alive(), "the held hook never opened its gate"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_signal_during_a_call_lets_it_finish_and_exits_within_two_seconds(
    held_server: tuple[ServerProcess, Path], domain_xml: bytes, vmi_json: bytes, signum: int
) -> None:
    proc, gate = held_server
    channel, call = define_async(proc.socket, domain_xml, vmi_json)
    with channel:
        proc.wait_for_log("test hook: holding the call")
        started = time.monotonic()
        proc.process.send_signal(signum)
        proc.wait_for_log("stopping: new calls are refused; 1 running call(s)")
        _open_gate(gate)
        assert call.result(10).domainXML == expected()
    assert proc.process.wait(5) == 0
    assert time.monotonic() - started < 2.0  # the README's promise
    assert not proc.socket.exists()
    assert proc.plugin_socket is not None and not proc.plugin_socket.exists()


def test_a_stuck_call_does_not_keep_the_process_alive(
    held_server: tuple[ServerProcess, Path], domain_xml: bytes, vmi_json: bytes
) -> None:
    proc, _gate = held_server  # never opened: the call stays stuck in the hook
    channel, call = define_async(proc.socket, domain_xml, vmi_json)
    with channel:
        proc.wait_for_log("test hook: holding the call")
        started = time.monotonic()
        proc.process.send_signal(signal.SIGTERM)
        assert proc.process.wait(5) == 0
        assert time.monotonic() - started < 2.0
        with pytest.raises(grpc.RpcError):
            call.result(10)
    assert not proc.socket.exists()
    assert proc.plugin_socket is not None and not proc.plugin_socket.exists()
    proc.log.join()
    messages = [json.loads(line)["msg"] for line in proc.log_lines()]
    assert "1 call(s) still running after the 1 s grace; exiting without them" in messages
    assert messages[-1] == "stopped"


# --- peers that are not virt-launcher -----------------------------------------------------------


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
    assert define(server.socket, domain_xml, vmi_json) == expected()


def test_idle_peer_does_not_block_others(
    server: ServerProcess, domain_xml: bytes, vmi_json: bytes
) -> None:
    idle = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(20)]
    try:
        for peer in idle:
            peer.connect(str(server.socket))
        assert define(server.socket, domain_xml, vmi_json) == expected()
    finally:
        for peer in idle:
            peer.close()


# Sets the open-file limit, then becomes the server: the limit is in place before it starts.
WITH_OPEN_FILE_LIMIT = (
    "import os, resource, sys; "
    "resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[1]), int(sys.argv[2]))); "
    "os.execv(sys.argv[3], sys.argv[3:])"
)


def _serve_with_open_file_limit(tmp_path: Path, soft: int, hard: int) -> ServerProcess:
    socket_dir = tmp_path / "hooks"
    command = qat_hook_command(
        "serve", "--verify-sysfs", "off", "--socket-dir", str(socket_dir), "--log-level", "info"
    )
    process, log = spawn_server(
        [sys.executable, "-c", WITH_OPEN_FILE_LIMIT, str(soft), str(hard), *command],
        tmp_path,
        clean_env(QAT0="0000:3d:02.2"),
    )
    proc = ServerProcess(process, socket_dir / "qat.sock", None, log)
    proc.wait_for_log("ready: serving on")
    return proc


def _open_idle(path: Path, count: int) -> list[socket.socket]:
    peers = []
    for _ in range(count):
        peer = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        peer.connect(str(path))
        peers.append(peer)
    return peers


def test_1100_idle_connections_leave_room_for_real_calls(
    tmp_path: Path, domain_xml: bytes, vmi_json: bytes
) -> None:
    """The default soft limit (1,024) is raised to the hard one at start."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < 4096:
        pytest.skip(f"the hard open-file limit here is {hard}; the test needs 4096")
    proc = _serve_with_open_file_limit(tmp_path, 1024, hard)
    peers = _open_idle(proc.socket, 1100)
    try:
        ready = json.loads(proc.wait_for_log("ready: serving on"))
        assert ready["open_files"] == (hard if hard != resource.RLIM_INFINITY else 1024 * 1024)
        assert define(proc.socket, domain_xml, vmi_json) == expected()
    finally:
        for peer in peers:
            peer.close()
        assert proc.stop() == 0
    assert all(line.startswith("{") for line in proc.log_lines())


def test_descriptor_exhaustion_is_logged_as_json_and_recovers(
    tmp_path: Path, domain_xml: bytes, vmi_json: bytes
) -> None:
    """With no headroom at all, grpc core's complaints are JSON lines, and idle peers are shed."""
    proc = _serve_with_open_file_limit(tmp_path, 1024, 1024)
    peers = _open_idle(proc.socket, 1100)
    try:
        line = proc.wait_for_log("File descriptor limit reached")
        entry = json.loads(line)  # grpc core's own line, re-emitted as JSON
        assert entry["level"] == "error" and entry["component"] == "qat-hook"
        # Peers that never speak HTTP/2 are dropped after the handshake timeout, which
        # frees descriptors: a real call gets through while the 1,100 sockets stay open.
        assert define(proc.socket, domain_xml, vmi_json) == expected()
    finally:
        for peer in peers:
            peer.close()
        assert proc.stop() == 0
    for line in proc.log_lines():
        json.loads(line)  # nothing but JSON on stderr


# --- the process's own lifecycle ----------------------------------------------------------------


def test_socket_directory_removed(tmp_path: Path) -> None:
    proc = start_server(tmp_path)
    shutil.rmtree(proc.socket.parent)
    assert proc.process.wait(5) == 1
    assert not proc.socket.parent.exists()
    proc.log.join()
    messages = [json.loads(line)["msg"] for line in proc.log_lines()]
    assert any("was removed; virt-launcher can no longer reach the hook" in m for m in messages)
    assert messages[-1] == "stopped"


def test_sigterm_while_clients_hammer(
    server: ServerProcess, domain_xml: bytes, vmi_json: bytes
) -> None:
    stop = threading.Event()
    unexpected: list[grpc.StatusCode] = []
    answered = threading.Semaphore(0)

    def client() -> None:
        while not stop.is_set():
            try:
                define(server.socket, domain_xml, vmi_json)
                answered.release()
            except grpc.RpcError as err:
                # Calls that arrive while the server stops are refused: UNAVAILABLE or
                # CANCELLED. A failed hook call (INTERNAL, UNKNOWN) would be a bug.
                if err.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
                    unexpected.append(err.code())

    threads = [threading.Thread(target=client) for _ in range(8)]
    for thread in threads:
        thread.start()
    for _ in range(50):  # the server is busy: 50 calls answered
        assert answered.acquire(timeout=30)
    server.process.send_signal(signal.SIGTERM)
    try:
        assert server.process.wait(5) == 0
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    assert not server.socket.exists()
    assert unexpected == []


def test_load(server: ServerProcess, domain_xml: bytes, vmi_json: bytes) -> None:
    """2,048 calls over 32 concurrent clients, every answer right (memory: bench_sidecar.py)."""

    def client(count: int) -> set[bytes]:
        return {define(server.socket, domain_xml, vmi_json) for _ in range(count)}

    with ThreadPoolExecutor(max_workers=32) as pool:
        assert set().union(*pool.map(client, [64] * 32)) == {expected()}
    assert info(server.socket).name == "qat"
    assert server.stop() == 0
    assert all(line.startswith("{") for line in server.log_lines())


# --- clients that open a call and never send its request ------------------------------------------


H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
H2_HEADERS, H2_RST_STREAM, H2_SETTINGS, H2_DATA = 0x1, 0x3, 0x4, 0x0
H2_END_STREAM, H2_END_HEADERS, H2_ACK = 0x1, 0x4, 0x1


def _h2_frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return (
        len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload
    )


def _hpack_literal(name: str, value: str) -> bytes:
    """RFC 7541 6.2.2, literal header field without indexing, new name, no Huffman."""
    raw_name, raw_value = name.encode(), value.encode()
    assert len(raw_name) < 127 and len(raw_value) < 127
    return b"\x00" + bytes([len(raw_name)]) + raw_name + bytes([len(raw_value)]) + raw_value


class SilentCall:
    """A raw HTTP/2 client: opens one gRPC call (its headers) and never sends the request.

    No HTTP/2 library is in the test environment; the few frames are written by hand. It
    acknowledges the server's SETTINGS, as any HTTP/2 client must, and then only reads.
    """

    def __init__(self, path: Path, method: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect(str(path))
        headers = b"".join(
            _hpack_literal(name, value)
            for name, value in (
                (":method", "POST"),
                (":scheme", "http"),
                (":path", method),
                (":authority", "localhost"),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
            )
        )
        self.sock.sendall(
            H2_PREFACE
            + _h2_frame(H2_SETTINGS, 0, 0)
            + _h2_frame(H2_HEADERS, H2_END_HEADERS, 1, headers)
        )
        while True:  # the server's SETTINGS come first; acknowledge them
            kind, flags, _, _ = self.frame()
            if kind == H2_SETTINGS and not flags & H2_ACK:
                self.sock.sendall(_h2_frame(H2_SETTINGS, H2_ACK, 0))
                break

    def _read(self, count: int) -> bytes:
        data = b""
        while len(data) < count:
            chunk = self.sock.recv(count - len(data))
            if not chunk:
                raise EOFError("the server closed the connection")
            data += chunk
        return data

    def frame(self) -> tuple[int, int, int, bytes]:
        header = self._read(9)
        length = int.from_bytes(header[:3], "big")
        stream = int.from_bytes(header[5:9], "big") & 0x7FFFFFFF
        return header[3], header[4], stream, self._read(length)

    def end_of_call(self) -> tuple[str, bytes]:
        """How the server ended the call: ("reset", error code) or ("trailers", data seen)."""
        data = b""
        while True:
            kind, flags, stream, payload = self.frame()
            if stream != 1:
                continue
            if kind == H2_RST_STREAM:
                return "reset", payload
            if kind == H2_DATA:
                data += payload
            if kind == H2_HEADERS and flags & H2_END_STREAM:
                return "trailers", data

    def close(self) -> None:
        self.sock.close()


ON_DEFINE_DOMAIN_PATH = "/kubevirt.hooks.v1alpha3.Callbacks/OnDefineDomain"


def test_info_answers_while_two_clients_hold_calls_without_their_request(
    tmp_path: Path, domain_xml: bytes, vmi_json: bytes
) -> None:
    """Two workers (the default), two silent calls: Info and a real call are still served.

    The silent calls' limit is far off here, so nothing is rescued by cancelling them.
    """
    with running_server(tmp_path, request_seconds=300.0) as server:
        silent = [SilentCall(tmp_path / "h.sock", ON_DEFINE_DOMAIN_PATH) for _ in range(2)]
        try:
            assert server.wait_for_calls_awaiting_request(2, timeout=10)
            assert info(tmp_path / "h.sock").name == "qat"  # virt-launcher's 1 s timeout
            assert define(tmp_path / "h.sock", domain_xml, vmi_json) == expected()
        finally:
            for call in silent:
                call.close()


def test_a_call_whose_request_never_comes_is_cancelled_with_a_warning(
    tmp_path: Path, hook_log: list[Any]
) -> None:
    with running_server(tmp_path, request_seconds=0.5) as server:
        call = SilentCall(tmp_path / "h.sock", ON_DEFINE_DOMAIN_PATH)
        try:
            assert server.wait_for_calls_awaiting_request(1, timeout=10)
            how, data = call.end_of_call()  # ended by the server (trailers or a reset),
            assert (how, data) in (("reset", b"\x00\x00\x00\x08"), ("trailers", b""))  # no reply
        finally:
            call.close()
    warnings = [r.getMessage() for r in hook_log if r.levelname == "WARNING"]
    assert warnings == [
        "OnDefineDomain: no request message within 0.5 s of the call's headers; cancelled it"
    ]


def test_info_needs_no_request_message(tmp_path: Path) -> None:
    with running_server(tmp_path, request_seconds=300.0):
        call = SilentCall(tmp_path / "h.sock", "/kubevirt.hooks.info.Info/Info")
        try:
            how, data = call.end_of_call()
        finally:
            call.close()
    assert how == "trailers"
    assert info_pb2.InfoResult.FromString(data[5:]).name == "qat"  # after gRPC's 5-byte prefix
