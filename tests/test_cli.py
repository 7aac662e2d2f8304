"""``qat-hook`` and ``onDefineDomain`` as a user runs them: a real subprocess each time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES, ROOT, clean_env, run_cli

DOMAIN = str(EXAMPLES / "domain.xml")
VMI = str(EXAMPLES / "vmi.json")
NO_SYSFS = ("--verify-sysfs", "off")


def needs_libvirt() -> None:
    """libvirt-python comes with the test extra; only outside CI may it be missing."""
    if not os.environ.get("CI"):
        pytest.importorskip("libvirt")


def one_error_line(stderr: bytes) -> str:
    lines = stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert "Traceback" not in lines[0]
    return lines[0]


def test_version() -> None:
    proc = run_cli("--version")
    assert proc.returncode == 0
    assert proc.stdout.decode().startswith("qat-hook 0.")


def test_help_shows_examples() -> None:
    proc = run_cli("transform", "--help")
    assert proc.returncode == 0
    text = proc.stdout.decode()
    assert "examples:" in text
    assert "--guest-address" in text
    assert "QAT_HOOK_DEVICES" in text


def test_transform_file_to_stdout_matches_expected() -> None:
    proc = run_cli("transform", DOMAIN, "--device", "0000:3d:02.2", *NO_SYSFS)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == (EXAMPLES / "domain-with-qat.xml").read_bytes()
    assert "added ua-qat-0 for 0000:3d:02.2" in proc.stderr.decode()


def test_transform_stdin_with_qat_variable() -> None:
    stdin = (EXAMPLES / "domain.xml").read_bytes()
    proc = run_cli("transform", "-", *NO_SYSFS, stdin=stdin, QAT0="3d:02.2")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == (EXAMPLES / "domain-with-qat.xml").read_bytes()
    assert "from environment: QAT0" in proc.stderr.decode()


def test_transform_output_file_and_diff(tmp_path: Path) -> None:
    out = tmp_path / "out.xml"
    proc = run_cli(
        "transform",
        DOMAIN,
        "--vmi",
        VMI,
        "--device",
        "3d:02.2",
        "-o",
        str(out),
        "--diff",
        *NO_SYSFS,
    )
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes() == (EXAMPLES / "domain-with-qat.xml").read_bytes()
    diff = proc.stdout.decode()
    assert diff.startswith(f"--- {DOMAIN}\n+++ {out}\n")
    assert '+\t\t<hostdev mode="subsystem" type="pci" managed="no">' in diff
    assert "\n-" not in diff


def test_transform_validate_reports_libvirt() -> None:
    needs_libvirt()
    proc = run_cli("transform", DOMAIN, "--device", "3d:02.2", "--validate", *NO_SYSFS)
    assert proc.returncode == 0, proc.stderr
    err = proc.stderr.decode()
    assert "libvirt schema: 1 added hostdev(s) valid" in err
    assert "libvirt parser: hostdev ua-qat-0 kept with source 0000:3d:02.2" in err


def test_guest_address_option() -> None:
    proc = run_cli(
        "transform", DOMAIN, "--device", "3d:02.2", "--guest-address", "3d:02.2=00:10.0", *NO_SYSFS
    )
    assert proc.returncode == 0, proc.stderr
    assert b'<address type="pci" domain="0x0000" bus="0x00" slot="0x10"' in proc.stdout


def test_vmi_that_asks_for_nothing_passes_through(tmp_path: Path) -> None:
    vmi = tmp_path / "vmi.json"
    vmi.write_text(json.dumps({"metadata": {"name": "plain", "namespace": "ns"}}))
    proc = run_cli("transform", DOMAIN, "--vmi", str(vmi), QAT0="3d:02.2")
    assert proc.returncode == 0
    assert proc.stdout == (EXAMPLES / "domain.xml").read_bytes()
    assert "no change: the VMI requests no QAT resource" in proc.stderr.decode()


@pytest.mark.parametrize(
    ("args", "env", "needle"),
    [
        (("transform", "/nonexistent.xml", "--device", "3d:02.2"), {}, "cannot read domain XML"),
        (("transform", DOMAIN, "--device", "zz"), {}, "--device: 'zz' is not a PCI address"),
        (("transform", DOMAIN, *NO_SYSFS), {"QAT0": "garbage"}, "variable QAT0: 'garbage'"),
        (("transform", DOMAIN, "--vmi", VMI, *NO_SYSFS), {}, "no device address was found"),
        (
            ("transform", DOMAIN, "--vmi", VMI, *NO_SYSFS),
            {"QAT0": "3d:02.2", "QAT1": "3d:02.3"},
            "asks for 1 QAT VF(s)",
        ),
        (
            ("transform", DOMAIN, "--device", "3d:02.2", "--max-domain-bytes", "100"),
            {},
            "over the limit of 100",
        ),
        (
            ("transform", DOMAIN, "--device", "3d:02.2", "--guest-address", "3d:02.2"),
            {},
            "must be HOST=GUEST",
        ),
        (
            ("transform", DOMAIN, "--device", "3d:02.2", "--guest-address", "3d:02.3=00:10.0"),
            {},
            "not among the devices to inject",
        ),
        (("transform", str(EXAMPLES / "vmi.json"), "--device", "3d:02.2"), {}, "not well-formed"),
        (("discover", "--vmi", DOMAIN), {}, "VMI is not valid JSON"),
    ],
)
def test_bad_input_is_one_line_and_exit_1(
    args: tuple[str, ...], env: dict[str, str], needle: str
) -> None:
    proc = run_cli(*args, env=env)
    assert proc.returncode == 1, proc.stderr
    line = one_error_line(proc.stderr)
    assert line.startswith("qat-hook: error: ")
    assert needle in line
    assert proc.stdout == b""


def test_failed_validation_exits_1(tmp_path: Path) -> None:
    needs_libvirt()
    domain = tmp_path / "d.xml"
    domain.write_bytes(
        (EXAMPLES / "domain.xml").read_bytes().replace(b'<memory unit="b">4294967296</memory>', b"")
    )
    proc = run_cli("transform", str(domain), "--device", "3d:02.2", "--validate", *NO_SYSFS)
    assert proc.returncode == 1
    assert "parser: libvirt could not define the domain" in proc.stderr.decode()


@pytest.mark.parametrize(
    "args",
    [
        ("transform", DOMAIN, "--managed", "maybe"),
        ("transform", DOMAIN, "--bogus"),
        ("frobnicate",),
        (),
    ],
)
def test_usage_errors_exit_2(args: tuple[str, ...]) -> None:
    proc = run_cli(*args)
    assert proc.returncode == 2
    line = one_error_line(proc.stderr)
    assert "error:" in line and "--help" in line


def test_discover_text_and_json() -> None:
    text = run_cli("discover", "--vmi", VMI, *NO_SYSFS, QAT0="0000:3d:02.2")
    assert text.returncode == 0, text.stderr
    assert "inject 1 device(s): resource qat.intel.com/generic: 1" in text.stdout.decode()
    assert "device:   0000:3d:02.2" in text.stdout.decode()
    proc = run_cli("discover", "--vmi", VMI, "--output", "json", *NO_SYSFS, QAT0="3d:02.2")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["devices"] == ["0000:3d:02.2"]
    assert data["source"] == "environment"
    assert data["expected"] == 1
    assert data["warnings"] == []


def test_discover_failure_exit_1() -> None:
    proc = run_cli("discover", "--vmi", VMI, *NO_SYSFS)
    assert proc.returncode == 1
    assert "Looked at:" in one_error_line(proc.stderr)


def test_options_come_from_environment() -> None:
    proc = run_cli(
        "transform",
        DOMAIN,
        QAT_HOOK_DEVICES="3d:02.2,3d:02.3,",
        QAT_HOOK_MANAGED="yes",
        QAT_HOOK_VERIFY_SYSFS="off",
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count(b'managed="yes"') == 2


def test_flag_wins_over_environment() -> None:
    proc = run_cli(
        "transform", DOMAIN, "--device", "3d:02.4", *NO_SYSFS, QAT_HOOK_DEVICES="3d:02.2"
    )
    assert b'function="0x4"' in proc.stdout
    assert b'function="0x2"' not in proc.stdout


# --- the sidecar-shim script -----------------------------------------------------------


def run_shim(*args: str, **env: str) -> subprocess.CompletedProcess[bytes]:
    import subprocess

    code = "import sys; from hook_sidecar.cli import shim_main; sys.exit(shim_main())"
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        env=clean_env(**env),
        cwd=ROOT,
        timeout=60,
        check=False,
    )


def test_shim_prints_new_domain() -> None:
    proc = run_shim(
        "--vmi",
        (EXAMPLES / "vmi.json").read_text(),
        "--domain",
        (EXAMPLES / "domain.xml").read_text(),
        QAT0="3d:02.2",
        QAT_HOOK_VERIFY_SYSFS="off",
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == (EXAMPLES / "domain-with-qat.xml").read_bytes()


def test_shim_failure_is_non_zero_with_message() -> None:
    proc = run_shim("--vmi", (EXAMPLES / "vmi.json").read_text(), "--domain", "<domain>")
    assert proc.returncode == 1
    assert one_error_line(proc.stderr).startswith("onDefineDomain: error: ")
