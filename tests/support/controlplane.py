"""A real Kubernetes control plane for tests: etcd and kube-apiserver on loopback.

Both binaries are the test peers built from Go modules (``scripts/peers.sh``:
tests/peers/etcd, tests/peers/kubernetes-1.35, tests/peers/kubernetes-1.36). The
control plane gets fresh certificates (openssl), free loopback ports, a work directory
of its own and a kubeconfig for the project's kubectl and helm. Start-up is bounded:
a component that is not ready in time, or exits, raises ``ControlPlaneError`` whose
first line names the component and its log file, followed by the log's tail. Every
process started here is stopped when the context ends, whatever happened inside it.

There is no kube-controller-manager, scheduler or kubelet: objects are stored and
admitted exactly as on a cluster, pods stay Pending, and a deleted namespace stays
Terminating until ``finish_namespace`` does the namespace controller's last step.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

READY_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0
REQUEST_TIMEOUT = 30.0
LOG_TAIL_LINES = 20


class ControlPlaneError(Exception):
    """A component did not start; the first line of the message names it and its log.

    ``components`` are the processes that had been started, all stopped by the time the
    error leaves ``control_plane``.
    """

    components: list[Component]


@dataclass(frozen=True)
class Release:
    """One Kubernetes release under test and how its API server is started."""

    name: str
    binary: str
    admission_api: str
    extra_args: tuple[str, ...] = ()


RELEASES = (
    Release("1.36", "kube-apiserver-1.36", "v1"),
    # MutatingAdmissionPolicy is beta (off by default) before 1.36.
    Release(
        "1.35",
        "kube-apiserver-1.35",
        "v1beta1",
        (
            "--feature-gates=MutatingAdmissionPolicy=true",
            "--runtime-config=admissionregistration.k8s.io/v1beta1=true",
        ),
    ),
)


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def listening(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _openssl(*args: str, cwd: Path) -> None:
    result = subprocess.run(
        ["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=30, check=False
    )
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise ControlPlaneError(f"openssl {args[0]} failed in {cwd}: {last}")


def make_certificates(directory: Path) -> None:
    """CA, API server, admin client (system:masters) and service-account keys (P-256)."""
    directory.mkdir(parents=True, exist_ok=True)
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2")
    leaf = ("-CA", "ca.crt", "-CAkey", "ca.key", "-addext", "basicConstraints=critical,CA:FALSE")
    _openssl(
        "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-subj", "/CN=qat-hook-test-ca",
        cwd=directory,
    )  # fmt: skip
    _openssl(
        "req", "-x509", *ec, *leaf, "-keyout", "server.key", "-out", "server.crt",
        "-subj", "/CN=kube-apiserver",
        "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
        "-addext", "extendedKeyUsage=serverAuth",
        cwd=directory,
    )  # fmt: skip
    _openssl(
        "req", "-x509", *ec, *leaf, "-keyout", "admin.key", "-out", "admin.crt",
        "-subj", "/O=system:masters/CN=qat-hook-test-admin",
        "-addext", "extendedKeyUsage=clientAuth",
        cwd=directory,
    )  # fmt: skip
    _openssl(
        "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "sa.key",
        cwd=directory,
    )  # fmt: skip
    _openssl("pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=directory)


def write_kubeconfig(path: Path, url: str, certs: Path) -> None:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "test",
                "cluster": {"server": url, "certificate-authority": str(certs / "ca.crt")},
            }
        ],
        "users": [
            {
                "name": "admin",
                "user": {
                    "client-certificate": str(certs / "admin.crt"),
                    "client-key": str(certs / "admin.key"),
                },
            }
        ],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "admin"}}],
        "current-context": "test",
    }
    path.write_text(json.dumps(config, indent=2) + "\n")


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 64 * 1024))
            text = handle.read().decode("utf-8", "replace")
    except OSError as err:
        return f"(no log: {err.strerror})"
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class Component:
    """One started process of the control plane and where its output goes."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path
    port: int

    def failure(self, problem: str) -> ControlPlaneError:
        return ControlPlaneError(
            f"{self.name} {problem}; log: {self.log}\n--- last lines of {self.log.name} ---\n"
            f"{log_tail(self.log)}"
        )

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after ``STOP_TIMEOUT``; only this process, by its pid."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_TIMEOUT)


def start_component(name: str, command: list[str], log: Path, port: int) -> Component:
    handle: IO[bytes]
    with log.open("wb") as handle:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=handle, stderr=subprocess.STDOUT
        )
    return Component(name, process, log, port)


def wait_ready(
    component: Component, probe: Callable[[], bool], timeout: float = READY_TIMEOUT
) -> float:
    """Poll ``probe`` until it says ready; seconds taken. Fails fast if the process exits."""
    start = time.monotonic()
    while True:
        code = component.process.poll()
        if code is not None:
            raise component.failure(f"exited with status {code} before it was ready")
        if probe():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise component.failure(f"was not ready within {timeout:.0f} s")
        time.sleep(0.1)  # polling a readiness endpoint: there is no event to wait on


