"""KubeVirt's own sidecar-shim (cmd/sidecars) runs the project's ``onDefineDomain`` script.

The shim is the real program built from kubevirt.io/kubevirt; it hard-codes its socket
directory /var/run/kubevirt-hooks, so ``nsbind`` (tests/peers/kubevirt/cmd/nsbind) shows a
test directory there for the shim's process only. KubeVirt's hook manager (``hookdriver``)
calls it as virt-launcher does; the shim execs ``onDefineDomain --vmi JSON --domain XML``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES, VF, clean_env, spawn_server
from tests.support.peers import hook_manager, peer
from tests.test_kubevirt_hooks import launcher_view, vf_hostdevs

# Linux refuses any single exec argument longer than MAX_ARG_STRLEN (32 pages: 128 KiB).
MAX_ARG_STRLEN = 32 * 4096


class Shim:
    """A running sidecar-shim; virt-launcher sees its socket in ``hooks_dir/hook-sidecar-0``."""

    def __init__(self, tmp_path: Path, version: str, **env: str) -> None:
        # Short: a unix socket path (as virt-launcher's side sees it) has at most 107 bytes.
        self.hooks_dir = tmp_path / "h"
        container = self.hooks_dir / "hook-sidecar-0"
        container.mkdir(parents=True)
        venv_bin = str(Path(sys.executable).parent)  # where the onDefineDomain script lives
        command = [
            str(peer("nsbind")),
            "-bind",
            f"{container}=/var/run/kubevirt-hooks",
            "--",
            str(peer("sidecar-shim")),
            "--version",
            version,
        ]
        environment = clean_env(**env)
        environment["PATH"] = venv_bin + os.pathsep + environment["PATH"]
        self.process, self.log = spawn_server(command, tmp_path, environment)
        self.log.wait_for(lambda line: "shim is now exposing its services" in line)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.terminate()
        status = self.process.wait(10)
        self.log.join()
        return status


@pytest.fixture
def shim(tmp_path: Path) -> Iterator[Shim]:
    proc = Shim(tmp_path, "v1alpha3", QAT0=VF)
    yield proc
    proc.stop()


def drive(hooks_dir: Path, vmi: Path) -> subprocess.CompletedProcess[bytes]:
    return hook_manager(hooks_dir, vmi, EXAMPLES / "domain.xml")


def big_vmi(tmp_path: Path) -> Path:
    """The example VMI with an annotation that takes its JSON past MAX_ARG_STRLEN."""
    vmi = json.loads((EXAMPLES / "vmi.json").read_text())
    vmi["metadata"]["annotations"]["example.com/large"] = "x" * (MAX_ARG_STRLEN + 4096)
    path = tmp_path / "big-vmi.json"
    path.write_text(json.dumps(vmi))
    assert path.stat().st_size > MAX_ARG_STRLEN
    return path


def test_the_shim_runs_ondefinedomain_and_the_vf_is_added(shim: Shim) -> None:
    result = drive(shim.hooks_dir, EXAMPLES / "vmi.json")
    assert result.returncode == 0, result.stderr.decode()
    assert vf_hostdevs(result.stdout.decode()) == [VF]
    # The hook manager's Shutdown ends the shim cleanly.
    assert shim.process.wait(10) == 0
    shim.log.join()


def test_a_vmi_over_max_arg_strlen_fails_in_the_shim_before_the_script_runs(
    tmp_path: Path, shim: Shim
) -> None:
    result = drive(shim.hooks_dir, big_vmi(tmp_path))
    assert result.returncode == 1
    line = result.stderr.decode().strip()
    # What virt-launcher records for the VMI's owner: the shim's exec error, as gRPC Unknown.
    assert line.startswith(
        "hookdriver: OnDefineDomain: rpc error: code = Unknown desc = fork/exec "
    )
    assert line.endswith("/onDefineDomain: argument list too long"), line
    assert not any('hook":"onDefineDomain' in entry for entry in shim.log.lines())


def test_the_server_flavor_takes_the_same_vmi(tmp_path: Path) -> None:
    hooks_dir, server = launcher_view(tmp_path)
    try:
        result = drive(hooks_dir, big_vmi(tmp_path))
        assert result.returncode == 0, result.stderr.decode()
        assert vf_hostdevs(result.stdout.decode()) == [VF]
    finally:
        server.stop()
