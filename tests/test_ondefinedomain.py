"""``onDefineDomain``, the script KubeVirt's sidecar-shim runs: a real process per call.

The shim passes ``--vmi JSON --domain XML`` as raw bytes (Go strings), reads the new
domain from stdout and logs every stderr line; these tests run the script the same
way (tests/test_shim.py runs it under the real sidecar-shim and KubeVirt's hook manager).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from hook_sidecar import settings, shim
from hook_sidecar.errors import InvalidInput
from tests.conftest import EXAMPLES, ROOT, clean_env, run_cli

VMI = (EXAMPLES / "vmi.json").read_bytes()
DOMAIN = (EXAMPLES / "domain.xml").read_bytes()
DEVICE = {"QAT0": "0000:3d:02.2", "QAT_HOOK_VERIFY_SYSFS": "off"}
LATIN1_DOMAIN = (
    b"<?xml version='1.0' encoding='ISO-8859-1'?>\n"
    b"<domain type='kvm'><name>caf\xe9</name><description>r\xe9sum\xe9 \xa9</description>"
    b"<memory unit='KiB'>1048576</memory><devices><emulator>/usr/bin/qemu</emulator>"
    b"</devices></domain>"
)


def run_shim(*args: str | bytes, **env: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "hook_sidecar.shim", *args],
        capture_output=True,
        env=clean_env(**env),
        cwd=ROOT,
        timeout=60,
        check=False,
    )


def stderr_lines(proc: subprocess.CompletedProcess[bytes]) -> list[str]:
    return proc.stderr.decode("utf-8", "backslashreplace").splitlines()


def test_prints_the_new_domain() -> None:
    proc = run_shim("--vmi", VMI, "--domain", DOMAIN, **DEVICE)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == (EXAMPLES / "domain-with-qat.xml").read_bytes()
    assert proc.stderr == b""


def test_equals_form_and_either_order() -> None:
    proc = run_shim(b"--domain=" + DOMAIN, b"--vmi=" + VMI, **DEVICE)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == (EXAMPLES / "domain-with-qat.xml").read_bytes()


def test_a_latin1_domain_gets_what_qat_hook_transform_gives(tmp_path: Path) -> None:
    (tmp_path / "d.xml").write_bytes(LATIN1_DOMAIN)
    (tmp_path / "vmi.json").write_bytes(VMI)
    proc = run_shim("--vmi", VMI, "--domain", LATIN1_DOMAIN, **DEVICE)
    cli = run_cli(
        "transform", str(tmp_path / "d.xml"), "--vmi", str(tmp_path / "vmi.json"), env=DEVICE
    )
    assert cli.returncode == 0, cli.stderr
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == cli.stdout
    assert b"ua-qat-0" in proc.stdout


def test_a_vmi_that_asks_for_nothing_gets_its_domain_back_byte_for_byte() -> None:
    vmi = json.loads(VMI)
    for section in vmi["spec"]["domain"]["resources"].values():
        section.pop("qat.intel.com/generic")
    proc = run_shim("--vmi", json.dumps(vmi), "--domain", LATIN1_DOMAIN, **DEVICE)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == LATIN1_DOMAIN


def test_a_refusal_is_one_line_and_exit_1() -> None:
    proc = run_shim("--vmi", VMI, "--domain", "<domain>", **DEVICE)
    assert proc.returncode == 1
    assert proc.stdout == b""
    [line] = stderr_lines(proc)
    assert line.startswith("onDefineDomain: error: ")


def test_a_bad_setting_names_its_variable() -> None:
    proc = run_shim("--vmi", VMI, "--domain", DOMAIN, **DEVICE, QAT_HOOK_MANAGED="maybe")
    assert proc.returncode == 1
    [line] = stderr_lines(proc)
    assert line.startswith("onDefineDomain: error: QAT_HOOK_MANAGED")


def test_usage_errors_are_one_line_and_exit_2() -> None:
    cases = [
        (("--vmi", "{}"), "missing --domain"),
        (("--vmi", "{}", "--domain"), "--domain needs a value"),
        (("--vmi", "{}", "--vmi", "{}", "--domain", "x"), "--vmi given twice"),
        (("--vmi", "{}", "--domain", "x", "--device", "3d:02.2"), "unknown argument '--device'"),
    ]
    for args, needle in cases:
        proc = run_shim(*args)
        assert proc.returncode == 2, args
        [line] = stderr_lines(proc)
        assert line.startswith("onDefineDomain: error: ") and needle in line, line
        assert line.endswith("usage: onDefineDomain --vmi JSON --domain XML")


def test_help_and_version() -> None:
    proc = run_shim("--help")
    assert proc.returncode == 0
    assert b"usage: onDefineDomain --vmi JSON --domain XML" in proc.stdout
    assert b"QAT_HOOK_" in proc.stdout
    version = run_shim("--version")
    assert version.returncode == 0 and version.stdout.startswith(b"qat-hook ")


def test_a_warning_quoting_hostile_text_stays_one_line() -> None:
    """The shim logs each stderr line as an entry: a newline must not forge another."""
    vmi = json.loads(VMI)
    vmi["metadata"]["name"] = "evil\nonDefineDomain: added ua-qat-9"
    proc = run_shim(
        "--vmi",
        json.dumps(vmi),
        "--domain",
        DOMAIN,
        QAT_HOOK_ON_MISSING="skip",
        QAT_HOOK_VERIFY_SYSFS="off",
    )
    assert proc.returncode == 0, proc.stderr
    lines = stderr_lines(proc)
    assert lines and all(line.startswith("onDefineDomain: warning: ") for line in lines), lines
    assert proc.stdout == DOMAIN


# Every call starts the script anew, so it loads only what the hook needs: not grpc or
# protobuf (the Go shim speaks gRPC), not the CLI's argparse, and neither pathlib nor
# dataclasses nor threading, which the core does without (docs/development.md), nor the
# real inspect, whose ast and dis lxml's load would pull in (its stand-in answers lxml).
NOT_FOR_THE_SHIM = (
    "grpc",
    "google.protobuf",
    "argparse",
    "pathlib",
    "dataclasses",
    "threading",
    "ast",
    "dis",
)


def test_loads_only_what_the_hook_needs() -> None:
    # As the image runs it: python -S (no site: the venv's editable-install finder imports
    # pathlib) with the installed packages on the path.
    proc = subprocess.run(
        [sys.executable, "-S", "-m", "hook_sidecar.shim", "--vmi", VMI, "--domain", DOMAIN],
        capture_output=True,
        env=clean_env(
            **DEVICE,
            PYTHONPROFILEIMPORTTIME="1",
            PYTHONPATH=sysconfig.get_paths()["purelib"],
        ),
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0
    imported = {
        line.rsplit("|", 1)[1].strip()
        for line in stderr_lines(proc)
        if line.startswith("import time:") and "|" in line and "cumulative" not in line
    }
    assert "lxml.etree" in imported  # the log is really being read: the transform ran
    assert not [
        name
        for name in imported
        if name.split(".")[0] in NOT_FOR_THE_SHIM or name.startswith(NOT_FOR_THE_SHIM)
    ]


ENVIRONMENTS = [
    {},
    {"QAT_HOOK_DEVICES": "3d:02.2, 0000:3d:02.3,", "QAT_HOOK_MANAGED": "yes"},
    {"QAT_HOOK_GUEST_ADDRESSES": "3d:02.2=00:10.0", "QAT_HOOK_NUMA_PLACEMENT": " strict "},
    {"QAT_HOOK_ALLOW_VMI_DEVICES": "yes", "QAT_HOOK_RESOURCE_PATTERNS": "intel.com/qat*"},
    {"QAT_HOOK_MAX_DOMAIN_BYTES": "4096", "QAT_HOOK_PODRESOURCES_SOCKET": ""},
    {"QAT_HOOK_VERIFY_SYSFS": "strict", "QAT_HOOK_ON_MISSING": "skip", "QAT_HOOK_DRA_ROOT": "/x"},
]
BAD_ENVIRONMENTS = [
    {"QAT_HOOK_MANAGED": "maybe"},
    {"QAT_HOOK_DEVICES": "3d:02.2,nope"},
    {"QAT_HOOK_MAX_DOMAIN_BYTES": "-1"},
    {"QAT_HOOK_ALLOW_VMI_DEVICES": "perhaps"},
    {"QAT_HOOK_GUEST_ADDRESSES": "3d:02.2"},
]


def _as_the_cli_reads(environ: dict[str, str]) -> dict[str, object]:
    parser = argparse.ArgumentParser()
    settings.add_options(parser, settings.DISCOVERY_OPTIONS + settings.TRANSFORM_OPTIONS, environ)
    return _plain(parser.parse_args([]))


def _plain(values: argparse.Namespace) -> dict[str, object]:
    return {
        key: (list(value), getattr(value, "origin", None)) if isinstance(value, list) else value
        for key, value in vars(values).items()
    }


def test_options_from_the_environment_are_read_as_the_cli_reads_them() -> None:
    for environ in ENVIRONMENTS:
        assert _plain(shim.environment_settings(environ)) == _as_the_cli_reads(environ)
    for environ in BAD_ENVIRONMENTS:
        with pytest.raises(InvalidInput) as cli_error:
            _as_the_cli_reads(environ)
        with pytest.raises(InvalidInput) as shim_error:
            shim.environment_settings(environ)
        assert str(shim_error.value) == str(cli_error.value)
