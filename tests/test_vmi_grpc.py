"""The VMI bounds over the real socket: a real gRPC client, a real ``qat-hook serve``.

Kept apart from ``test_vmi`` so that the fast unit tests (and the mutation run
over them) start no server.
"""

from __future__ import annotations

import grpc

from hook_sidecar.boundedjson import MAX_VALUES
from tests.conftest import ServerProcess
from tests.test_server import define, define_error
from tests.test_vmi import LIMIT_FIELD


def test_over_grpc_each_bound_is_invalid_argument_and_the_server_serves_on(
    server: ServerProcess, domain_xml: bytes, vmi_json: bytes
) -> None:
    """A real client over the real socket: the status and the field, then a good call works."""
    quantity = b'{"spec": {"domain": {"resources": {"limits": {"qat.intel.com/generic": "'
    cases = [
        (b"[" * 100_000, "VMI field [0][0][0][0][0][0][0][0]... nests deeper than 64 levels"),
        (b"[" + b"{}," * MAX_VALUES + b"{}]", f"VMI holds more than {MAX_VALUES} JSON values"),
        (quantity + b"1" * 5000 + b'"}}}}}', f"VMI field {LIMIT_FIELD} has quantity"),
        (b'{"metadata": []}', "VMI field metadata is a list"),
    ]
    for raw, needle in cases:
        error = define_error(server.socket, domain_xml, raw)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
        assert needle in (error.details() or "")
    assert define(server.socket, domain_xml, vmi_json).count(b"<hostdev ") == 1
