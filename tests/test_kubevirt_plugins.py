"""KubeVirt's structured-plugin pipeline (virtwrap/plugins.ApplyDomainHooks) drives a real server.

``plugindriver`` (tests/peers/kubevirt/cmd/plugindriver) runs the pipeline as virt-launcher
does, with the Plugin object the repo ships (rendered by the project's kubectl kustomize):
the Plugin's condition, then MutateDomain on the sidecar socket the Plugin names, which the
driver reaches at /var/run/kubevirt-plugin/qat/ through a private mount namespace.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import k8s_render
from tests.conftest import EXAMPLES, VF, ServerProcess, start_server
from tests.support.peers import run_peer
from tests.test_kubevirt_hooks import vf_hostdevs


@pytest.fixture
def plugin_file(tmp_path: Path) -> Path:
    """The Plugin object of the plugin-podresources install, as kustomize renders it."""
    objects = k8s_render.kustomize(k8s_render.OVERLAYS / "plugin-podresources")
    path = tmp_path / "plugin.json"
    path.write_text(json.dumps(k8s_render.one(objects, "Plugin")))
    return path


@pytest.fixture
def plugin_server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A server on <tmp>/plugin/qat/qat.sock: <tmp>/plugin stands for the plugin socket volume."""
    proc = start_server(tmp_path, plugin=True, hook=False, QAT0=VF)
    yield proc
    proc.stop()


def pipeline(plugin: Path, server: ServerProcess, vmi: Path, context: str) -> tuple[int, str, str]:
    assert server.plugin_socket is not None
    result = run_peer(
        "plugindriver",
        "-plugins",
        str(plugin),
        "-vmi",
        str(vmi),
        "-domain",
        str(EXAMPLES / "domain.xml"),
        "-context",
        context,
        "-socket-root",
        str(server.plugin_socket.parent.parent),
    )
    return result.returncode, result.stdout.decode(), result.stderr.decode()


def test_boot_adds_the_vf(plugin_file: Path, plugin_server: ServerProcess) -> None:
    status, out, err = pipeline(
        plugin_file, plugin_server, EXAMPLES / "plugin" / "vmi-qat.yaml", "Boot"
    )
    assert status == 0, err
    assert vf_hostdevs(out) == [VF]
    plugin_server.wait_for_log("MutateDomain")


def test_migration_target_with_a_vf_is_refused_with_the_reason(
    plugin_file: Path, plugin_server: ServerProcess
) -> None:
    status, out, err = pipeline(
        plugin_file, plugin_server, EXAMPLES / "plugin" / "vmi-qat.yaml", "MigrationTarget"
    )
    assert status == 1 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, lines
    assert "MutateDomain RPC to qat failed with FailedPrecondition" in lines[0]
    assert "cannot be live-migrated" in lines[0]


def test_a_plain_vmi_is_not_selected_and_keeps_its_domain(
    tmp_path: Path, plugin_file: Path, plugin_server: ServerProcess
) -> None:
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps(k8s_render.generated_vmis()["none"]))
    status, out, err = pipeline(plugin_file, plugin_server, plain, "Boot")
    assert status == 0, err
    assert vf_hostdevs(out) == []
    devices = ET.fromstring(out).find("devices")
    original = ET.fromstring((EXAMPLES / "domain.xml").read_bytes()).find("devices")
    assert devices is not None and original is not None
    # libvirtxml's round trip orders devices by kind; the set of devices is unchanged.
    assert sorted(d.tag for d in devices) == sorted(d.tag for d in original)
    assert not any("MutateDomain" in line for line in plugin_server.log_lines())
