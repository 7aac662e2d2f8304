"""The sidecar over a real unix socket, driven as virt-launcher drives it.

Every call opens a NEW channel (dial, call, close), as virt-launcher does.
Tests of the API run ``qat-hook serve`` as a subprocess, the real entry point;
tests that need a hook of their own (a bug, a long message) run the same
server class in-process with that hook.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest

from hook_sidecar import callbacks, cli
from hook_sidecar import server as server_module
from hook_sidecar._generated import (
    info_pb2,
    info_pb2_grpc,
    plugins_v1alpha1_pb2,
    plugins_v1alpha1_pb2_grpc,
    v1alpha1_pb2,
    v1alpha1_pb2_grpc,
    v1alpha2_pb2,
    v1alpha2_pb2_grpc,
    v1alpha3_pb2,
    v1alpha3_pb2_grpc,
)
from hook_sidecar.config import MAX_VMI_BYTES
from hook_sidecar.errors import PreconditionFailed
from hook_sidecar.hook import HookOutcome
from hook_sidecar.hostdevs import DEFAULT_MAX_BYTES
from hook_sidecar.server import SocketInUse, prepare_socket
from tests.ci import skip_or_fail
from tests.conftest import (
    EXAMPLES,
    ROOT,
    SETTINGS,
    VF,
    ServerProcess,
    accepts,
    clean_env,
    qat_hook_command,
    run_cli,
    running_server,
    start_server,
)


@functools.cache
def expected() -> bytes:
    """The example domain as the hook itself writes it with one VF in QAT0.

    The transform's own tests pin its exact output; here what matters is that the
    server returns the hook's answer, whatever the transform's current form.
    """
    out = callbacks.bound_hook(SETTINGS, {"QAT0": VF})(
        (EXAMPLES / "domain.xml").read_bytes(), (EXAMPLES / "vmi.json").read_bytes(), False
    ).domain_xml
    assert out.count(b"<hostdev") == 1
    return out


VERSIONS = {
    "v1alpha1": (v1alpha1_pb2, v1alpha1_pb2_grpc),
    "v1alpha2": (v1alpha2_pb2, v1alpha2_pb2_grpc),
    "v1alpha3": (v1alpha3_pb2, v1alpha3_pb2_grpc),
}


def info(path: Path) -> Any:
    with grpc.insecure_channel(f"unix:{path}") as channel:
        return info_pb2_grpc.InfoStub(channel).Info(info_pb2.InfoParams(), timeout=1)


def define(path: Path, domain: bytes, vmi: bytes, version: str = "v1alpha3") -> bytes:
    messages, stubs = VERSIONS[version]
    with grpc.insecure_channel(f"unix:{path}") as channel:
        result = stubs.CallbacksStub(channel).OnDefineDomain(
            messages.OnDefineDomainParams(domainXML=domain, vmi=vmi), timeout=60
        )
    return bytes(result.domainXML)


def define_error(path: Path, domain: bytes, vmi: bytes) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info_:
        define(path, domain, vmi)
    return info_.value


def mutate(
    path: Path,
    domain: bytes,
    vmi: bytes,
    domain_type: str = "libvirt",
    invocation: str = "Boot",
) -> bytes:
    with grpc.insecure_channel(f"unix:{path}") as channel:
        result = plugins_v1alpha1_pb2_grpc.DomainHookServiceStub(channel).MutateDomain(
            plugins_v1alpha1_pb2.MutateDomainRequest(
                domain_type=domain_type,
                domain=domain,
                vmi=vmi,
                sidecar_context=plugins_v1alpha1_pb2.SidecarContext(invocation_context=invocation),
            ),
            timeout=30,
        )
    return bytes(result.domain)


def shutdown(path: Path) -> None:
    with grpc.insecure_channel(f"unix:{path}") as channel:
        v1alpha3_pb2_grpc.CallbacksStub(channel).Shutdown(v1alpha3_pb2.ShutdownParams(), timeout=5)


def json_logs(server: ServerProcess) -> list[dict[str, Any]]:
    return [json.loads(line) for line in server.log_lines() if line.strip()]


# --- Info -------------------------------------------------------------------------------------


def test_info_defaults(server: ServerProcess) -> None:
    result = info(server.socket)
    assert result.name == "qat"
    assert [(p.name, p.priority) for p in result.hookPoints] == [
        ("OnDefineDomain", 0),
        ("Shutdown", 0),
    ]
    assert list(result.versions) == ["v1alpha1", "v1alpha2", "v1alpha3"]


def test_info_with_one_version(tmp_path: Path) -> None:
    proc = start_server(tmp_path, "--version", "v1alpha2", "--name", "qat-test")
    try:
        result = info(proc.socket)
        assert result.name == "qat-test"
        assert [p.name for p in result.hookPoints] == ["OnDefineDomain"]
        assert list(result.versions) == ["v1alpha2"]
        # Unoffered versions are not served at all.
        with pytest.raises(grpc.RpcError) as err:
            define(proc.socket, b"<domain/>", b"{}", "v1alpha3")
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        assert proc.stop() == 0


# --- OnDefineDomain and MutateDomain ------------------------------------------------------------


@pytest.mark.parametrize("version", ["v1alpha1", "v1alpha2", "v1alpha3"])
def test_on_define_domain_each_version(
    server: ServerProcess, domain_xml: bytes, vmi_json: bytes, version: str
) -> None:
    assert define(server.socket, domain_xml, vmi_json, version) == expected()


def test_pre_cloud_init_iso_returns_input(server: ServerProcess) -> None:
    with grpc.insecure_channel(f"unix:{server.socket}") as channel:
        result = v1alpha2_pb2_grpc.CallbacksStub(channel).PreCloudInitIso(
            v1alpha2_pb2.PreCloudInitIsoParams(
                cloudInitNoCloudSource=b"src", vmi=b"{}", cloudInitData=b"data"
            ),
            timeout=5,
        )
    assert (result.cloudInitNoCloudSource, result.cloudInitData) == (b"src", b"data")


def test_mutate_domain(server: ServerProcess, domain_xml: bytes, vmi_json: bytes) -> None:
    assert server.plugin_socket is not None
    assert mutate(server.plugin_socket, domain_xml, vmi_json) == expected()
    # The plugin socket serves only the plugin API.
    with pytest.raises(grpc.RpcError) as err:
        info(server.plugin_socket)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_mutate_domain_rejects_other_domain_types(
    server: ServerProcess, domain_xml: bytes, vmi_json: bytes
) -> None:
    assert server.plugin_socket is not None
    with pytest.raises(grpc.RpcError) as err:
        mutate(server.plugin_socket, domain_xml, vmi_json, domain_type="cloud-hypervisor")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "domain_type 'cloud-hypervisor' is not supported" in (err.value.details() or "")


def test_mutate_domain_refuses_migration_target(
    server: ServerProcess, domain_xml: bytes, vmi_json: bytes
) -> None:
    assert server.plugin_socket is not None
    with pytest.raises(grpc.RpcError) as err:
        mutate(server.plugin_socket, domain_xml, vmi_json, invocation="MigrationTarget")
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "cannot be live-migrated" in (err.value.details() or "")
    # A VMI without QAT migrates as usual: passed through.
    plain = json.dumps({"metadata": {"name": "plain", "namespace": "ns"}}).encode()
    assert (
        mutate(server.plugin_socket, domain_xml, plain, invocation="MigrationTarget") == domain_xml
    )


def test_vmi_asking_nothing_passes_through_byte_identical(server: ServerProcess) -> None:
    odd = b"<domain type='kvm'>  <name>x</name><devices></devices>  </domain>"
    vmi = json.dumps({"metadata": {"name": "plain", "namespace": "ns"}}).encode()
    assert define(server.socket, odd, vmi) == odd
    # Not even parsed: a VMI that does not ask never fails on its domain.
    assert define(server.socket, b"not xml at all", vmi) == b"not xml at all"


def test_the_largest_vmi_is_accepted(server: ServerProcess, domain_xml: bytes) -> None:
    vmi = json.loads((EXAMPLES / "vmi.json").read_text())
    padding = MAX_VMI_BYTES - len(json.dumps(vmi)) - 64
    vmi["spec"]["volumes"][1]["cloudInitNoCloud"]["userData"] = "#" * padding
    assert define(server.socket, domain_xml, json.dumps(vmi).encode()) == expected()


def test_a_message_over_the_limit_is_refused_before_it_is_kept(
    server: ServerProcess, domain_xml: bytes
) -> None:
    # The limit is the domain cap (the default here) plus the VMI cap plus framing.
    limit = server_module.message_limit(DEFAULT_MAX_BYTES)
    error = define_error(server.socket, domain_xml, b" " * limit)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert define(server.socket, domain_xml, (EXAMPLES / "vmi.json").read_bytes()) == expected()


# --- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("domain", "vmi", "code", "needle"),
    [
        (b"<domain>", None, grpc.StatusCode.INVALID_ARGUMENT, "not well-formed at line 1"),
        (b"<network/>", None, grpc.StatusCode.INVALID_ARGUMENT, "root element is <network>"),
        (None, b"{broken", grpc.StatusCode.INVALID_ARGUMENT, "VMI is not valid JSON"),
        (
            None,
            json.dumps(
                {
                    "metadata": {"name": "two", "namespace": "ns"},
                    "spec": {"domain": {"resources": {"limits": {"qat.intel.com/cy": "2"}}}},
                }
            ).encode(),
            grpc.StatusCode.FAILED_PRECONDITION,
            "VMI ns/two asks for 2 QAT VF(s)",
        ),
    ],
)
def test_error_statuses_and_server_keeps_serving(
    server: ServerProcess,
    domain_xml: bytes,
    vmi_json: bytes,
    domain: bytes | None,
    vmi: bytes | None,
    code: grpc.StatusCode,
    needle: str,
) -> None:
    error = define_error(server.socket, domain or domain_xml, vmi or vmi_json)
    assert error.code() == code
    details = error.details() or ""
    assert details.startswith("QAT hook: ")
    assert needle in details
    assert "Traceback" not in details
    assert define(server.socket, domain_xml, vmi_json) == expected()


def test_missing_device_is_failed_precondition(
    tmp_path: Path, domain_xml: bytes, vmi_json: bytes
) -> None:
    proc = start_server(tmp_path)
    try:
        error = define_error(proc.socket, domain_xml, vmi_json)
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert (error.details() or "").startswith("QAT hook: VMI default/vmi-qat asks for")
    finally:
        proc.stop()


def test_unexpected_error_is_internal_with_short_message(
    tmp_path: Path, domain_xml: bytes, vmi_json: bytes, hook_log: list[logging.LogRecord]
) -> None:
    real = callbacks.bound_hook(SETTINGS, {"QAT0": VF})
    calls = []

    def flaky(domain: bytes, vmi: bytes, migration_target: bool) -> HookOutcome:
        calls.append(domain)
        if len(calls) == 1:
            raise RuntimeError("secret internal detail")
        return real(domain, vmi, migration_target)

    with running_server(tmp_path, hook=flaky) as server:
        error = define_error(tmp_path / "h.sock", domain_xml, vmi_json)
        assert error.code() == grpc.StatusCode.INTERNAL
        assert "secret internal detail" not in (error.details() or "")
        assert "hook-sidecar container's log" in (error.details() or "")
        assert define(tmp_path / "h.sock", domain_xml, vmi_json) == expected()
        server.stop()
    assert not (tmp_path / "h.sock").exists()
    failure = next(r for r in hook_log if r.getMessage().endswith("failed unexpectedly"))
    assert failure.exc_info is not None and "secret internal detail" in str(failure.exc_info[1])


@pytest.mark.parametrize(
    ("method", "payload"),
    [
        ("/kubevirt.hooks.v1alpha3.Callbacks/OnDefineDomain", b"\xff\xff\xff"),
        ("/kubevirt.hooks.v1alpha1.Callbacks/OnDefineDomain", b"\x0a\x05ab"),  # truncated
        # domain_type is a proto3 string: invalid UTF-8 cannot be decoded.
        ("/kubevirt.hooks.plugins.v1alpha1.DomainHookService/MutateDomain", b"\x0a\x02\xc3\x28"),
    ],
    ids=["wire-garbage", "truncated", "invalid-utf8-string"],
)
def test_a_request_that_cannot_be_decoded_is_invalid_argument_with_a_warning(
    tmp_path: Path, hook_log: list[logging.LogRecord], method: str, payload: bytes
) -> None:
    with running_server(tmp_path, plugin=True) as running:
        path = running.config.plugin_socket if "plugins" in method else running.config.hook_socket
        with (
            grpc.insecure_channel(f"unix:{path}") as channel,
            pytest.raises(grpc.RpcError) as raised,
        ):
            call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
            call(payload, timeout=10)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    name = method.rsplit("/", 1)[1]
    assert (raised.value.details() or "").startswith(
        f"QAT hook: the {name} request cannot be decoded ("
    )
    warnings = [r.getMessage() for r in hook_log if r.levelname == "WARNING"]
    assert len(warnings) == 1 and warnings[0].startswith(f"{name} refused: QAT hook: the {name}")


# --- messages: one line, at most 2 KiB, whatever they quote -------------------------------------


def _refusing(message: str) -> callbacks.Hook:
    def hook(domain: bytes, vmi: bytes, migration_target: bool) -> HookOutcome:
        raise PreconditionFailed(message)

    return hook


@pytest.mark.parametrize(
    "message",
    [
        "found " + ", ".join(f"0000:{i // 256:02x}:{i % 32:02x}.{i % 8}" for i in range(10_000)),
        "kubelet reports device id '" + "d" * 1_000_000 + "'",
        "VMI ns/two\nlines\r\x1b[2J with a lone \udc80 surrogate",
    ],
    ids=["10k-devices", "1MB-device-id", "controls-and-surrogate"],
)
def test_status_message_is_one_line_of_at_most_2_kib(
    tmp_path: Path, domain_xml: bytes, vmi_json: bytes, message: str
) -> None:
    with running_server(tmp_path, hook=_refusing(message)):
        error = define_error(tmp_path / "h.sock", domain_xml, vmi_json)
    details = error.details() or ""
    # The hook's own message arrives (not RESOURCE_EXHAUSTED, not a codec error)...
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert details.startswith(f"QAT hook: {message[:5]}")
    # ...on one line, within 2 KiB, saying what was cut.
    assert len(details.encode()) <= 2048
    assert len(details.splitlines()) == 1
    if len(message) > 2048:
        assert details.endswith("more bytes]")
    else:
        assert details == "QAT hook: VMI ns/two\\nlines\\r\\x1b[2J with a lone \\udc80 surrogate"


def test_real_refusal_quoting_a_hostile_vmi_name_is_one_short_line(
    tmp_path: Path, domain_xml: bytes, vmi: dict[str, Any]
) -> None:
    vmi["metadata"]["name"] = "evil\nQAT hook: forged\udc80" + "n" * 1_000_000
    payload = json.dumps(vmi).encode()  # JSON escapes keep the lone surrogate encodable
    with running_server(tmp_path, env={}):  # asks for a VF, none is found
        error = define_error(tmp_path / "h.sock", domain_xml, payload)
    details = error.details() or ""
    assert error.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT)
    assert details.startswith("QAT hook: ")
    assert len(details.encode()) <= 2048 and len(details.splitlines()) == 1


def test_huge_domain_type_is_refused_in_a_short_message(
    tmp_path: Path, domain_xml: bytes, vmi_json: bytes
) -> None:
    with running_server(tmp_path, plugin=True), pytest.raises(grpc.RpcError) as err:
        mutate(tmp_path / "p.sock", domain_xml, vmi_json, domain_type="x\n" * 500_000)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = err.value.details() or ""
    assert "is not supported" in details
    assert len(details.encode()) <= 2048 and len(details.splitlines()) == 1


# --- log entries --------------------------------------------------------------------------------


def test_discovery_warnings_reach_the_log_with_the_vmi_name(
    tmp_path: Path, domain_xml: bytes, vmi_json: bytes, hook_log: list[logging.LogRecord]
) -> None:
    # sysfs checks in "warn" mode against an empty sysfs: the VF is injected, with a warning.
    settings = SETTINGS._replace(
        discovery=SETTINGS.discovery._replace(verify_sysfs="warn", sysfs_root=tmp_path / "sys"),
    )
    with running_server(tmp_path, settings=settings):
        assert define(tmp_path / "h.sock", domain_xml, vmi_json) == expected()
    warnings = [r for r in hook_log if r.levelno == logging.WARNING]
    assert warnings, [r.getMessage() for r in hook_log]
    assert all(getattr(r, "vmi", None) == "default/vmi-qat" for r in warnings)
    assert any(VF in r.getMessage() and "sysfs" in r.getMessage() for r in warnings)


# --- load ---------------------------------------------------------------------------------------


def test_concurrent_clients(server: ServerProcess, domain_xml: bytes, vmi_json: bytes) -> None:
    def client(_: int) -> set[bytes]:
        return {define(server.socket, domain_xml, vmi_json) for _ in range(50)}

    with ThreadPoolExecutor(max_workers=32) as pool:
        outputs = set().union(*pool.map(client, range(32)))
    assert outputs == {expected()}


def thread_recording_hook(threads: list[threading.Thread]) -> callbacks.Hook:
    """The real hook, recording in ``threads`` the thread each call ran on."""
    real = callbacks.bound_hook(SETTINGS, {"QAT0": VF})

    def hook(domain: bytes, vmi: bytes, migration_target: bool) -> HookOutcome:
        threads.append(threading.current_thread())
        return real(domain, vmi, migration_target)

    return hook


def test_the_threads_that_ran_calls_end_once_handed_their_budget_of_domain_xml(
    tmp_path: Path, domain_xml: bytes, vmi_json: bytes
) -> None:
    """lxml keeps the names a thread parsed for the thread's life: the threads are renewed."""
    threads: list[threading.Thread] = []
    hook = thread_recording_hook(threads)
    budget = 3 * len(domain_xml)
    with running_server(tmp_path, hook=hook, thread_bytes=budget):
        # Each call uses new element and attribute names, as a hostile client would.
        for call in range(7):
            domain = domain_xml.replace(b"</devices>", f'<x{call} y{call}="1"/></devices>'.encode())
            assert b"ua-qat-0" in define(tmp_path / "h.sock", domain, vmi_json)
    first, second, third = threads[0:3], threads[3:6], threads[6:]
    assert len({id(t) for t in first}) == 1  # below the budget, calls share a thread
    assert len({id(t) for t in second}) == 1
    assert first[0] is not second[0] and second[0] is not third[0]
    for retired in (first[0], second[0]):
        retired.join(10)
        assert not retired.is_alive()


