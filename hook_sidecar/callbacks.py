"""gRPC servicers: a thin adapter from KubeVirt's hook APIs to ``hook.on_define_domain``.

Each servicer turns a request into plain bytes, runs the hook (a ``Hook``:
the real one, or a test's), and turns the typed errors into status codes with
a message written for the person reading the VMI's events. Every status
message goes through ``abort_message``: one line, at most 2 KiB, whatever
it quotes. A traceback goes to the log, never to the client, and no error
stops the server.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NoReturn, TypeAlias

import grpc

from hook_sidecar import logs, unary
from hook_sidecar._generated import (
    info_pb2,
    v1alpha1_pb2,
    v1alpha2_pb2,
    v1alpha3_pb2,
)
from hook_sidecar.errors import HookError, one_line, status_code_name

if TYPE_CHECKING:
    from hook_sidecar.config import HookSettings
    from hook_sidecar.hook import HookOutcome

ALL_VERSIONS = ("v1alpha1", "v1alpha2", "v1alpha3")
ON_DEFINE_DOMAIN = "OnDefineDomain"
SHUTDOWN = "Shutdown"
LIBVIRT_DOMAIN_TYPE = "libvirt"
MIGRATION_TARGET = "MigrationTarget"
INTERNAL_MESSAGE = "QAT hook: internal error; the hook-sidecar container's log has the details"

Hook: TypeAlias = "Callable[[bytes, bytes, bool], HookOutcome]"
"""``(domain_xml, vmi_json, migration_target) -> HookOutcome``: what every callback runs.

The seam between the gRPC adapter and the hook logic, like the mutator interface of
KubeVirt's Go sidecars: the server runs ``bound_hook(...)``, tests run one they control.
"""


def bound_hook(settings: HookSettings, env: Mapping[str, str]) -> Hook:
    """The real hook, ``on_define_domain`` with this process's settings and environment."""

    def hook(domain_xml: bytes, vmi_json: bytes, migration_target: bool) -> HookOutcome:
        # Loaded by the warm-up once the socket answers (or by the first call), not before.
        from hook_sidecar.hook import on_define_domain

        return on_define_domain(
            domain_xml, vmi_json, env, settings, migration_target=migration_target
        )

    return hook


def status_for(error: HookError) -> grpc.StatusCode:
    """The status for a typed error; the mapping itself is ``errors.status_code_name``."""
    return grpc.StatusCode[status_code_name(error)]


class HookRunner:
    """Runs one callback: the hook, its log lines, and the error-to-status mapping.

    At most ``concurrency`` calls run the hook at once (each holds its documents in
    memory); the others wait their turn. A refusal and the hook's warnings are logged
    before the reply; the call's summary line (what was injected, how long it took)
    once the reply is sent, off the caller's path: grpc runs it when the call ends.
    """

    def __init__(self, hook: Hook, concurrency: int = 2) -> None:
        self._hook = hook
        self._log = logs.get()
        self._lock = threading.Lock()
        self._running = 0
        self._turns = threading.BoundedSemaphore(concurrency)

    @property
    def running(self) -> int:
        """Calls inside the hook right now (a stop that leaves some behind must not wait)."""
        with self._lock:
            return self._running

    def run(
        self,
        context: grpc.ServicerContext,
        domain_xml: bytes,
        vmi_json: bytes,
        callback: str,
        migration_target: bool = False,
        **fields: Any,
    ) -> bytes:
        with self._lock:
            self._running += 1
        try:
            with self._turns:
                outcome = self._hook(domain_xml, vmi_json, migration_target)
        except HookError as err:
            code = status_for(err)
            message = abort_message(f"QAT hook: {err}")
            self._log.error(
                "%s refused: %s", callback, message, extra={"code": code.name, **fields}
            )
            _abort(context, code, message)
        except Exception:  # noqa: BLE001 - any bug becomes INTERNAL, the server lives on
            self._log.exception("%s failed unexpectedly", callback, extra=fields)
            _abort(context, grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)
        finally:
            with self._lock:
                self._running -= 1
        for warning in outcome.warnings:
            self._log.warning("%s", warning, extra={"vmi": outcome.vmi_name, **fields})
        summary = functools.partial(self._summary, outcome, callback, fields)
        if not context.add_callback(summary):  # the call has ended already
            summary()
        return outcome.domain_xml

    def _summary(self, outcome: HookOutcome, callback: str, fields: dict[str, Any]) -> None:
        found = outcome.discovery
        added = outcome.result.added if outcome.result else ()
        present = outcome.result.already_present if outcome.result else ()
        self._log.info(
            "%s: %s",
            callback,
            f"injected {len(added)} device(s)" if found.wanted else "passed through",
            extra={
                "vmi": outcome.vmi_name,
                "devices": [str(device.address) for device in added],
                "already_present": [str(address) for address in present],
                "source": found.source,
                "detail": found.reason if not found.wanted else found.detail,
                "duration_ms": round(outcome.duration_ms, 3),
                **fields,
            },
        )


