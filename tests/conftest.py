"""Shared fixtures: the bundled examples, and a real ``qat-hook serve`` process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


@pytest.fixture(scope="session")
def domain_xml() -> bytes:
    return (EXAMPLES / "domain.xml").read_bytes()


@pytest.fixture(scope="session")
def vmi_json() -> bytes:
    return (EXAMPLES / "vmi.json").read_bytes()


@pytest.fixture
def vmi(vmi_json: bytes) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(vmi_json)
    return value


def qat_hook_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "hook_sidecar", *args]


def clean_env(**extra: str) -> dict[str, str]:
    """The test process environment without any QAT/device variable, plus ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("QAT", "PCI_RESOURCE_", "PCIDEVICE_", "POD_"))
    }
    env["PYTHONPATH"] = str(ROOT)
    env["QAT_HOOK_PODRESOURCES_SOCKET"] = ""
    env.update(extra)
    return env


def run_cli(
    *args: str, stdin: bytes = b"", env: dict[str, str] | None = None, **extra: str
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        qat_hook_command(*args),
        input=stdin,
        capture_output=True,
        env=clean_env(**(env or {}), **extra),
        cwd=ROOT,
        timeout=60,
        check=False,
    )


@dataclass
class ServerProcess:
    process: subprocess.Popen[bytes]
    socket: Path
    plugin_socket: Path | None
    log_path: Path

    def channel(self, plugin: bool = False) -> grpc.Channel:
        path = self.plugin_socket if plugin else self.socket
        return grpc.insecure_channel(f"unix:{path}")

    def log_lines(self) -> list[str]:
        return self.log_path.read_text().splitlines()

    def stop(self, timeout: float = 5.0) -> int:
        if self.process.poll() is None:
            self.process.terminate()
        return self.process.wait(timeout)


def _accepts(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        probe.close()


def wait_for_socket(path: Path, process: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """Wait until a server accepts on ``path`` (a stale file there does not count)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and _accepts(path):
            return
        if process.poll() is not None:
            raise AssertionError(f"server exited early with {process.returncode}")
        time.sleep(0.02)
    raise AssertionError(f"socket {path} did not appear in {timeout} s")


def start_server(
    tmp_path: Path, *args: str, plugin: bool = False, hook: bool = True, **env: str
) -> ServerProcess:
    socket_dir = tmp_path / "hooks"
    plugin_socket = tmp_path / "plugin" / "qat" / "qat.sock" if plugin else None
    command = ["serve", "--verify-sysfs", "off", *args]
    if hook:
        command += ["--socket-dir", str(socket_dir)]
    if plugin_socket is not None:
        command += ["--plugin-socket", str(plugin_socket)]
    log_path = tmp_path / f"server-{time.monotonic_ns()}.log"
    log = log_path.open("wb")
    process = subprocess.Popen(
        qat_hook_command(*command), stderr=log, stdout=log, env=clean_env(**env), cwd=ROOT
    )
    log.close()
    socket = socket_dir / "qat.sock"
    if hook:
        wait_for_socket(socket, process)
    if plugin_socket is not None:
        wait_for_socket(plugin_socket, process)
    deadline = time.monotonic() + 10
    while "ready: serving on" not in log_path.read_text():  # logged after every bind
        assert time.monotonic() < deadline, "no ready line"
        time.sleep(0.01)
    return ServerProcess(process, socket, plugin_socket, log_path)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A real ``qat-hook serve`` with one VF in QAT0, serving the hook and the plugin API."""
    proc = start_server(tmp_path, plugin=True, QAT0="0000:3d:02.2")
    yield proc
    proc.stop()
