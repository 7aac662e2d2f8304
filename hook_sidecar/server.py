"""``qat-hook serve``: socket lifecycle, the gRPC servers, signals and shutdown.

virt-launcher finds the hook by scanning ``/var/run/kubevirt-hooks/<container>/``
for a socket, and a structured plugin by a fixed socket path; either way the
socket file is the whole interface. So this module is careful about it: a
stale file from a crashed run is replaced, a live one is never stolen, the
file is connectable by virt-launcher's uid, and it is gone when we exit.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import stat
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import grpc

from hook_sidecar import __version__, callbacks, logs
from hook_sidecar.discovery import env_snapshot
from hook_sidecar.errors import HookError
from hook_sidecar.hook import HookSettings
from hook_sidecar.settings import DEFAULT_SOCKET_DIR, DEFAULT_SOCKET_NAME, repeated

# A VMI with large cloud-init data easily passes grpc's 4 MiB default.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# SIGTERM must end the process within 2 s; in-flight calls get most of that.
STOP_GRACE_SECONDS = 1.5
# sun_path is 108 bytes including the terminating NUL.
MAX_SOCKET_PATH = 107


class SocketInUse(HookError):
    """Another server answers on the socket path."""


@dataclass(frozen=True)
class ServeConfig:
    hook_socket: Path | None
    plugin_socket: Path | None
    name: str = "qat"
    versions: tuple[str, ...] = callbacks.ALL_VERSIONS
    workers: int = 2


@dataclass
class _Listener:
    path: Path
    server: grpc.Server
    inode: int = field(default=0)


def prepare_socket(path: Path) -> None:
    """Make ``path`` free to bind: create the directory, clear a stale socket, refuse a live one."""
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise HookError(
            f"socket path {path} is longer than {MAX_SOCKET_PATH} bytes; use a shorter path"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise HookError(f"{path} exists and is not a socket; remove it or choose another path")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink()  # nobody listens: a crashed run left it behind
        logs.get().info("removed stale socket", extra={"socket": str(path)})
        return
    finally:
        probe.close()
    raise SocketInUse(
        f"a server is already listening on {path}; stop it or choose another --socket-name"
    )


def _bind(
    path: Path, add_services: Callable[[grpc.Server], None], executor: ThreadPoolExecutor
) -> _Listener:
    prepare_socket(path)
    server = grpc.server(
        executor,
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
        ],
    )
    add_services(server)
    server.add_insecure_port(f"unix:{path}")
    server.start()
    # virt-launcher may run as uid 107 while we run as root (or the reverse):
    # connecting needs write permission on the socket file. The socket lives
    # in a directory shared only inside the pod.
    os.chmod(path, 0o666)
    return _Listener(path=path, server=server, inode=path.stat().st_ino)


def _remove(listener: _Listener) -> None:
    """Remove our socket file, but never one a newer server has put in its place."""
    try:
        if listener.path.stat().st_ino == listener.inode:
            listener.path.unlink()
    except FileNotFoundError:
        pass


class HookServer:
    """The running sidecar: one or two listeners sharing a small thread pool."""

    def __init__(self, config: ServeConfig, settings: HookSettings) -> None:
        self.config = config
        self.stop_requested = threading.Event()
        self._runner = callbacks.HookRunner(settings, env_snapshot())
        self._executor = ThreadPoolExecutor(
            max_workers=config.workers, thread_name_prefix="qat-hook"
        )
        self._listeners: list[_Listener] = []

    def start(self) -> None:
        config, runner = self.config, self._runner
        wanted: list[tuple[Path | None, Callable[[grpc.Server], None]]] = [
            (
                config.hook_socket,
                lambda server: callbacks.add_hook_services(
                    server, runner, config.name, config.versions, self.stop_requested.set
                ),
            ),
            (config.plugin_socket, lambda server: callbacks.add_plugin_services(server, runner)),
        ]
        try:
            for path, add_services in wanted:
                if path is not None:
                    self._listeners.append(_bind(path, add_services, self._executor))
        except BaseException:
            self.stop()
            raise
        where = ", ".join(str(listener.path) for listener in self._listeners)
        logs.get().info(
            "ready: serving on %s",
            where,
            extra={
                "version": __version__,
                "socket": str(self.config.hook_socket) if self.config.hook_socket else None,
                "plugin_socket": (
                    str(self.config.plugin_socket) if self.config.plugin_socket else None
                ),
                "versions": list(self.config.versions) if self.config.hook_socket else [],
            },
        )

    def missing_socket(self) -> Path | None:
        """A socket of ours that is gone from its path (its directory was removed, say)."""
        for listener in self._listeners:
            try:
                if listener.path.stat().st_ino == listener.inode:
                    continue
            except OSError:
                pass
            return listener.path
        return None

    def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        events = [listener.server.stop(grace) for listener in self._listeners]
        for event in events:
            event.wait(grace + 0.25)
        for listener in self._listeners:
            _remove(listener)
        self._listeners.clear()
        self._executor.shutdown(wait=False, cancel_futures=True)


def serve_config(args: argparse.Namespace) -> ServeConfig:
    versions = tuple(repeated(args, "version")) or callbacks.ALL_VERSIONS
    unknown = [v for v in versions if v not in callbacks.ALL_VERSIONS]
    if unknown:
        raise HookError(
            f"unknown hook API version {', '.join(unknown)}; "
            f"offer some of {', '.join(callbacks.ALL_VERSIONS)}"
        )
    plugin_socket = Path(args.plugin_socket) if args.plugin_socket else None
    # Plugin mode is --plugin-socket alone; naming a hook socket too serves both.
    hook_socket = None
    if plugin_socket is None or args.socket_dir or args.socket_name:
        hook_socket = Path(args.socket_dir or DEFAULT_SOCKET_DIR) / (
            args.socket_name or DEFAULT_SOCKET_NAME
        )
    try:
        workers = int(args.workers)
    except ValueError:
        workers = 0
    if not 1 <= workers <= 16:
        raise HookError(f"--workers must be between 1 and 16, not {args.workers!r}")
    return ServeConfig(
        hook_socket=hook_socket,
        plugin_socket=plugin_socket,
        name=args.name,
        versions=tuple(dict.fromkeys(versions)),
        workers=workers,
    )


def run(config: ServeConfig, settings: HookSettings, install_signals: bool = True) -> int:
    server = HookServer(config, settings)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        logs.get().info("received %s; stopping", signal.Signals(signum).name)
        server.stop_requested.set()

    if install_signals:
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
    server.start()
    status = 0
    try:
        # Waking twice a second keeps the main thread responsive to signals and lets it
        # notice a socket that vanished: nobody can reach us any more, so say so and exit.
        while not server.stop_requested.wait(0.5):
            gone = server.missing_socket()
            if gone is not None:
                logs.get().error(
                    "socket %s was removed; virt-launcher can no longer reach the hook, exiting",
                    gone,
                )
                status = 1
                break
    finally:
        server.stop()
    logs.get().info("stopped")
    return status


def serve_from_args(args: argparse.Namespace, settings: HookSettings) -> int:
    logs.setup(args.log_format, args.log_level)
    return run(serve_config(args), settings)
