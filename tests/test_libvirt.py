"""The hook's output read by libvirt itself: its RNG schema and its domain parser.

These run in CI and must never be skipped there: ``make test`` installs
libvirt-python and libvirt0 (which carries the schemas and the test driver).
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hook_sidecar.hostdevs import HostDevice, TransformOptions
from hook_sidecar.pci import PciAddress
from hook_sidecar.transform import transform
from hook_sidecar.validate import validate
from tests.domains import GeneratedDomain, domains, pci_addresses

try:
    import libvirt  # noqa: F401
except ImportError:  # pragma: no cover - only on a machine without the test extra
    if os.environ.get("CI"):
        raise
    pytest.skip("libvirt-python is not installed (pip install '.[test]')", allow_module_level=True)


def test_example_passes_schema_and_parser(domain_xml: bytes) -> None:
    result = transform(
        domain_xml,
        [HostDevice(PciAddress.parse("3d:02.2")), HostDevice(PciAddress.parse("3d:02.3"))],
    )
    report = validate(result.xml, result.added)
    assert report.ok, report.lines
    assert any("valid against libvirt's domain.rng" in line for line in report.lines)
    assert any("hostdev ua-qat-1 kept with source 0000:3d:02.3" in line for line in report.lines)


def test_guest_address_and_managed_yes_pass(domain_xml: bytes) -> None:
    result = transform(
        domain_xml,
        [HostDevice(PciAddress.parse("3d:02.2"), PciAddress.parse("00:10.0"))],
        TransformOptions(managed="yes"),
    )
    report = validate(result.xml, result.added)
    assert report.ok, report.lines


def test_schema_rejects_a_broken_hostdev(domain_xml: bytes) -> None:
    """The check is real: libvirt's schema refuses a hostdev the hook must never write."""
    result = transform(domain_xml, [HostDevice(PciAddress.parse("3d:02.2"))])
    broken = result.xml.replace(b'managed="no"', b'managed="maybe"')
    report = validate(broken, result.added)
    assert not report.ok
    assert any("schema: libvirt rejected" in line for line in report.lines)


def test_parser_rejects_a_broken_domain(domain_xml: bytes) -> None:
    result = transform(domain_xml, [HostDevice(PciAddress.parse("3d:02.2"))])
    broken = result.xml.replace(b'<memory unit="b">4294967296</memory>', b"")
    report = validate(broken, result.added)
    assert not report.ok
    assert any(line.startswith("parser: libvirt could not define") for line in report.lines)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(domains(), st.lists(pci_addresses, min_size=1, max_size=3, unique=True))
def test_generated_domains_pass_libvirt(
    generated: GeneratedDomain, addresses: list[PciAddress]
) -> None:
    result = transform(generated.xml, [HostDevice(a) for a in addresses])
    report = validate(result.xml, result.added)
    assert report.ok, report.lines