def test_calls_with_many_new_names_are_served_on_renewed_threads(
    tmp_path: Path, vmi_json: bytes
) -> None:
    """``qat-hook serve``: domains near the cap, each of new names, answered across renewals."""
    proc = start_server(tmp_path, QAT0=VF)
    try:
        for call in range(5):
            names = "".join(f'<n{call}x{k} a{call}x{k}="1"/>' for k in range(9000))
            domain = f"<domain><name>vm</name><devices>{names}</devices></domain>".encode()
            assert DEFAULT_MAX_BYTES // 2 < len(domain) < DEFAULT_MAX_BYTES
            assert define(proc.socket, domain, vmi_json).count(b"<hostdev") == 1
    finally:
        assert proc.stop() == 0


# --- lifecycle ----------------------------------------------------------------------------------


def test_ready_line_and_socket_permissions(server: ServerProcess) -> None:
    ready = [entry for entry in json_logs(server) if entry["msg"].startswith("ready")]
    assert len(ready) == 1
    assert ready[0]["socket"] == str(server.socket)
    assert ready[0]["versions"] == ["v1alpha1", "v1alpha2", "v1alpha3"]
    assert ready[0]["version"]
    assert stat.S_IMODE(server.socket.stat().st_mode) == 0o666


def test_log_lines_are_kubevirt_json(
    server: ServerProcess, domain_xml: bytes, vmi_json: bytes
) -> None:
    define(server.socket, domain_xml, vmi_json)
    define_error(server.socket, b"<broken", vmi_json)
    server.wait_for_log('"code":"INVALID_ARGUMENT"')  # written before the reply; read after
    entries = json_logs(server)
    for entry in entries:
        assert entry["component"] == "qat-hook"
        assert entry["level"] in ("info", "warning", "error")
        assert entry["timestamp"].endswith("Z") and len(entry["timestamp"]) == 27
        assert entry["msg"]
    call = next(e for e in entries if e["msg"].startswith("OnDefineDomain: injected"))
    assert call["vmi"] == "default/vmi-qat"
    assert call["devices"] == ["0000:3d:02.2"]
    assert call["source"] == "environment"
    assert isinstance(call["duration_ms"], float)
    refused = next(e for e in entries if e["level"] == "error")
    assert refused["code"] == "INVALID_ARGUMENT"


