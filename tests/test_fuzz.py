"""Fuzzing the OnDefineDomain path: hypothesis here, atheris in tests/fuzz/.

Mutated domain XML and VMI JSON go through a real server over a real socket;
mutated environment values go through the same hook function the server runs.
The contract: never a crash, every failure a clean INVALID_ARGUMENT or
FAILED_PRECONDITION with a one-line message, and every success holds the VF
exactly once. Time limits belong to the atheris campaign (libFuzzer's
``-timeout``), not to these tests.
"""

from __future__ import annotations

import importlib.util
import platform
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from hook_sidecar._generated import v1alpha3_pb2, v1alpha3_pb2_grpc
from hook_sidecar.config import DiscoveryConfig, HookSettings
from hook_sidecar.errors import HookError
from hook_sidecar.hook import on_define_domain
from hook_sidecar.hostdevs import TransformOptions
from hook_sidecar.pci import PciAddress
from hook_sidecar.server import HookServer, ServeConfig
from tests.ci import skip_or_fail
from tests.conftest import EXAMPLES, ROOT

DOMAIN = (EXAMPLES / "domain.xml").read_bytes()
VMI = (EXAMPLES / "vmi.json").read_bytes()
EXAMPLE_VF = PciAddress.parse("0000:3d:02.2")
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
    server = HookServer(
        ServeConfig(hook_socket=str(path), plugin_socket=None), SETTINGS, {"QAT0": "0000:3d:02.2"}
    )
    server.start()
    yield path
    server.stop()


def call(path: Path, domain: bytes, vmi: bytes) -> tuple[grpc.StatusCode, str, bytes]:
    with grpc.insecure_channel(f"unix:{path}") as channel:
        try:
            reply = v1alpha3_pb2_grpc.CallbacksStub(channel).OnDefineDomain(
                v1alpha3_pb2.OnDefineDomainParams(domainXML=domain, vmi=vmi), timeout=10
            )
            return grpc.StatusCode.OK, "", reply.domainXML
        except grpc.RpcError as err:
            return err.code(), err.details() or "", b""


def qat_hostdevs(domain: bytes, address: PciAddress = EXAMPLE_VF) -> int:
    """How many hostdevs with ``address`` as their source the domain holds."""
    root = etree.fromstring(domain, etree.XMLParser(resolve_entities=False, no_network=True))
    return sum(
        1
        for source in root.iterfind("devices/hostdev/source/address")
        if PciAddress.from_libvirt({str(k): str(v) for k, v in source.attrib.items()}) == address
    )


def assert_clean(code: grpc.StatusCode, message: str, domain: bytes) -> None:
    if code == grpc.StatusCode.OK:
        assert qat_hostdevs(domain) == 1, "success without the VF (or with it twice)"
    else:
        assert code in CLEAN_FAILURES, (code, message)
        assert message.startswith("QAT hook: ")
        assert "\n" not in message and "Traceback" not in message


def test_unmutated_call_succeeds(socket_path: Path) -> None:
    """The fuzz server is set up right: the example gets its VF (refusals alone prove nothing)."""
    code, message, domain = call(socket_path, DOMAIN, VMI)
    assert code == grpc.StatusCode.OK, message
    assert qat_hostdevs(domain) == 1


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated(DOMAIN))
def test_mutated_domains_over_grpc(socket_path: Path, domain: bytes) -> None:
    assert_clean(*call(socket_path, domain, VMI))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated(VMI))
def test_mutated_vmis_over_grpc(socket_path: Path, vmi: bytes) -> None:
    """A mutation may turn the VMI into one that wants no VF: then the domain comes back as sent."""
    code, message, domain = call(socket_path, DOMAIN, vmi)
    if code == grpc.StatusCode.OK and domain == DOMAIN:
        return  # e.g. "spec.domain" renamed: no QAT resource is asked for any more
    assert_clean(code, message, domain)


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
    try:
        outcome = on_define_domain(DOMAIN, VMI, env, SETTINGS)
    except HookError as err:
        assert str(err) and "\n" not in str(err)
    else:
        assert outcome.discovery.wanted
        (address,) = outcome.discovery.devices
        assert qat_hostdevs(outcome.domain_xml, address) == 1


# --- atheris --------------------------------------------------------------------------------

ATHERIS_PLATFORM = platform.machine() == "x86_64" and sys.version_info < (3, 13)
"""Where atheris installs (the `test` extra's marker): elsewhere it has no wheel and no build."""


def needs_atheris() -> None:
    if importlib.util.find_spec("atheris") is not None:
        return
    if not ATHERIS_PLATFORM:
        pytest.skip(
            f"atheris does not install on {platform.machine()} with Python "
            f"{platform.python_version()} (x86_64 and Python < 3.13 only)"
        )
    skip_or_fail("atheris is not installed: pip install -e '.[test]'")


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
            str(tmp_path / "corpus"),
        ],
        capture_output=True,
        timeout=300,
        check=False,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    assert b"Done 5000 runs" in proc.stderr
    # The empty corpus was seeded, so the campaign started from the encoded documents.
    assert (tmp_path / "corpus" / "utf-16-bom").is_file()


def test_seeds_reach_the_transform_as_raw_domains() -> None:
    """Each seed is read in the raw-domain mode, so the campaign starts from real documents."""
    needs_atheris()
    from tests.fuzz.fuzz_hook import DOMAIN, VMI, inputs, seeds

    found = seeds()
    assert {"utf-16-bom", "utf-32-bom", "utf-7-declared", "utf-8-two-boms", "attlist"} <= set(found)
    for name, seed in found.items():
        domain, vmi, env = inputs(seed)
        assert (domain, vmi, env) == (seed[:-1], VMI, {"QAT0": "0000:3d:02.2"}), name
    assert inputs(found["utf-8"])[0] == DOMAIN


@pytest.mark.parametrize("name", ["utf-8", "utf-16-bom", "utf-7-declared", "entity-end-tag"])
def test_seeds_meet_the_contract(name: str) -> None:
    needs_atheris()
    from tests.fuzz.fuzz_hook import check, seeds

    check(seeds()[name])


def test_harness_instruments_the_transform() -> None:
    """The XML code runs with coverage guidance, not blind.

    A fresh interpreter, because in this one hook_sidecar is already imported
    (uninstrumented) by the other tests.
    """
    needs_atheris()
    probe = (
        "import sys; sys.argv = ['fuzz']\n"
        "import tests.fuzz.fuzz_hook\n"
        "from hook_sidecar import domain_xml, libvirt_values, numa, transform\n"
        "for function in (transform.transform, domain_xml.read, domain_xml.attribute,\n"
        "                 transform.check_output, numa.place, libvirt_values.cpuset):\n"
        "    assert '_trace_branch' in function.__code__.co_names, function\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
