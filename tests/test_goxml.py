"""The hook's output as virt-launcher reads it: Go's encoding/xml (tests/goxml/main.go).

virt-launcher parses the returned domain into its DomainSpec with encoding/xml, and a
domain it cannot parse fails the VM start. The transform writes its output with lxml
(UTF-8, an XML declaration in single quotes, ``<x/>`` empties), so these tests pin that
Go reads that spelling. `make test` installs Debian's golang-go; the tests are skipped
only outside CI (tests/ci.py) when no Go toolchain is installed.
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

from hook_sidecar.errors import InvalidInput
from hook_sidecar.hostdevs import HostDevice, TransformOptions
from hook_sidecar.pci import PciAddress
from hook_sidecar.transform import transform
from tests.ci import skip_or_fail
from tests.conftest import ROOT
from tests.support.domains import GeneratedDomain, canonical, domains, pci_addresses


@pytest.fixture(scope="module")
def goxml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("go") is None:
        skip_or_fail("no Go toolchain (apt-get install golang-go; make test installs it)")
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


def test_example_output_as_go_reads_it(goxml: Path, domain_xml: bytes) -> None:
    out = transform(domain_xml, [HostDevice(PciAddress.parse("3d:02.2"))]).xml
    assert out.startswith(b"<?xml version='1.0' encoding='UTF-8'?>")
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


@pytest.mark.parametrize("encoding", ["utf-16", "utf-32", "utf-8-sig"])
def test_output_of_other_encodings_as_go_reads_it(
    goxml: Path, domain_xml: bytes, encoding: str
) -> None:
    """Go reads only UTF-8; the hook's output is UTF-8 whatever the input was."""
    document = ("<!DOCTYPE domain>\n" + domain_xml.decode()).encode(encoding)
    proc = subprocess.run(
        [str(goxml)], input=document, capture_output=True, timeout=30, check=False
    )
    # Go cannot read UTF-16/32 input at all (a UTF-8 BOM it skips).
    assert (proc.returncode == 1) == (encoding != "utf-8-sig"), proc.stderr
    result = transform(document, [HostDevice(PciAddress.parse("3d:02.2"))])
    (hostdev,) = go_read(goxml, result.xml)
    assert hostdev["alias"] == {"name": "ua-qat-0"}


def test_conflict_free_guest_address_beside_an_interface_as_go_reads_it(goxml: Path) -> None:
    domain = (
        b'<domain type="kvm"><name>vm</name><devices><interface type="bridge">'
        b'<address type="pci" domain="0x0000" bus="0x01" slot="0x00" function="0x0"></address>'
        b"</interface></devices></domain>"
    )
    result = transform(
        domain, [HostDevice(PciAddress.parse("3d:02.2"), PciAddress.parse("01:00.1"))]
    )
    (hostdev,) = go_read(goxml, result.xml)
    assert hostdev["guest_address"]["function"] == "0x1"


KUBEVIRT_DOMAINS = sorted((ROOT / "tests" / "data" / "kubevirt-domains").glob("*.xml"))


@pytest.mark.parametrize("path", KUBEVIRT_DOMAINS, ids=lambda path: path.stem)
def test_kubevirt_converter_domains_as_go_reads_them(goxml: Path, path: Path) -> None:
    """The domains KubeVirt's own converter wrote: Go reads the result, nothing else moved."""
    domain = path.read_bytes()
    before = go_read(goxml, domain)
    addresses = [PciAddress.parse("0000:b1:00.1"), PciAddress.parse("0000:b1:00.2")]
    result = transform(
        domain, [HostDevice(a) for a in addresses], TransformOptions(numa_placement="off")
    )
    after = go_read(goxml, result.xml)
    assert after[: len(before)] == before  # KubeVirt's own hostdevs, as Go read them
    assert [h["source"]["address"] for h in after[len(before) :]] == [
        a.libvirt_attributes() for a in addresses
    ]
    aliases = frozenset(added.alias for added in result.added)
    assert canonical(result.xml, aliases) == canonical(domain)


NAMESPACED = (
    b'<domain type="kvm" xmlns:q="urn:q"><name>vm</name><devices>'
    b'<hostdev mode="subsystem" q:type="pci" managed="no"><source>'
    b'<address domain="0x0000" q:bus="0x3e" bus="0x3d" slot="0x02" function="0x2"></address>'
    b"</source></hostdev></devices></domain>"
)


def test_go_reads_namespaced_attributes_by_local_name_and_the_hook_refuses_them(
    goxml: Path,
) -> None:
    """Go's encoding/xml reads ``q:type`` as ``type`` and the last ``bus`` (libvirt the first)."""
    (hostdev,) = go_read(goxml, NAMESPACED)
    assert hostdev["type"] == "pci"
    assert hostdev["source"]["address"]["bus"] == "0x3d"
    with pytest.raises(InvalidInput, match="in a namespace"):
        transform(NAMESPACED, [HostDevice(PciAddress.parse("3d:02.2"))])