def test_shutdown_exits_cleanly(server: ServerProcess) -> None:
    shutdown(server.socket)
    assert server.process.wait(5) == 0
    assert not server.socket.exists()
    assert server.plugin_socket is not None and not server.plugin_socket.exists()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_signal_exits_within_two_seconds(server: ServerProcess, signum: int) -> None:
    started = time.monotonic()
    server.process.send_signal(signum)
    assert server.process.wait(5) == 0
    assert time.monotonic() - started < 2.0  # the README's promise
    assert not server.socket.exists()
    assert server.plugin_socket is not None and not server.plugin_socket.exists()
    server.wait_for_log(f"received {signal.Signals(signum).name}; stopping")


def test_stale_socket_is_replaced(tmp_path: Path, domain_xml: bytes, vmi_json: bytes) -> None:
    path = tmp_path / "hooks" / "qat.sock"
    path.parent.mkdir()
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens: what a crash leaves
    proc = start_server(tmp_path, QAT0="3d:02.2")
    try:
        assert define(proc.socket, domain_xml, vmi_json) == expected()
        assert any(e["msg"] == "removed stale socket" for e in json_logs(proc))
    finally:
        assert proc.stop() == 0


def test_live_socket_is_not_stolen(server: ServerProcess, tmp_path: Path) -> None:
    proc = run_cli("serve", "--socket-dir", str(server.socket.parent))
    assert proc.returncode == 1
    assert "a server is already listening on" in proc.stderr.decode()
    assert info(server.socket).name == "qat"


