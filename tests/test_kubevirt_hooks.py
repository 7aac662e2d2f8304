"""KubeVirt's own hook manager (pkg/hooks, as in virt-launcher) drives a real ``qat-hook serve``.

The driver is ``hookdriver`` (tests/peers/kubevirt/cmd/hookdriver): KubeVirt's manager
scanning a directory laid out as virt-launcher's /var/run/kubevirt-hooks, negotiating the
version over Info, calling OnDefineDomain and then Shutdown.
"""

from __future__ import annotations

import json
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES, VF, ServerProcess, start_server
from tests.support.peers import hook_manager

VERSIONS = ("v1alpha1", "v1alpha2", "v1alpha3")


def vf_hostdevs(domain_xml: str) -> list[str]:
    """The host PCI addresses of the domain's PCI hostdevs, as 0000:bb:ss.f."""
    found = []
    for address in ET.fromstring(domain_xml).findall("./devices/hostdev/source/address"):
        a = {k: int(v, 16) for k, v in address.attrib.items() if k != "type"}
        found.append(f"{a['domain']:04x}:{a['bus']:02x}:{a['slot']:02x}.{a['function']:x}")
    return found


def launcher_view(tmp_path: Path, *args: str, vf: str | None = VF) -> tuple[Path, ServerProcess]:
    """A server whose socket sits where virt-launcher sees a sidecar's: <dir>/<container>/.

    ``vf`` is the address in the server's QAT0 (None: the server has no VF).
    """
    hooks_dir = tmp_path / "kubevirt-hooks"
    hooks_dir.mkdir()
    if vf is None:
        return hooks_dir, start_server(hooks_dir, *args)
    return hooks_dir, start_server(hooks_dir, *args, QAT0=vf)


def drive(
    hooks_dir: Path, tmp_path: Path, vmi: Path = EXAMPLES / "vmi.json", *extra: str
) -> tuple[subprocess.CompletedProcess[bytes], dict[str, object]]:
    report = tmp_path / "report.json"
    result = hook_manager(hooks_dir, vmi, EXAMPLES / "domain.xml", "-report", str(report), *extra)
    return result, json.loads(report.read_text()) if report.exists() else {}


@pytest.mark.parametrize("version", VERSIONS)
def test_hook_manager_negotiates_each_version_and_gets_the_vf(tmp_path: Path, version: str) -> None:
    hooks_dir, server = launcher_view(tmp_path, "--hook-api-version", version)
    try:
        result, report = drive(hooks_dir, tmp_path)
        assert result.returncode == 0, result.stderr.decode()
        assert vf_hostdevs(result.stdout.decode()) == [VF]
        points = report["hookPoints"]
        assert isinstance(points, dict)
        assert [c["version"] for c in points["OnDefineDomain"]] == [version]
        # Shutdown exists from v1alpha3 on; KubeVirt calls it only where it is offered.
        assert ("Shutdown" in points) == (version == "v1alpha3")
    finally:
        server.stop()


def test_hook_manager_picks_the_newest_offered_version(tmp_path: Path) -> None:
    hooks_dir, server = launcher_view(tmp_path)
    try:
        result, report = drive(hooks_dir, tmp_path, EXAMPLES / "vmi.json", "-shutdown=false")
        assert result.returncode == 0, result.stderr.decode()
        points = report["hookPoints"]
        assert isinstance(points, dict)
        assert [c["version"] for c in points["OnDefineDomain"]] == ["v1alpha3"]
    finally:
        server.stop()


def test_shutdown_from_the_hook_manager_ends_the_server_cleanly(tmp_path: Path) -> None:
    hooks_dir, server = launcher_view(tmp_path, "--hook-api-version", "v1alpha3")
    result, _ = drive(hooks_dir, tmp_path)
    assert result.returncode == 0, result.stderr.decode()
    assert server.process.wait(timeout=15) == 0
    server.log.join()


def test_repeated_calls_each_start_from_kubevirts_domain(tmp_path: Path) -> None:
    hooks_dir, server = launcher_view(tmp_path)
    try:
        result, report = drive(hooks_dir, tmp_path, EXAMPLES / "vmi.json", "-calls", "3")
        assert result.returncode == 0, result.stderr.decode()
        assert vf_hostdevs(result.stdout.decode()) == [VF]
        assert len(report["callMs"]) == 3  # type: ignore[arg-type]
    finally:
        server.stop()


def test_a_failing_hook_fails_the_vm_start_with_the_servers_message(tmp_path: Path) -> None:
    # No VF anywhere: the VMI asks for one, so the hook fails the call, and KubeVirt's manager
    # returns that error (virt-launcher then fails the VM start and records it in its events).
    hooks_dir, server = launcher_view(tmp_path, vf=None)
    try:
        result, _ = drive(hooks_dir, tmp_path)
        assert result.returncode == 1
        lines = result.stderr.decode().strip().splitlines()
        assert len(lines) == 1, lines
        assert lines[0].startswith("hookdriver: OnDefineDomain: rpc error: code = ")
        assert "code = Unknown" not in lines[0]  # a proper status code, not a stray exception
    finally:
        server.stop()
