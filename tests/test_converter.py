"""The checked-in KubeVirt domains are what KubeVirt's converter writes at the pinned version.

tests/data/kubevirt-domains/<name>.xml is the domain virt-launcher hands to OnDefineDomain for
<name>.json, with the converter facts in <name>.args; ``kvconvert``
(tests/peers/kubevirt/cmd/kvconvert) runs KubeVirt's converter. After a KubeVirt bump,
``make fixtures`` rewrites them in one command.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.peers import run_peer

FIXTURES = Path(__file__).resolve().parent / "data" / "kubevirt-domains"
VMIS = sorted(FIXTURES.glob("*.json"))


def converter_args(vmi: Path) -> list[str]:
    args = vmi.with_suffix(".args")
    if not args.exists():
        return []
    lines = (line.strip() for line in args.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def test_every_fixture_has_its_vmi() -> None:
    assert VMIS
    assert sorted(p.stem for p in FIXTURES.glob("*.xml")) == [p.stem for p in VMIS]


@pytest.mark.parametrize("vmi", VMIS, ids=lambda p: p.stem)
def test_fixture_is_what_the_pinned_converter_writes(vmi: Path) -> None:
    result = run_peer("kvconvert", "-vmi", str(vmi), *converter_args(vmi))
    assert result.returncode == 0, result.stderr.decode()
    fixture = vmi.with_suffix(".xml")
    assert result.stdout == fixture.read_bytes(), (
        f"{fixture.name} differs from what KubeVirt's converter writes now: run make fixtures"
    )


def test_a_vmi_with_dedicated_cpus_needs_the_hosts_facts() -> None:
    result = run_peer("kvconvert", "-vmi", str(FIXTURES / "numa-passthrough-2vf.json"))
    assert result.returncode == 1
    assert result.stderr.decode().strip() == (
        "kvconvert: the VMI has dedicated CPUs: give the pod's -cpuset and the host's -numa"
    )