def test_plain_file_in_the_way_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "qat.sock").write_text("not a socket")
    proc = run_cli("serve", "--socket-dir", str(tmp_path))
    assert proc.returncode == 1
    assert "exists and is not a socket" in proc.stderr.decode()


def test_busy_socket_is_left_alone(tmp_path: Path) -> None:
    """A full accept backlog (EAGAIN) is a live server, not a stale file."""
    path = tmp_path / "qat.sock"
    live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    live.bind(str(path))
    live.listen(0)
    waiting = []
    try:
        while True:  # fill the backlog: the server is alive but does not accept yet
            peer = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            peer.setblocking(False)
            waiting.append(peer)
            try:
                peer.connect(str(path))
            except BlockingIOError:
                break
        with pytest.raises(SocketInUse, match=r"backlog is full \(EAGAIN\); left alone"):
            prepare_socket(str(path))
        assert path.exists()
        live.accept()[0].close()  # the server is still reachable at its path
    finally:
        for peer in waiting:
            peer.close()
        live.close()


def without_dac_override(command: list[str]) -> list[str]:
    """Root ignores file modes; run ``command`` without the capabilities that let it."""
    if os.geteuid() != 0:
        return command
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        skip_or_fail("setpriv (util-linux) is needed to test permissions as root")
    caps = "-dac_override,-dac_read_search"
    return [str(setpriv), f"--inh-caps={caps}", f"--bounding-set={caps}", *command]