def abort_message(text: str) -> str:
    """Every status message the server sends: one line, escaped, at most 2 KiB."""
    return one_line(text)


def _abort(context: grpc.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
    context.abort(code, abort_message(message))
    raise AssertionError("grpc context.abort returned")  # pragma: no cover


class InfoServicer:
    """``Info``; ``answered`` (if any) is set once a reply to it has been sent."""

    def __init__(
        self, name: str, versions: Sequence[str], answered: threading.Event | None = None
    ) -> None:
        points = [info_pb2.HookPoint(name=ON_DEFINE_DOMAIN, priority=0)]
        if "v1alpha3" in versions:
            points.append(info_pb2.HookPoint(name=SHUTDOWN, priority=0))
        self._result = info_pb2.InfoResult(name=name, hookPoints=points, versions=list(versions))
        self._answered = answered

    def Info(self, request: info_pb2.InfoParams, context: grpc.ServicerContext) -> Any:
        if self._answered is not None and not self._answered.is_set():
            context.add_callback(self._answered.set)
        return self._result


class _CallbacksBase:
    """OnDefineDomain and PreCloudInitIso, shared by every Callbacks version."""

    version = ""
    messages: Any = None

    def __init__(self, runner: HookRunner) -> None:
        self._runner = runner

    def OnDefineDomain(self, request: Any, context: grpc.ServicerContext) -> Any:
        xml = self._runner.run(
            context, request.domainXML, request.vmi, ON_DEFINE_DOMAIN, version=self.version
        )
        return self.messages.OnDefineDomainResult(domainXML=xml)

    def PreCloudInitIso(self, request: Any, context: grpc.ServicerContext) -> Any:
        # Not subscribed in Info; answered unchanged in case a client calls it anyway.
        return self.messages.PreCloudInitIsoResult(
            cloudInitNoCloudSource=request.cloudInitNoCloudSource,
            cloudInitData=request.cloudInitData,
        )


class CallbacksV1alpha1(_CallbacksBase):
    version = "v1alpha1"
    messages = v1alpha1_pb2


class CallbacksV1alpha2(_CallbacksBase):
    version = "v1alpha2"
    messages = v1alpha2_pb2


class CallbacksV1alpha3(_CallbacksBase):
    version = "v1alpha3"
    messages = v1alpha3_pb2

    def __init__(self, runner: HookRunner, on_shutdown: Callable[[], None]) -> None:
        super().__init__(runner)
        self._on_shutdown = on_shutdown

    def Shutdown(self, request: Any, context: grpc.ServicerContext) -> Any:
        logs.get().info("Shutdown called by virt-launcher; stopping")
        # Stop after this reply is on its way, not before.
        context.add_callback(self._on_shutdown)
        return v1alpha3_pb2.ShutdownResult()


class DomainHookServicer:
    """KubeVirt's structured-plugin API, on its own socket.

    Its messages are imported with it: a sidecar serving only the hook API never loads them.
    """

    def __init__(self, runner: HookRunner) -> None:
        from hook_sidecar._generated import plugins_v1alpha1_pb2

        self._runner = runner
        self.messages = plugins_v1alpha1_pb2

    def MutateDomain(self, request: Any, context: grpc.ServicerContext) -> Any:
        context_name = request.sidecar_context.invocation_context
        invocation = one_line(context_name or "unknown", 64)
        if request.domain_type != LIBVIRT_DOMAIN_TYPE:
            domain_type = one_line(repr(request.domain_type), 256)
            logs.get().error(
                "MutateDomain refused: domain_type %s",
                domain_type,
                extra={"invocation": invocation},
            )
            _abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"QAT hook: domain_type {domain_type} is not supported; "
                f"only {LIBVIRT_DOMAIN_TYPE!r} domains can be mutated",
            )
        xml = self._runner.run(
            context,
            request.domain,
            request.vmi,
            "MutateDomain",
            migration_target=context_name == MIGRATION_TARGET,
            invocation=invocation,
        )
        return self.messages.MutateDomainResponse(domain=xml)


