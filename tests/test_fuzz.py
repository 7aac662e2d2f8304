"""Fuzzing the OnDefineDomain path: hypothesis here, atheris in tests/fuzz/.

Mutated domain XML and VMI JSON go through a real server over a real socket;
mutated environment values go through the same hook function the server runs.
The contract: never a crash, never a call over 1 s, every failure a clean
INVALID_ARGUMENT or FAILED_PRECONDITION with a one-line message.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hook_sidecar._generated import v1alpha3_pb2, v1alpha3_pb2_grpc
from hook_sidecar.discovery import DiscoveryConfig
from hook_sidecar.errors import HookError
from hook_sidecar.hook import HookSettings, on_define_domain
from hook_sidecar.hostdevs import TransformOptions
from hook_sidecar.server import HookServer, ServeConfig
from tests.conftest import EXAMPLES, ROOT

DOMAIN = (EXAMPLES / "domain.xml").read_bytes()
VMI = (EXAMPLES / "vmi.json").read_bytes()
CLEAN_FAILURES = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION}
SETTINGS = HookSettings(
    DiscoveryConfig(verify_sysfs="off", dra_root=ROOT / "nonexistent"),
    TransformOptions(),
    guest_addresses={},
)


@st.composite
def mutated(draw: st.DrawFn, base: bytes) -> bytes:
    """``base`` with a few slices replaced by arbitrary bytes, or by markup-ish text."""
    data = base
    for _ in range(draw(st.integers(1, 4))):
        start = draw(st.integers(0, len(data)))
        length = draw(st.integers(0, 40))
        insert = draw(
            st.one_of(
                st.binary(max_size=40),
                st.sampled_from(
                    [
                        b"<",
                        b">",
                        b"&",
                        b"</devices>",
                        b"<!--",
                        b"]]>",
                        b"<![CDATA[",
                        b'"',
                        b"<!DOCTYPE x [<!ENTITY a 'b'>]>",
                        b"\x00",
                        b"\xff\xfe",
                        b"{",
                        b"}",
                        b'"qat.intel.com/generic": "2"',
                        b"null",
                        b"[]",
                    ]
                ),
            )
        )
        data = data[:start] + insert + data[start + length :]
    return data


@pytest.fixture(scope="module")
def socket_path(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("fuzz") / "qat.sock"
    os.environ["QAT0"] = "0000:3d:02.2"
    try:
        server = HookServer(ServeConfig(hook_socket=path, plugin_socket=None), SETTINGS)
    finally:
        del os.environ["QAT0"]
    server.start()
    yield path
    server.stop()


def call(path: Path, domain: bytes, vmi: bytes) -> tuple[grpc.StatusCode, str]:
    with grpc.insecure_channel(f"unix:{path}") as channel:
        try:
            v1alpha3_pb2_grpc.CallbacksStub(channel).OnDefineDomain(
                v1alpha3_pb2.OnDefineDomainParams(domainXML=domain, vmi=vmi), timeout=10
            )
            return grpc.StatusCode.OK, ""
        except grpc.RpcError as err:
            return err.code(), err.details() or ""


def assert_clean(code: grpc.StatusCode, message: str, elapsed: float) -> None:
    assert elapsed < 1.0
    if code != grpc.StatusCode.OK:
        assert code in CLEAN_FAILURES, (code, message)
        assert message.startswith("QAT hook: ")
        assert "\n" not in message and "Traceback" not in message


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated(DOMAIN))
def test_mutated_domains_over_grpc(socket_path: Path, domain: bytes) -> None:
    started = time.monotonic()
    code, message = call(socket_path, domain, VMI)
    assert_clean(code, message, time.monotonic() - started)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated(VMI))
def test_mutated_vmis_over_grpc(socket_path: Path, vmi: bytes) -> None:
    started = time.monotonic()
    code, message = call(socket_path, DOMAIN, vmi)
    assert_clean(code, message, time.monotonic() - started)


ENV_NAMES = st.sampled_from(
    [
        "QAT0",
        "QAT1",
        "QAT12",
        "PCI_RESOURCE_QAT_INTEL_COM_GENERIC",
        "PCIDEVICE_QAT_INTEL_COM_CY",
        "QAT_HOOK_DEVICES",
    ]
)
ENV_VALUES = st.one_of(
    st.text(max_size=40),
    st.lists(
        st.from_regex(
            r"[0-9a-fA-F]{1,5}:[0-9a-fA-F]{1,3}:[0-9a-fA-F]{1,3}\.[0-9a-f]", fullmatch=True
        ),
        max_size=3,
    ).map(",".join),
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(ENV_NAMES, ENV_VALUES, max_size=4))
def test_environment_values(env: dict[str, str]) -> None:
    started = time.monotonic()
    try:
        outcome = on_define_domain(DOMAIN, VMI, env, SETTINGS)
    except HookError as err:
        assert str(err) and "\n" not in str(err)
    else:
        assert outcome.discovery.wanted
        assert len(outcome.discovery.devices) == 1
    assert time.monotonic() - started < 1.0


# --- atheris --------------------------------------------------------------------------------


def needs_atheris() -> None:
    if not os.environ.get("CI"):
        pytest.importorskip("atheris")


REGRESSIONS = sorted((ROOT / "tests" / "fuzz" / "regressions").iterdir())


@pytest.mark.parametrize("path", REGRESSIONS, ids=lambda p: p.name)
def test_fuzz_regressions(path: Path) -> None:
    needs_atheris()
    from tests.fuzz.fuzz_hook import check

    check(path.read_bytes())


def test_short_atheris_campaign(tmp_path: Path) -> None:
    """CI's short campaign; `make fuzz` runs 100,000 inputs."""
    needs_atheris()
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "tests" / "fuzz" / "fuzz_hook.py"),
            "-runs=5000",
            f"-artifact_prefix={tmp_path}/",
        ],
        capture_output=True,
        timeout=300,
        check=False,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    assert b"Done 5000 runs" in proc.stderr