def serve_unprivileged(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        without_dac_override(qat_hook_command("serve", "--verify-sysfs", "off", *args)),
        capture_output=True,
        env=clean_env(),
        cwd=ROOT,
        timeout=20,  # bounds a regression where the server starts and serves
        check=False,
    )


def test_socket_we_may_not_connect_to_is_left_alone(tmp_path: Path) -> None:
    """EACCES on a socket another user owns says nothing about whether it is stale."""
    path = tmp_path / "qat.sock"
    live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    live.bind(str(path))
    live.listen(8)
    path.chmod(0)
    try:
        proc = serve_unprivileged("--socket-dir", str(tmp_path))
        message = proc.stderr.decode()
        assert proc.returncode == 1, message
        assert "connecting to it failed with EACCES" in message
        assert "left alone" in message
        assert len(message.splitlines()) == 1
        assert path.exists()
    finally:
        live.close()


def test_setup_failures_are_one_line_naming_the_path(tmp_path: Path) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    read_only = tmp_path / "read-only"
    read_only.mkdir(mode=0o555)
    cases = {
        str(a_file): f"socket directory {a_file} is not a directory",
        str(a_file / "below"): f"socket directory {a_file / 'below'} is not a directory",
        str(read_only): f"no write permission in socket directory {read_only}",
        str(read_only / "sub"): f"cannot create socket directory {read_only / 'sub'}: Permission",
        "/tmp/" + "x" * 120: "is too long: at most 107 bytes",
    }
    for socket_dir, needle in cases.items():
        proc = serve_unprivileged("--socket-dir", socket_dir)
        message = proc.stderr.decode()
        assert proc.returncode == 1, message
        assert message.startswith("qat-hook: error: ") and needle in message, message
        assert len(message.splitlines()) == 1
        assert "internal error" not in message


