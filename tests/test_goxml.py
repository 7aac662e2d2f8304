"""The hook's output as virt-launcher reads it: Go's encoding/xml (tests/goxml/main.go).

virt-launcher parses the returned domain into its DomainSpec with encoding/xml, and a
domain it cannot parse fails the VM start. `make test` installs Debian's golang-go; the
tests are skipped only outside CI when no Go toolchain is installed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hook_sidecar.hostdevs import HostDevice
from hook_sidecar.pci import PciAddress
from hook_sidecar.transform import transform
from tests.conftest import EXAMPLES, ROOT
from tests.domains import GeneratedDomain, domains, pci_addresses


@pytest.fixture(scope="module")
def goxml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("go") is None:
        if os.environ.get("CI"):
            raise AssertionError("CI must have Go: make test installs golang-go")
        pytest.skip("no Go toolchain (apt-get install golang-go)")
    out = tmp_path_factory.mktemp("goxml")
    binary = out / "goxml"
    env = {**os.environ, "GOCACHE": str(out / "cache"), "GO111MODULE": "off"}
    subprocess.run(
        ["go", "build", "-o", str(binary), str(ROOT / "tests" / "goxml" / "main.go")],
        check=True,
        env=env,
        capture_output=True,
        timeout=300,
    )
    return binary


def go_read(binary: Path, xml: bytes) -> list[dict[str, Any]]:
    proc = subprocess.run([str(binary)], input=xml, capture_output=True, timeout=30, check=False)
    assert proc.returncode == 0, proc.stderr.decode()
    return list(json.loads(proc.stdout) or [])


def test_example_output_as_go_reads_it(goxml: Path) -> None:
    out = (EXAMPLES / "domain-with-qat.xml").read_bytes()
    assert go_read(goxml, out) == [
        {
            "mode": "subsystem",
            "type": "pci",
            "managed": "no",
            "driver": {"name": "vfio"},
            "source": {
                "address": {"domain": "0x0000", "bus": "0x3d", "slot": "0x02", "function": "0x2"}
            },
            "alias": {"name": "ua-qat-0"},
        }
    ]


def test_guest_address_as_go_reads_it(goxml: Path, domain_xml: bytes) -> None:
    result = transform(
        domain_xml, [HostDevice(PciAddress.parse("3d:02.3"), PciAddress.parse("00:10.0"))]
    )
    (hostdev,) = go_read(goxml, result.xml)
    assert hostdev["guest_address"] == {
        "type": "pci",
        "domain": "0x0000",
        "bus": "0x00",
        "slot": "0x10",
        "function": "0x0",
    }


def test_go_rejects_what_it_should(goxml: Path) -> None:
    """The reader is strict for real: a broken document fails it."""
    proc = subprocess.run(
        [str(goxml)],
        input=b"<domain><devices></domain>",
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 1
    assert b"token:" in proc.stderr


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(domains(), st.lists(pci_addresses, min_size=1, max_size=3, unique=True))
def test_generated_outputs_as_go_reads_them(
    goxml: Path, generated: GeneratedDomain, addresses: list[PciAddress]
) -> None:
    result = transform(generated.xml, [HostDevice(a) for a in addresses])
    hostdevs = go_read(goxml, result.xml)
    by_alias = {h["alias"]["name"]: h for h in hostdevs if h.get("alias")}
    for added in result.added:
        source = by_alias[added.alias]["source"]["address"]
        assert source == added.address.libvirt_attributes()