class ControlPlane:
    """A started control plane: its URL, kubeconfig and a small REST client."""

    def __init__(self, release: Release, workdir: Path, url: str, certs: Path) -> None:
        self.release = release
        self.workdir = workdir
        self.url = url
        self.kubeconfig = workdir / "kubeconfig"
        self.startup_seconds: dict[str, float] = {}
        self.components: list[Component] = []
        write_kubeconfig(self.kubeconfig, url, certs)
        self._tls = ssl.create_default_context(cafile=str(certs / "ca.crt"))
        self._tls.load_cert_chain(str(certs / "admin.crt"), str(certs / "admin.key"))

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> tuple[int, Any]:
        """One API call as the admin; (HTTP status, decoded JSON body or text)."""
        url = self.url + path + ("?" + urllib.parse.urlencode(query) if query else "")
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, method=method)
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(request, context=self._tls, timeout=REQUEST_TIMEOUT) as r:
                status, raw = r.status, r.read()
        except urllib.error.HTTPError as err:
            status, raw = err.code, err.read()
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw.decode("utf-8", "replace")

    def ok(self, method: str, path: str, body: Any = None, **kwargs: Any) -> Any:
        """``request`` that must succeed; else an AssertionError with the server's message."""
        status, answer = self.request(method, path, body, **kwargs)
        if status >= 300:
            message = answer.get("message") if isinstance(answer, dict) else answer
            raise AssertionError(f"{method} {path}: HTTP {status}: {message}")
        return answer

    def readyz(self) -> bool:
        try:
            status, _ = self.request("GET", "/readyz")
        except (OSError, ssl.SSLError):
            return False
        return status == 200

    def finish_namespace(self, name: str) -> None:
        """What the namespace controller does last: drop the finalizer of an emptied namespace."""
        status, namespace = self.request("GET", f"/api/v1/namespaces/{name}")
        if status == 404:
            return
        namespace["spec"]["finalizers"] = []
        self.ok("PUT", f"/api/v1/namespaces/{name}/finalize", namespace)


def etcd_command(binary: Path, data: Path, client: int, peer: int) -> list[str]:
    local = "http://127.0.0.1"
    return [
        str(binary),
        "--name=test",
        f"--data-dir={data}",
        f"--listen-client-urls={local}:{client}",
        f"--advertise-client-urls={local}:{client}",
        f"--listen-peer-urls={local}:{peer}",
        f"--initial-advertise-peer-urls={local}:{peer}",
        f"--initial-cluster=test={local}:{peer}",
        "--unsafe-no-fsync",  # a throw-away store: no durability needed, much less I/O
        "--log-level=warn",
    ]


def apiserver_command(
    binary: Path, release: Release, certs: Path, etcd_port: int, port: int
) -> list[str]:
    return [
        str(binary),
        f"--etcd-servers=http://127.0.0.1:{etcd_port}",
        "--bind-address=127.0.0.1",
        "--advertise-address=127.0.0.1",
        f"--secure-port={port}",
        f"--cert-dir={certs}",
        f"--tls-cert-file={certs / 'server.crt'}",
        f"--tls-private-key-file={certs / 'server.key'}",
        f"--client-ca-file={certs / 'ca.crt'}",
        "--service-account-issuer=https://kubernetes.default.svc",
        f"--service-account-key-file={certs / 'sa.pub'}",
        f"--service-account-signing-key-file={certs / 'sa.key'}",
        "--service-cluster-ip-range=10.96.0.0/24",
        "--authorization-mode=RBAC",
        "--endpoint-reconciler-type=none",
        "--profiling=false",
        "--v=1",
        *release.extra_args,
    ]


@contextlib.contextmanager
def control_plane(
    release: Release, workdir: Path, peer: Callable[[str], Path], timeout: float = READY_TIMEOUT
) -> Iterator[ControlPlane]:
    """etcd and the release's kube-apiserver, ready; both stopped when the context ends.

    ``peer(name)`` gives a peer binary's path. Each readiness wait is bounded by
    ``timeout`` seconds.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    certs = workdir / "pki"
    make_certificates(certs)
    started: list[Component] = []
    try:
        with contextlib.ExitStack() as stack:

            def start(name: str, command: list[str], log: str, port: int) -> Component:
                component = start_component(name, command, workdir / log, port)
                stack.callback(component.stop)  # stopped in reverse order of start
                started.append(component)
                return component

            etcd_port, etcd_peer, port = free_port(), free_port(), free_port()
            etcd_data = workdir / "etcd"
            etcd = start("etcd", etcd_command(peer("etcd"), etcd_data, etcd_port, etcd_peer),
                         "etcd.log", etcd_port)  # fmt: skip
            etcd_health = f"http://127.0.0.1:{etcd_port}/health"
            etcd_seconds = wait_ready(etcd, lambda: _http_ok(etcd_health), timeout)
            command = apiserver_command(peer(release.binary), release, certs, etcd_port, port)
            apiserver = start(f"kube-apiserver {release.name}", command, "kube-apiserver.log", port)
            plane = ControlPlane(release, workdir, f"https://127.0.0.1:{port}", certs)
            plane.components = [etcd, apiserver]
            apiserver_seconds = wait_ready(apiserver, plane.readyz, timeout)
            plane.startup_seconds = {"etcd": etcd_seconds, "kube-apiserver": apiserver_seconds}
            yield plane
    except ControlPlaneError as err:
        err.components = started
        raise


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (OSError, ValueError):
        return False