def test_stop_removes_only_its_own_socket(tmp_path: Path) -> None:
    """A newer server that took over the path keeps its socket when the old one stops."""
    with running_server(tmp_path) as old:
        path = tmp_path / "h.sock"
        path.unlink()
        newer = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        newer.bind(str(path))
        newer.listen(1)
        try:
            old.stop()
            assert path.exists()
            assert accepts(path)
        finally:
            newer.close()


def test_connections_that_never_speak_http2_are_dropped(tmp_path: Path) -> None:
    with running_server(tmp_path, handshake_seconds=0.2):
        peer = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        peer.settimeout(10)  # a bound, not a wait: the server closes long before
        peer.connect(str(tmp_path / "h.sock"))
        try:
            while peer.recv(4096):  # the server's SETTINGS, then the end of the stream
                pass
        except ConnectionResetError:
            pass
        finally:
            peer.close()


def test_idle_http2_connections_are_shed(tmp_path: Path) -> None:
    became_idle = threading.Event()
    states: list[grpc.ChannelConnectivity] = []

    def watch(state: grpc.ChannelConnectivity) -> None:
        states.append(state)
        if grpc.ChannelConnectivity.READY in states and state == grpc.ChannelConnectivity.IDLE:
            became_idle.set()

    with (
        running_server(tmp_path, idle_seconds=0.2),
        grpc.insecure_channel(f"unix:{tmp_path / 'h.sock'}") as channel,
    ):
        channel.subscribe(watch, try_to_connect=False)
        info_pb2_grpc.InfoStub(channel).Info(info_pb2.InfoParams(), timeout=5)
        # The client keeps the connection; only the server's GOAWAY makes it idle.
        assert became_idle.wait(10), states
        channel.unsubscribe(watch)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("--workers", "0"), "--workers must be between 1 and 16"),
    ],
)
def test_serve_configuration_errors(args: tuple[str, ...], needle: str) -> None:
    proc = run_cli("serve", *args)
    assert proc.returncode == 1
    assert needle in proc.stderr.decode()


