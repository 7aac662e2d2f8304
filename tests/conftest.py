"""Shared fixtures: the bundled examples, a real ``qat-hook serve`` process, an in-process server.

Every environment a test hands to the hook is built here from nothing: a developer on
a QAT node exports ``QAT0``, ``PCI_RESOURCE_*`` or ``PCIDEVICE_*``, and none of it may
reach a server under test (nor may a test touch those variables).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import grpc
import pytest
from hypothesis import settings as hypothesis_settings

from hook_sidecar import callbacks, logs
from hook_sidecar.config import DiscoveryConfig, HookSettings
from hook_sidecar.hook import HookOutcome
from hook_sidecar.hostdevs import TransformOptions
from hook_sidecar.server import HookServer, ServeConfig

ROOT = Path(__file__).resolve().parent.parent

# CI runs the same property examples every time, so one submission cannot fail on a case the
# next one never draws; developers' runs stay random and keep exploring.
hypothesis_settings.register_profile("ci", derandomize=True)
if os.environ.get("CI") == "true":
    hypothesis_settings.load_profile("ci")
EXAMPLES = ROOT / "examples"
VF = "0000:3d:02.2"
# What an in-process server is configured with: no sysfs checks, no kubelet.
SETTINGS = HookSettings(
    DiscoveryConfig(devices=(), verify_sysfs="off"), TransformOptions(), guest_addresses={}
)


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
    """A subprocess environment built from nothing but what Python needs, plus ``extra``.

    Built, not filtered: whatever the developer exported (QAT0, PCI_RESOURCE_*, CI...)
    cannot leak into the process under test.
    """
    env = {
        "PATH": os.environ.get("PATH", os.defpath),
        "HOME": os.environ.get("HOME", "/nonexistent"),
        "LANG": "C.UTF-8",
        "PYTHONPATH": str(ROOT),
        "QAT_HOOK_PODRESOURCES_SOCKET": "",
    }
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


class LineLog:
    """A child's stderr, read line by line into a file; tests wait for a line, never sleep."""

    def __init__(self, stream: IO[bytes], path: Path) -> None:
        self.path = path
        self._lines: list[str] = []
        self._changed = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[bytes]) -> None:
        with stream, self.path.open("w") as copy:
            for raw in stream:
                line = raw.decode("utf-8", "backslashreplace").rstrip("\n")
                copy.write(line + "\n")
                copy.flush()
                with self._changed:
                    self._lines.append(line)
                    self._changed.notify_all()
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def lines(self) -> list[str]:
        with self._changed:
            return list(self._lines)

    def wait_for(self, predicate: Callable[[str], bool], timeout: float = 15.0) -> str:
        """The first line matching ``predicate``, waiting for it to be written."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self._changed:
            while True:
                for line in self._lines[seen:]:
                    if predicate(line):
                        return line
                seen = len(self._lines)
                left = deadline - time.monotonic()
                if self._closed or left <= 0:
                    raise AssertionError(f"no such line in the server's log: {self._lines[-20:]}")
                self._changed.wait(left)

    def join(self, timeout: float = 10.0) -> None:
        self._thread.join(timeout)


@dataclass
class ServerProcess:
    process: subprocess.Popen[bytes]
    socket: Path
    plugin_socket: Path | None
    log: LineLog
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.log.path

    def channel(self, plugin: bool = False) -> grpc.Channel:
        path = self.plugin_socket if plugin else self.socket
        return grpc.insecure_channel(f"unix:{path}")

    def log_lines(self) -> list[str]:
        return self.log.lines()

    def wait_for_log(self, text: str, timeout: float = 15.0) -> str:
        return self.log.wait_for(lambda line: text in line, timeout)

    def stop(self, timeout: float = 5.0) -> int:
        if self.process.poll() is None:
            self.process.terminate()
        status = self.process.wait(timeout)
        self.log.join()
        return status


def spawn_server(
    command: list[str], tmp_path: Path, env: Mapping[str, str], **popen: Any
) -> tuple[subprocess.Popen[bytes], LineLog]:
    """Start ``command`` with its stdout and stderr going to a ``LineLog``."""
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=dict(env),
        cwd=ROOT,
        **popen,
    )
    assert process.stdout is not None
    return process, LineLog(process.stdout, tmp_path / f"server-{time.monotonic_ns()}.log")


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
    process, log = spawn_server(qat_hook_command(*command), tmp_path, clean_env(**env))
    proc = ServerProcess(process, socket_dir / "qat.sock", plugin_socket, log)
    try:
        proc.log.wait_for(lambda line: "ready: serving on" in line)  # logged after every bind
    except AssertionError:
        process.kill()
        process.wait()
        raise
    return proc


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A real ``qat-hook serve`` with one VF in QAT0, serving the hook and the plugin API."""
    proc = start_server(tmp_path, plugin=True, QAT0=VF)
    yield proc
    proc.stop()


def accepts(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        probe.close()


# --- the server in this process, with a hook the test controls -----------------------------


class HeldHook:
    """A hook that holds every call until the test releases it.

    ``entered`` is set when a call reaches the hook; the call then waits for ``release``
    and runs ``then`` (the real hook by default). Tests use these events to put a stop,
    a cancel or a disconnect exactly while a call is in flight.
    """

    def __init__(self, then: callbacks.Hook | None = None) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.then = then or callbacks.bound_hook(SETTINGS, {"QAT0": VF})
        self.finished = threading.Event()

    def __call__(self, domain_xml: bytes, vmi_json: bytes, migration_target: bool) -> HookOutcome:
        self.entered.set()
        try:
            if not self.release.wait(60):
                raise AssertionError("the test never released the held call")
            return self.then(domain_xml, vmi_json, migration_target)
        finally:
            self.finished.set()


@contextmanager
def running_server(
    tmp_path: Path,
    *,
    env: Mapping[str, str] | None = None,
    hook: callbacks.Hook | None = None,
    settings: HookSettings = SETTINGS,
    plugin: bool = False,
    **config: Any,
) -> Iterator[HookServer]:
    """A started ``HookServer`` on ``tmp_path/h.sock`` (and ``p.sock``), stopped afterwards."""
    server = HookServer(
        ServeConfig(
            hook_socket=str(tmp_path / "h.sock"),
            plugin_socket=str(tmp_path / "p.sock") if plugin else None,
            **config,
        ),
        settings,
        {"QAT0": VF} if env is None else env,
        hook=hook,
    )
    server.start()
    try:
        yield server
    finally:
        server.stop(0)


@pytest.fixture
def hook_log() -> Iterator[list[logging.LogRecord]]:
    """The hook logger's records, collected whatever ``logs.setup`` did before."""
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Collect(logging.DEBUG)
    logger = logs.get()
    previous_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous_level)
