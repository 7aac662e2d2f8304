"""Unary methods served so that a client that never sends its request cannot hold a worker.

grpc's synchronous server takes a worker thread for a call as soon as its headers
arrive, and a unary handler's thread then waits for the request message with no
limit but the client's deadline (a client may set none) or the connection's age.
Two such clients would hold every worker, and virt-launcher's ``Info`` (1 s
timeout) would fail until their connections aged out. So every method is served
as a stream-request method, wire-identical to a unary one (one request message,
one response): the handler gets the call's context before the request, registers
it with a :class:`RequestWatch`, and a call whose request has not arrived within
``request_seconds`` is cancelled, with a warning in the log. Methods whose request
is empty (``Info``, ``Shutdown``) answer without waiting for it at all.

A request that cannot be decoded is answered INVALID_ARGUMENT with a warning in
the log (grpc's own unary path answers INTERNAL and logs nothing of ours).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple

import grpc
from google.protobuf.message import DecodeError

from hook_sidecar import logs
from hook_sidecar.errors import one_line

Behavior = Callable[[Any, grpc.ServicerContext], Any]
"""A unary handler: ``(request, context) -> response``."""


class Undecodable(NamedTuple):
    """What the deserializer returns for bytes that are not the method's request message."""

    reason: str


class Method(NamedTuple):
    """One unary method: its handler and its message classes.

    ``needs_request`` False answers without reading the request (an empty message).
    """

    behavior: Behavior
    request: Any
    response: Any
    needs_request: bool = True


def _deserializer(message_class: Any) -> Callable[[bytes], Any]:
    def decode(data: bytes) -> Any:
        try:
            return message_class.FromString(data)
        except (DecodeError, ValueError, TypeError) as err:
            return Undecodable(f"{type(err).__name__}: {err}")

    return decode


class RequestWatch:
    """Cancels the calls whose request message has not arrived in time.

    ``sweep`` (run by the server's watch thread) cancels every call registered for
    longer than ``seconds``; a call's worker then returns at once.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._lock = threading.Condition()
        self._waiting: dict[int, tuple[float, grpc.ServicerContext, str]] = {}
        self._tokens = itertools.count()
        self._cancelled: set[int] = set()

    def first_request(
        self, requests: Iterator[Any], context: grpc.ServicerContext, name: str
    ) -> Any:
        """The call's one request message, or an abort saying why there is none."""
        token = next(self._tokens)
        with self._lock:
            self._waiting[token] = (time.monotonic() + self.seconds, context, name)
            self._lock.notify_all()
        try:
            request = next(requests, None)
        except grpc.RpcError:
            request = None
        finally:
            with self._lock:
                self._waiting.pop(token, None)
                timed_out = token in self._cancelled
                self._cancelled.discard(token)
        if isinstance(request, Undecodable):
            message = one_line(f"QAT hook: the {name} request cannot be decoded ({request.reason})")
            logs.get().warning("%s refused: %s", name, message, extra={"code": "INVALID_ARGUMENT"})
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, message)
        if request is None:
            if timed_out:
                context.abort(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"QAT hook: no {name} request within {self.seconds:g} s",
                )
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"QAT hook: {name} requires exactly one request message",
            )
        return request

    def sweep(self) -> int:
        """Cancel every call that has waited too long for its request; how many were."""
        now = time.monotonic()
        with self._lock:
            expired = [
                (token, context, name)
                for token, (deadline, context, name) in self._waiting.items()
                if deadline <= now
            ]
            for token, _, _ in expired:
                del self._waiting[token]
                self._cancelled.add(token)
        for _, context, name in expired:
            logs.get().warning(
                "%s: no request message within %g s of the call's headers; cancelled it",
                name,
                self.seconds,
                extra={"code": "CANCELLED"},
            )
            context.cancel()  # type: ignore[no-untyped-call]  # (grpc-stubs leave it untyped)
        return len(expired)

    def wait_for_waiting(self, count: int, timeout: float) -> bool:
        """Wait until ``count`` calls wait for their request; False on timeout."""
        with self._lock:
            return self._lock.wait_for(lambda: len(self._waiting) >= count, timeout)


def _handler(name: str, method: Method, watch: RequestWatch) -> grpc.RpcMethodHandler[Any, Any]:
    behavior = method.behavior
    if method.needs_request:

        def handle(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
            return behavior(watch.first_request(requests, context, name), context)

    else:
        empty = method.request()

        def handle(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
            return behavior(empty, context)

    return grpc.stream_unary_rpc_method_handler(
        handle,
        request_deserializer=_deserializer(method.request),
        response_serializer=method.response.SerializeToString,
    )


def add_service(
    server: grpc.Server, service: str, methods: Mapping[str, Method], watch: RequestWatch
) -> None:
    """Serve ``methods`` of the fully qualified ``service`` on ``server``."""
    handlers = {name: _handler(name, method, watch) for name, method in methods.items()}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
    # The per-method fast path of grpc >= 1.62 (as its generated code uses); not in grpc-stubs.
    server.add_registered_method_handlers(service, handlers)  # type: ignore[attr-defined]