def test_versions_from_environment(tmp_path: Path) -> None:
    proc = start_server(tmp_path, QAT_HOOK_VERSIONS="v1alpha1,v1alpha3")
    try:
        assert list(info(proc.socket).versions) == ["v1alpha1", "v1alpha3"]
    finally:
        proc.stop()
    bad = run_cli("serve", "--socket-dir", str(tmp_path / "x"), QAT_HOOK_VERSIONS="v2")
    assert bad.returncode == 1
    assert "unknown hook API version v2" in bad.stderr.decode()


def test_plugin_only_mode(tmp_path: Path, domain_xml: bytes, vmi_json: bytes) -> None:
    proc = start_server(tmp_path, plugin=True, hook=False, QAT0="3d:02.2")
    try:
        assert proc.plugin_socket is not None
        assert mutate(proc.plugin_socket, domain_xml, vmi_json) == expected()
        assert not (tmp_path / "hooks").exists()
        ready = next(e for e in json_logs(proc) if e["msg"].startswith("ready"))
        assert ready["plugin_socket"] == str(proc.plugin_socket)
        assert ready["socket"] is None
    finally:
        assert proc.stop() == 0
    assert not proc.plugin_socket.exists()


def test_text_log_format(tmp_path: Path, domain_xml: bytes, vmi: dict[str, Any]) -> None:
    forged = "2026-11-27T00:00:00.000000Z error   forged entry"
    vmi["metadata"]["name"] = f"evil\n{forged}"
    proc = start_server(tmp_path, "--log-format", "text", QAT0=VF)
    try:
        info(proc.socket)
        define(proc.socket, domain_xml, json.dumps(vmi).encode())
        proc.wait_for_log("OnDefineDomain: injected 1 device(s)")
    finally:
        proc.stop()
    lines = proc.log_lines()
    assert " info    ready: serving on " in lines[0]
    with pytest.raises(ValueError):
        json.loads(lines[0])
    # The name is shown, escaped, inside the call's line: it starts no line of its own.
    call = next(line for line in lines if "OnDefineDomain: injected" in line)
    assert f"vmi=default/evil\\n{forged}" in call
    assert not any(line.startswith(forged) for line in lines)


