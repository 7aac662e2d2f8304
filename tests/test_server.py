"""The sidecar over a real unix socket, driven as virt-launcher drives it.

Every call opens a NEW channel (dial, call, close), as virt-launcher does.
Most tests run ``qat-hook serve`` as a subprocess; the INTERNAL-status test
runs the same server class in-process so that it can inject a bug.
"""

from __future__ import annotations

import json
import signal
import socket
import stat
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest

from hook_sidecar import hook as hook_module
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
from hook_sidecar.discovery import DiscoveryConfig
from hook_sidecar.hook import HookSettings
from hook_sidecar.hostdevs import TransformOptions
from hook_sidecar.server import HookServer, ServeConfig
from tests.conftest import EXAMPLES, ServerProcess, run_cli, start_server

EXPECTED = (EXAMPLES / "domain-with-qat.xml").read_bytes()
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
    assert define(server.socket, domain_xml, vmi_json, version) == EXPECTED


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
    assert mutate(server.plugin_socket, domain_xml, vmi_json) == EXPECTED
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


def test_large_request_accepted(server: ServerProcess, domain_xml: bytes) -> None:
    vmi = json.loads((EXAMPLES / "vmi.json").read_text())
    vmi["spec"]["volumes"][1]["cloudInitNoCloud"]["userData"] = "#" * (32 * 1024 * 1024)
    assert define(server.socket, domain_xml, json.dumps(vmi).encode()) == EXPECTED


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
    assert define(server.socket, domain_xml, vmi_json) == EXPECTED


def test_missing_device_is_failed_precondition(
    tmp_path: Path, domain_xml: bytes, vmi_json: bytes
) -> None:
    proc = start_server(tmp_path)
    try:
        error = define_error(proc.socket, domain_xml, vmi_json)
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "no device address was found. Looked at:" in (error.details() or "")
    finally:
        proc.stop()


def test_unexpected_error_is_internal_with_short_message(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    domain_xml: bytes,
    vmi_json: bytes,
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls = {"n": 0}
    real = hook_module.on_define_domain

    def flaky(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("secret internal detail")
        return real(*args, **kwargs)

    monkeypatch.setattr("hook_sidecar.callbacks.on_define_domain", flaky)
    settings = HookSettings(
        DiscoveryConfig(devices=(), verify_sysfs="off"), TransformOptions(), guest_addresses={}
    )
    monkeypatch.setenv("QAT0", "0000:3d:02.2")
    server = HookServer(ServeConfig(hook_socket=tmp_path / "h.sock", plugin_socket=None), settings)
    server.start()
    try:
        error = define_error(tmp_path / "h.sock", domain_xml, vmi_json)
        assert error.code() == grpc.StatusCode.INTERNAL
        assert "secret internal detail" not in (error.details() or "")
        assert "hook-sidecar container's log" in (error.details() or "")
        assert define(tmp_path / "h.sock", domain_xml, vmi_json) == EXPECTED
    finally:
        server.stop()
    assert not (tmp_path / "h.sock").exists()


# --- load ---------------------------------------------------------------------------------------


def test_concurrent_clients(server: ServerProcess, domain_xml: bytes, vmi_json: bytes) -> None:
    def client(_: int) -> set[bytes]:
        return {define(server.socket, domain_xml, vmi_json) for _ in range(50)}

    with ThreadPoolExecutor(max_workers=32) as pool:
        outputs = set().union(*pool.map(client, range(32)))
    assert outputs == {EXPECTED}


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


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_exits_within_two_seconds(server: ServerProcess, signum: int) -> None:
    started = time.monotonic()
    server.process.send_signal(signum)
    assert server.process.wait(5) == 0
    # Designed to exit within 2 s (1.5 s grace + shutdown); a loaded CI machine gets slack.
    assert time.monotonic() - started < 3.0
    assert not server.socket.exists()


def test_sigterm_lets_an_in_flight_call_finish(server: ServerProcess, vmi_json: bytes) -> None:
    disks = "".join(f"<disk type='file'><target dev='vd{i}'/></disk>" for i in range(60000))
    big = f"<domain><name>big</name><devices>{disks}</devices></domain>".encode()
    result: dict[str, Any] = {}

    def call() -> None:
        try:
            result["xml"] = define(server.socket, big, vmi_json)
        except grpc.RpcError as err:  # pragma: no cover - reported below
            result["error"] = err

    thread = threading.Thread(target=call)
    thread.start()
    time.sleep(0.15)
    server.process.send_signal(signal.SIGTERM)
    thread.join(10)
    assert server.process.wait(5) == 0
    assert "error" not in result, result.get("error")
    assert b"ua-qat-0" in result["xml"]


def test_stale_socket_is_replaced(tmp_path: Path, domain_xml: bytes, vmi_json: bytes) -> None:
    path = tmp_path / "hooks" / "qat.sock"
    path.parent.mkdir()
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens: what a crash leaves
    proc = start_server(tmp_path, QAT0="3d:02.2")
    try:
        assert define(proc.socket, domain_xml, vmi_json) == EXPECTED
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


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("--workers", "0"), "--workers must be between 1 and 16"),
        (("--socket-dir", "/tmp/" + "x" * 120), "longer than 107 bytes"),
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
        assert mutate(proc.plugin_socket, domain_xml, vmi_json) == EXPECTED
        assert not (tmp_path / "hooks").exists()
        ready = next(e for e in json_logs(proc) if e["msg"].startswith("ready"))
        assert ready["plugin_socket"] == str(proc.plugin_socket)
        assert ready["socket"] is None
    finally:
        assert proc.stop() == 0
    assert not proc.plugin_socket.exists()


def test_text_log_format(tmp_path: Path) -> None:
    proc = start_server(tmp_path, "--log-format", "text")
    try:
        info(proc.socket)
    finally:
        proc.stop()
    first = proc.log_lines()[0]
    assert " info    ready: serving on " in first
    with pytest.raises(ValueError):
        json.loads(first)