def _callbacks_methods(servicer: _CallbacksBase) -> dict[str, unary.Method]:
    messages = servicer.messages
    methods = {
        ON_DEFINE_DOMAIN: unary.Method(
            servicer.OnDefineDomain, messages.OnDefineDomainParams, messages.OnDefineDomainResult
        )
    }
    if servicer.version != "v1alpha1":  # PreCloudInitIso came with v1alpha2
        methods["PreCloudInitIso"] = unary.Method(
            servicer.PreCloudInitIso,
            messages.PreCloudInitIsoParams,
            messages.PreCloudInitIsoResult,
        )
    return methods


def add_hook_services(
    server: grpc.Server,
    runner: HookRunner,
    name: str,
    versions: Sequence[str],
    on_shutdown: Callable[[], None],
    watch: unary.RequestWatch,
    info_answered: threading.Event | None = None,
) -> None:
    """Info and the Callbacks service of each of ``versions``."""
    info = InfoServicer(name, versions, info_answered)
    unary.add_service(
        server,
        "kubevirt.hooks.info.Info",
        {"Info": unary.Method(info.Info, info_pb2.InfoParams, info_pb2.InfoResult, False)},
        watch,
    )
    servicers: list[_CallbacksBase] = []
    if "v1alpha1" in versions:
        servicers.append(CallbacksV1alpha1(runner))
    if "v1alpha2" in versions:
        servicers.append(CallbacksV1alpha2(runner))
    for servicer in servicers:
        unary.add_service(
            server,
            f"kubevirt.hooks.{servicer.version}.Callbacks",
            _callbacks_methods(servicer),
            watch,
        )
    if "v1alpha3" in versions:
        v3 = CallbacksV1alpha3(runner, on_shutdown)
        methods = _callbacks_methods(v3)
        methods[SHUTDOWN] = unary.Method(
            v3.Shutdown, v1alpha3_pb2.ShutdownParams, v1alpha3_pb2.ShutdownResult, False
        )
        unary.add_service(server, "kubevirt.hooks.v1alpha3.Callbacks", methods, watch)


def add_plugin_services(server: grpc.Server, runner: HookRunner, watch: unary.RequestWatch) -> None:
    """KubeVirt's structured-plugin DomainHookService."""
    servicer = DomainHookServicer(runner)
    messages = servicer.messages
    unary.add_service(
        server,
        "kubevirt.hooks.plugins.v1alpha1.DomainHookService",
        {
            "MutateDomain": unary.Method(
                servicer.MutateDomain, messages.MutateDomainRequest, messages.MutateDomainResponse
            )
        },
        watch,
    )