def test_the_warm_up_imports_its_modules_in_a_daemon_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hook_log: list[logging.LogRecord]
) -> None:
    name = f"warm_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        thread = server_module.warm_up((name,))
        assert thread.daemon
        thread.join(30)
        assert not thread.is_alive()
        assert name in sys.modules
        assert any(r.getMessage() == f"warm-up: loaded {name}" for r in hook_log)
    finally:
        sys.modules.pop(name, None)


def test_a_failed_warm_up_is_a_warning_and_serving_goes_on(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    hook_log: list[logging.LogRecord],
    domain_xml: bytes,
    vmi_json: bytes,
) -> None:
    broken = f"warm_broken_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{broken}.py").write_text("raise RuntimeError('cannot load')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with running_server(tmp_path):
        thread = server_module.warm_up((broken, "hook_sidecar.transform"))
        thread.join(30)
        assert not thread.is_alive()
        warnings = [r.getMessage() for r in hook_log if r.levelno == logging.WARNING]
        assert warnings == [
            f"warm-up: cannot import {broken} (RuntimeError: cannot load); "
            "the first call that needs it will try again"
        ]
        assert b"ua-qat-0" in define(tmp_path / "h.sock", domain_xml, vmi_json)
    sys.modules.pop(broken, None)


def test_the_warm_up_readies_a_thread_before_the_first_call(
    tmp_path: Path, hook_log: list[logging.LogRecord], domain_xml: bytes, vmi_json: bytes
) -> None:
    """After Info, a trial transform runs on a server thread: the first call starts none."""
    ran_on: list[threading.Thread] = []
    hook = thread_recording_hook(ran_on)
    with running_server(tmp_path, hook=hook) as server:
        warming = server.warm_up()
        assert info(tmp_path / "h.sock").name == "qat"
        warming.join(30)
        assert not warming.is_alive()
        ready = [r for r in hook_log if r.getMessage() == "warm-up: a serving thread is ready"]
        assert len(ready) == 1
        started = threading.enumerate()
        assert any(thread.ident == ready[0].thread for thread in started)
        assert b"ua-qat-0" in define(tmp_path / "h.sock", domain_xml, vmi_json)
    assert len(ran_on) == 1 and ran_on[0] in started


def test_the_warm_up_waits_for_infos_reply(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """virt-launcher's Info never shares the CPU with the warm-up's imports."""
    name = f"warm_after_info_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(server_module, "WARM_UP_MODULES", (name,))
    monkeypatch.setattr(server_module, "PRIME_WAIT_SECONDS", 60.0)
    try:
        with running_server(tmp_path) as server:
            warming = server.warm_up()
            warming.join(0.3)  # without the wait it imports one tiny module and ends
            assert warming.is_alive() and name not in sys.modules
            assert info(tmp_path / "h.sock").name == "qat"
            warming.join(30)
            assert not warming.is_alive() and name in sys.modules
    finally:
        sys.modules.pop(name, None)


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        ((), {}, True),
        ((), {"QAT_HOOK_WARM_UP": "off"}, False),
        (("--warm-up", "off"), {}, False),
        (("--warm-up", "on"), {"QAT_HOOK_WARM_UP": "off"}, True),
    ],
)
def test_the_warm_up_is_on_unless_turned_off(
    args: tuple[str, ...], env: dict[str, str], expected: bool
) -> None:
    parsed = cli.build_parser(env).parse_args(["serve", *args])
    assert cli.serve_config(parsed).warm_up is expected


def test_run_starts_the_warm_up_only_when_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[bool] = []
    monkeypatch.setattr(server_module, "warm_up", lambda *_, **__: started.append(True))
    real_start = server_module.HookServer.start

    def start_then_lose_the_socket(self: server_module.HookServer) -> None:
        real_start(self)
        assert self.config.hook_socket is not None
        os.unlink(self.config.hook_socket)  # run() notices, stops and returns 1

    monkeypatch.setattr(server_module.HookServer, "start", start_then_lose_the_socket)
    for warm in (False, True):
        config = server_module.ServeConfig(
            hook_socket=str(tmp_path / f"{warm}.sock"), plugin_socket=None, warm_up=warm
        )
        status = server_module.run(
            config, SETTINGS, {}, install_signals=False, exit_when_stuck=False
        )
        assert status == 1
        assert started == ([True] if warm else [])
