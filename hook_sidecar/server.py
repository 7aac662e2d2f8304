"""``qat-hook serve``: socket lifecycle, the gRPC servers, signals and shutdown.

virt-launcher finds the hook by scanning ``/var/run/kubevirt-hooks/<container>/``
for a socket, and a structured plugin by a fixed socket path; either way the
socket file is the whole interface. So this module is careful about it: a
stale file from a crashed run is replaced, a live one is never stolen, the
file is connectable by virt-launcher's uid, and it is gone when we exit.

One copy runs beside every VM for the VM's whole life, so it also defends
itself: connections that idle or never speak HTTP/2 are closed, the open-file
limit is raised to what the container allows, and a stop ends the process
within the grace period even when a call is stuck.

The server takes its environment and its hook as arguments: it never reads
``os.environ``, and tests can hold a call open with a hook of their own.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import resource
import signal
import socket
import stat
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from types import FrameType
from typing import TYPE_CHECKING, Any, NamedTuple, ParamSpec, TypeVar

import grpc

from hook_sidecar import __version__, callbacks, logs, unary
from hook_sidecar.config import MAX_VMI_BYTES
from hook_sidecar.errors import SetupFailed

if TYPE_CHECKING:
    from hook_sidecar.config import HookSettings
    from hook_sidecar.hook import HookOutcome

# The largest request: a domain at the configured cap, a VMI at the VMI reader's cap, and
# the message's own framing (field tags and lengths, MutateDomain's small fields). A
# larger message is refused by grpc before any of it is kept; every accepted one is
# also accepted by the hook's own size checks.
MESSAGE_FRAMING_BYTES = 64 * 1024
# A response is the domain with the added hostdevs, re-indented.
RESPONSE_HEADROOM_BYTES = 1024 * 1024
# A stop (signal or Shutdown) must end the process within 2 s: in-flight calls get
# the grace, then whatever is left is cancelled and the process exits regardless.
STOP_GRACE_SECONDS = 1.0
STOP_MARGIN_SECONDS = 0.2
# virt-launcher dials, calls once and hangs up, so a connection that sits idle is
# not virt-launcher's: close it rather than hold a descriptor for it.
IDLE_SECONDS = 10.0
# A connection that has not finished the HTTP/2 handshake by then is dropped.
HANDSHAKE_SECONDS = 5.0
# Even a busy connection is recycled; its calls (virt-launcher's deadline is 1 min) finish.
MAX_CONNECTION_AGE_SECONDS = 300.0
MAX_CONNECTION_AGE_GRACE_SECONDS = 70.0
# virt-launcher sends one call at a time per VMI. Calls beyond this many at once are
# refused (RESOURCE_EXHAUSTED); the ones admitted wait for a thread in a queue, their
# requests not yet read. grpc clients in one process share connections, so the
# per-connection cap is the same.
MAX_CONCURRENT_CALLS = 64
# Threads beside the --workers that run the hook: a call takes a thread when it starts
# and holds it while its request arrives, so a client that never sends its request must
# not take the last one. Threads are made when first needed; at most workers + spare
# requests are read into memory at once, and at most --workers run the hook.
SPARE_THREADS = 2
# A call whose request message has not arrived this long after its headers is cancelled
# (virt-launcher sends both at once): a silent client holds a thread no longer than this.
REQUEST_SECONDS = 2.0
# sun_path is 108 bytes including the terminating NUL. The socket is first bound as
# <directory>/.qat-hook-XXXXXXXX/s (see _bind), which must fit too.
MAX_SOCKET_PATH = 107
STAGING_PREFIX = ".qat-hook-"
MAX_SOCKET_DIRECTORY = MAX_SOCKET_PATH - len(f"/{STAGING_PREFIX}XXXXXXXX/s")
PROBE_SECONDS = 1.0
NR_OPEN_DEFAULT = 1024 * 1024  # the kernel's default fs.nr_open
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
# What the first OnDefineDomain imports: the hook with discovery and the VMI reader, and
# for a VMI that wants a VF the transform with lxml.
WARM_UP_MODULES = ("hook_sidecar.hook", "hook_sidecar.transform")
# lxml keeps every element and attribute name a thread parses in a dictionary of that
# thread for the thread's life (about 5 bytes of memory per byte of new names). The
# threads that serve calls are replaced once the calls they ran were handed this many
# bytes of domain XML between them. benchmarks/bench_limits.py, 15 calls of 20,000 new
# names (450 KiB) each: the server's RSS grows 4.6-5.0 MiB in all, as with a new thread
# per call (4.7); a 1 MiB budget keeps 8 MiB, no bound 30 MiB and more with every call.
# Domains of 5-10 KiB share a thread for 25-50 calls; a new one costs ~0.2 ms, and
# is started (and warmed up) when the old ones retire, not when a call needs it.
THREAD_BYTES = 256 * 1024

# How long a warm-up waits for Info's reply before it warms up a thread regardless.
PRIME_WAIT_SECONDS = 2.0
# What prime_thread transforms.
PRIME_DOMAIN = b"<domain type='kvm'><name>warm-up</name><devices/></domain>"

_P = ParamSpec("_P")
_T = TypeVar("_T")


class SocketInUse(SetupFailed):
    """Something answers on the socket path, or it cannot be told that nothing does."""


class ServeConfig(NamedTuple):
    """Where and how to serve (a NamedTuple: a frozen dataclass costs 1-2 ms of every start)."""

    hook_socket: str | None
    plugin_socket: str | None
    name: str = "qat"
    versions: tuple[str, ...] = callbacks.ALL_VERSIONS
    workers: int = 2
    grace: float = STOP_GRACE_SECONDS
    idle_seconds: float = IDLE_SECONDS
    handshake_seconds: float = HANDSHAKE_SECONDS
    warm_up: bool = True
    """Load WARM_UP_MODULES in the background once the sockets are ready (see warm_up)."""
    request_seconds: float = REQUEST_SECONDS
    thread_bytes: int = THREAD_BYTES
    """Domain XML bytes the serving threads are handed before they are replaced."""


class _Listener:
    """One bound socket. ``handle`` is an O_PATH descriptor of our socket file: it keeps
    the inode alive, so its number cannot be reused by a newer server's socket at the
    same path, and the check "is this file still ours" cannot be fooled."""

    __slots__ = ("handle", "path", "server")

    def __init__(self, path: str, server: grpc.Server, handle: int) -> None:
        self.path = path
        self.server = server
        self.handle = handle

    def owns_path(self) -> bool:
        try:
            return os.path.samestat(os.fstat(self.handle), os.lstat(self.path))
        except OSError:
            return False


def _probe(path: str) -> str | None:
    """None when nobody listens on ``path`` (ECONNREFUSED); else why it must be left alone.

    Only a refused connect proves the socket is stale. A full accept backlog (EAGAIN),
    a socket we may not connect to (EACCES) or a slow answer all mean a server may well
    be there, and deleting its socket would cut it off from virt-launcher for good.
    """
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(PROBE_SECONDS)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):  # refused, or already gone
        return None
    except TimeoutError:
        return f"connecting to it timed out after {PROBE_SECONDS:g} s"
    except OSError as err:
        if err.errno == errno.EAGAIN:
            return "a server listens there but its backlog is full (EAGAIN)"
        code = errno.errorcode.get(err.errno or 0, "error")
        return f"connecting to it failed with {code} ({err.strerror})"
    finally:
        probe.close()
    return "a server is already listening on it"


def _prepare_directory(directory: str) -> None:
    try:
        os.makedirs(directory, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise SetupFailed(
            f"socket directory {directory} is not a directory (a file is in the way); "
            "remove that file or choose another directory"
        ) from None
    except OSError as err:
        raise SetupFailed(
            f"cannot create socket directory {directory}: {err.strerror}; "
            "mount a writable directory there or choose another one"
        ) from None
    if not os.access(directory, os.W_OK | os.X_OK):
        raise SetupFailed(
            f"no write permission in socket directory {directory} (uid {os.getuid()}); "
            "make it writable for this user or choose another directory"
        )


def prepare_socket(path: str) -> None:
    """Make ``path`` free to bind: create the directory, clear a stale socket, refuse a live one."""
    if (
        len(os.fsencode(path)) > MAX_SOCKET_PATH
        or len(os.fsencode(os.path.dirname(path))) > MAX_SOCKET_DIRECTORY
    ):
        raise SetupFailed(
            f"socket path {path} is too long: at most {MAX_SOCKET_PATH} bytes, in a "
            f"directory of at most {MAX_SOCKET_DIRECTORY} bytes; use a shorter path"
        )
    _prepare_directory(os.path.dirname(path))
    try:
        found = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as err:
        raise SetupFailed(f"cannot inspect {path}: {err.strerror}") from None
    if not stat.S_ISSOCK(found.st_mode):
        raise SetupFailed(f"{path} exists and is not a socket; remove it or choose another path")
    reason = _probe(path)
    if reason is not None:
        raise SocketInUse(
            f"{path}: {reason}; left alone; stop the server using it, "
            "or choose another --socket-name"
        )
    try:
        # Remove exactly the file probed: never a socket another server bound meanwhile.
        if os.path.samestat(os.lstat(path), found):
            os.unlink(path)
    except FileNotFoundError:
        return
    except OSError as err:
        raise SetupFailed(
            f"cannot remove stale socket {path}: {err.strerror}; remove it by hand"
        ) from None
    logs.get().info("removed stale socket", extra={"socket": path})


def message_limit(domain_cap: int) -> int:
    """The largest request message accepted for a domain cap of ``domain_cap`` bytes."""
    return domain_cap + MAX_VMI_BYTES + MESSAGE_FRAMING_BYTES


def _server_options(config: ServeConfig, receive_limit: int) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_receive_message_length", receive_limit),
        ("grpc.max_send_message_length", receive_limit + RESPONSE_HEADROOM_BYTES),
        ("grpc.so_reuseport", 0),
        ("grpc.max_connection_idle_ms", int(config.idle_seconds * 1000)),
        ("grpc.server_handshake_timeout_ms", int(config.handshake_seconds * 1000)),
        ("grpc.max_connection_age_ms", int(MAX_CONNECTION_AGE_SECONDS * 1000)),
        ("grpc.max_connection_age_grace_ms", int(MAX_CONNECTION_AGE_GRACE_SECONDS * 1000)),
        ("grpc.max_concurrent_streams", MAX_CONCURRENT_CALLS),
    ]


def _staging_directory(parent: str) -> str:
    """A private 0700 directory beside the socket, as ``tempfile.mkdtemp`` would make.

    Written out because importing ``tempfile`` pulls a dozen modules (shutil, bz2,
    lzma, random...) into every sidecar for this one call: +0.4 MiB per VM.
    """
    for _ in range(16):
        candidate = os.path.join(parent, f"{STAGING_PREFIX}{os.urandom(4).hex()}")
        try:
            os.mkdir(candidate, 0o700)
        except FileExistsError:
            continue
        return candidate
    raise FileExistsError(errno.EEXIST, "no free staging name after 16 tries")


def _bind(
    path: str,
    add_services: Callable[[grpc.Server], None],
    executor: Executor,
    options: list[tuple[str, Any]],
) -> _Listener:
    """Serve on ``path``: bound in a private staging directory, then linked into place.

    grpc core unlinks the path it bound when it shuts down, whatever file is there by
    then; bound under a staging name it can only ever unlink that name. Linking the
    finished socket into place also means virt-launcher, which scans the directory,
    never finds a socket that is not yet listening or not yet connectable, and ``link``
    (unlike ``rename``) never replaces a socket that appeared meanwhile.
    """
    prepare_socket(path)
    server = grpc.server(
        executor,  # type: ignore[arg-type]  # grpc calls only submit; grpc-stubs name the class
        options=options,
        maximum_concurrent_rpcs=MAX_CONCURRENT_CALLS,
    )
    add_services(server)
    try:
        staging = _staging_directory(os.path.dirname(path))
    except OSError as err:
        raise SetupFailed(
            f"cannot create a file in {os.path.dirname(path)}: {err.strerror}"
        ) from None
    staged = os.path.join(staging, "s")
    try:
        try:
            bound = server.add_insecure_port(f"unix:{staged}")
        except RuntimeError:
            bound = 0
        if not bound:
            raise SetupFailed(
                f"cannot bind socket {path}; check that its directory is writable "
                "and on a file system that supports unix sockets"
            )
        server.start()
        # virt-launcher may run as uid 107 while we run as root (or the reverse):
        # connecting needs write permission on the socket file. The socket lives
        # in a directory shared only inside the pod.
        os.chmod(staged, 0o666)
        handle = os.open(staged, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.link(staged, path)
        except OSError:
            os.close(handle)
            raise
    except FileExistsError:
        server.stop(None)
        raise SocketInUse(
            f"{path} appeared while this server started; another server is starting "
            "there, so it was left alone"
        ) from None
    except OSError as err:
        server.stop(None)
        raise SetupFailed(f"cannot put socket {path} in place: {err.strerror}") from None
    except BaseException:
        server.stop(None)
        raise
    finally:
        with contextlib.suppress(OSError):
            os.unlink(staged)
        with contextlib.suppress(OSError):
            os.rmdir(staging)
    return _Listener(path=path, server=server, handle=handle)


def _remove(listener: _Listener) -> None:
    """Remove our socket file, but never one a newer server has put in its place."""
    try:
        if listener.owns_path():
            os.unlink(listener.path)
    except FileNotFoundError:
        pass
    finally:
        os.close(listener.handle)


def raise_open_files_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard one: idle peers must not starve real calls."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # An unlimited hard limit cannot be the soft one (the kernel caps it at fs.nr_open).
    target = NR_OPEN_DEFAULT if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as err:
            logs.get().warning("cannot raise the open-file limit from %s: %s", soft, err)
    return soft


class RecyclingExecutor(Executor):
    """The threads every call runs on, replaced by fresh ones past a budget of domain XML.

    grpc runs each call's handler, and so the hook, on a thread of this executor: no
    hand-off to another thread (that costs ~0.08 ms a call). ``charge`` counts the
    domain XML each call was handed; once the current threads were handed
    ``budget`` bytes between them, new calls go to a new pool and the old one's
    threads end as soon as their calls are done, taking lxml's names with them.
    However many pools are finishing, at most ``max_workers`` calls run at once.
    """

    def __init__(self, max_workers: int, budget: int, name: str = "qat-hook") -> None:
        self._max_workers = max_workers
        self._budget = budget
        self._name = name
        self._lock = threading.Lock()
        # Old threads finish their calls beside the new ones: together, no more run at
        # once than one pool's threads (each may hold a request in memory).
        self._slots = threading.BoundedSemaphore(max_workers)
        self._pool = self._fresh()
        self._spent = 0
        self._shut = False
        self._prime: Callable[[], object] | None = None

    def _fresh(self) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(max_workers=self._max_workers, thread_name_prefix=self._name)

    def submit(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> Future[_T]:
        def in_slot() -> _T:
            with self._slots:
                return fn(*args, **kwargs)

        with self._lock:
            return self._pool.submit(in_slot)

    def charge(self, size: int) -> None:
        """Count ``size`` bytes of domain XML handed to a call; past the budget, new threads."""
        with self._lock:
            self._spent += size
            if self._spent < self._budget or self._shut:
                return
            retired, self._pool, self._spent = self._pool, self._fresh(), 0
            if self._prime is not None:
                self._pool.submit(self._prime)
        retired.shutdown(wait=False)  # its threads run what they hold, then end

    def prime(self, fn: Callable[[], object]) -> Future[object]:
        """Run ``fn`` on a thread now, and on a new thread each time the threads are renewed."""
        with self._lock:
            self._prime = fn
            return self._pool.submit(fn)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shut = True
            pool = self._pool
        pool.shutdown(wait=wait, cancel_futures=cancel_futures)


def _charged(hook: callbacks.Hook, executor: RecyclingExecutor) -> callbacks.Hook:
    """``hook``, each call's domain XML counted against the threads' budget (lxml's names)."""

    def charged(domain_xml: bytes, vmi_json: bytes, migration_target: bool) -> HookOutcome:
        try:
            return hook(domain_xml, vmi_json, migration_target)
        finally:
            executor.charge(len(domain_xml))

    return charged


class HookServer:
    """The running sidecar: one or two listeners sharing a small thread pool.

    The pool is a ``RecyclingExecutor``: every call's domain XML counts against
    ``config.thread_bytes``, past which the threads that ran them are replaced.

    ``hook`` replaces the real hook (``on_define_domain`` with ``settings`` and ``env``),
    so a test can hold a call open and release it.
    """

    def __init__(
        self,
        config: ServeConfig,
        settings: HookSettings,
        env: Mapping[str, str],
        *,
        hook: callbacks.Hook | None = None,
    ) -> None:
        self.config = config
        self.stop_requested = threading.Event()
        self.stopping = threading.Event()
        """Set once the listeners were told to stop: new calls are refused, old ones drain."""
        self._executor = RecyclingExecutor(config.workers + SPARE_THREADS, config.thread_bytes)
        self._runner = callbacks.HookRunner(
            _charged(hook or callbacks.bound_hook(settings, dict(env)), self._executor),
            config.workers,
        )
        self.receive_limit = message_limit(settings.transform.max_bytes)
        self._watch = unary.RequestWatch(config.request_seconds)
        self._listeners: list[_Listener] = []
        self._watcher: threading.Thread | None = None
        self._info_answered = threading.Event()

    @property
    def calls_running(self) -> int:
        return self._runner.running

    def wait_for_calls_awaiting_request(self, count: int, timeout: float) -> bool:
        """Wait until ``count`` calls have started without their request yet; False on timeout."""
        return self._watch.wait_for_waiting(count, timeout)

    def start(self) -> None:
        config, runner, watch = self.config, self._runner, self._watch
        wanted: list[tuple[str | None, Callable[[grpc.Server], None]]] = [
            (
                config.hook_socket,
                lambda server: callbacks.add_hook_services(
                    server,
                    runner,
                    config.name,
                    config.versions,
                    self.stop_requested.set,
                    watch,
                    self._info_answered,
                ),
            ),
            (
                config.plugin_socket,
                lambda server: callbacks.add_plugin_services(server, runner, watch),
            ),
        ]
        options = _server_options(config, self.receive_limit)
        try:
            for path, add_services in wanted:
                if path is not None:
                    self._listeners.append(_bind(path, add_services, self._executor, options))
        except BaseException:
            self.stop(0)
            raise
        self._watcher = threading.Thread(
            target=self._watch_requests, name="qat-hook-watch", daemon=True
        )
        self._watcher.start()
        where = ", ".join(listener.path for listener in self._listeners)
        logs.get().info(
            "ready: serving on %s",
            where,
            extra={
                "version": __version__,
                "socket": config.hook_socket,
                "plugin_socket": config.plugin_socket,
                "versions": list(config.versions) if config.hook_socket else [],
                "open_files": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
                "max_request_bytes": self.receive_limit,
            },
        )

    def _watch_requests(self) -> None:
        """Cancel the calls whose request is late, a few times per ``request_seconds``."""
        period = min(0.5, self.config.request_seconds / 4)
        while not self.stopping.wait(period):
            self._watch.sweep()

    def missing_socket(self) -> str | None:
        """A socket of ours that is gone from its path (its directory was removed, say)."""
        for listener in self._listeners:
            if not listener.owns_path():
                return listener.path
        return None

    def stop(self, grace: float | None = None) -> bool:
        """Refuse new calls, give running ones ``grace`` seconds, remove our sockets.

        Returns within ``grace`` plus a small margin whatever the calls do; True when
        none is still running in a worker thread (then the process can exit normally).
        """
        grace = self.config.grace if grace is None else grace
        events = [listener.server.stop(grace) for listener in self._listeners]
        if self._listeners:
            logs.get().info(
                "stopping: new calls are refused; %d running call(s) get %g s",
                self._runner.running,
                grace,
            )
        self.stopping.set()
        deadline = time.monotonic() + grace + STOP_MARGIN_SECONDS
        for event in events:
            event.wait(max(deadline - time.monotonic(), 0))
        for listener in self._listeners:
            _remove(listener)
        self._listeners.clear()
        self._executor.shutdown(wait=False, cancel_futures=True)
        return self._runner.running == 0

    def warm_up(self) -> threading.Thread:
        """``warm_up`` of the hook's modules, then of a thread of this server's.

        Both wait until virt-launcher's Info has its reply (or PRIME_WAIT_SECONDS
        passed, or there is no hook socket to ask Info on): the first OnDefineDomain
        comes after Info, and Info never shares the CPU with the warm-up.
        """

        def until_info() -> None:
            if self.config.hook_socket is not None:
                self._info_answered.wait(PRIME_WAIT_SECONDS)

        def prime() -> object:
            if self.stopping.is_set():
                return None
            try:
                primed = self._executor.prime(prime_thread)
            except RuntimeError:  # stopped meanwhile: no new work is taken
                return None
            return primed.result()

        return warm_up(WARM_UP_MODULES, prime, wait=until_info)


def prime_thread() -> None:
    """Run the transform once on a tiny domain: this thread's lxml set-up and first uses."""
    from hook_sidecar.hostdevs import HostDevice
    from hook_sidecar.pci import PciAddress
    from hook_sidecar.transform import transform

    started = time.perf_counter()
    transform(PRIME_DOMAIN, [HostDevice(PciAddress.parse("0000:00:00.1"))])
    logs.get().debug(
        "warm-up: a serving thread is ready",
        extra={"duration_ms": round((time.perf_counter() - started) * 1000, 3)},
    )


def warm_up(
    modules: Sequence[str] = WARM_UP_MODULES,
    prime: Callable[[], object] | None = None,
    wait: Callable[[], object] | None = None,
) -> threading.Thread:
    """Import ``modules`` in a daemon thread: what the first OnDefineDomain would import.

    Started once the sockets are ready, so the socket never waits for it; the thread
    first runs ``wait`` (the server's waits for Info's reply), so that virt-launcher's
    first OnDefineDomain (after its 300 ms scan, Info, and building the domain) finds
    lxml and the transform loaded. The sidecar runs only beside VMs that
    want a VF, so they load on a first call anyway: this moves their cost, not adds it.
    A failed import is only logged; the call that needs the module imports it again and
    reports whatever fails then. Python's import locks make a call that needs a module
    being warmed up wait for it rather than import it twice. ``prime`` then runs
    (``HookServer.warm_up``: ``prime_thread`` on a thread of the server's): the first
    call finds a thread started and the transform's first-time costs paid.
    """

    def load() -> None:
        if wait is not None:
            wait()
        started = time.perf_counter()
        for name in modules:
            try:
                # __import__, not importlib.import_module: -X importtime logs only the former.
                __import__(name)
            except Exception as err:  # noqa: BLE001 - a warm-up never takes serving down
                logs.get().warning(
                    "warm-up: cannot import %s (%s: %s); the first call that needs it "
                    "will try again",
                    name,
                    type(err).__name__,
                    err,
                )
                return
        logs.get().debug(
            "warm-up: loaded %s",
            ", ".join(modules),
            extra={"duration_ms": round((time.perf_counter() - started) * 1000, 3)},
        )
        if prime is None:
            return
        try:
            prime()
        except Exception as err:  # noqa: BLE001 - a warm-up never takes serving down
            logs.get().warning(
                "warm-up: a trial transform failed (%s: %s); calls go on regardless",
                type(err).__name__,
                err,
            )

    thread = threading.Thread(target=load, name="qat-hook-warm-up", daemon=True)
    thread.start()
    return thread


def _exit_now(status: int) -> None:
    """End the process although a worker thread is stuck: Python would wait for it at exit."""
    logs.close()
    logging.shutdown()
    os._exit(status)


def run(
    config: ServeConfig,
    settings: HookSettings,
    env: Mapping[str, str],
    *,
    hook: callbacks.Hook | None = None,
    install_signals: bool = True,
    exit_when_stuck: bool = True,
) -> int:
    """Serve until a signal, Shutdown, or the loss of a socket; return the exit status.

    With ``exit_when_stuck`` a call still running after the grace ends the process
    here (sockets already removed) instead of holding it open.
    """
    raise_open_files_limit()
    server = HookServer(config, settings, env, hook=hook)

    received: list[int] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        # Only set flags here: logging from a handler can re-enter a stream mid-write.
        received.append(signum)
        server.stop_requested.set()

    previous = {}
    if install_signals:
        previous = {signum: signal.signal(signum, on_signal) for signum in SIGNALS}
    status = 0
    try:
        server.start()
        if config.warm_up:
            server.warm_up()
        # Waking twice a second lets the main thread notice a socket that vanished:
        # nobody can reach us any more, so say so and exit.
        while not server.stop_requested.wait(0.5):
            gone = server.missing_socket()
            if gone is not None:
                logs.get().error(
                    "socket %s was removed; virt-launcher can no longer reach the hook, exiting",
                    gone,
                )
                status = 1
                break
        if received:
            logs.get().info("received %s; stopping", signal.Signals(received[0]).name)
    finally:
        drained = server.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if not drained:
        logs.get().error(
            "%d call(s) still running after the %g s grace; exiting without them",
            server.calls_running,
            config.grace,
        )
        if exit_when_stuck:
            logs.get().info("stopped")
            _exit_now(status)
    logs.get().info("stopped")
    return status


def serve(
    config: ServeConfig,
    settings: HookSettings,
    env: Mapping[str, str],
    *,
    log_format: str = "json",
    log_level: str = "info",
) -> int:
    """The serving process: logging (grpc core's stderr too, in JSON mode), then ``run``."""
    logs.setup(log_format, log_level, capture_stderr=True)
    try:
        return run(config, settings, env)
    finally:
        logs.close()
