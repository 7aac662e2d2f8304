"""``qat-hook`` and ``onDefineDomain`` as a user runs them: a real subprocess each time."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hook_sidecar import cli, validate
from hook_sidecar.hostdevs import DEFAULT_MAX_BYTES
from tests.ci import skip_or_fail
from tests.conftest import EXAMPLES, ROOT, clean_env, run_cli

DOMAIN = str(EXAMPLES / "domain.xml")
VMI = str(EXAMPLES / "vmi.json")
NO_SYSFS = ("--verify-sysfs", "off")


# Copies of the domains KubeVirt's converter made (../shared/kubevirt-domains), kept in the
# repository because CI clones it without that folder at a fixed path.
SHARED = Path(__file__).resolve().parent / "data" / "kubevirt-domains"


def needs_libvirt() -> None:
    """libvirt-python comes with the test extra; only outside CI may it be missing."""
    try:
        import libvirt  # noqa: F401
    except ImportError:
        skip_or_fail("libvirt-python is not installed")


def one_error_line(stderr: bytes) -> str:
    lines = stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert "Traceback" not in lines[0]
    return lines[0]


def test_version() -> None:
    proc = run_cli("--version")
    assert proc.returncode == 0
    assert proc.stdout.decode().startswith("qat-hook 0.")


def test_serve_help_names_the_hook_api_version_and_its_shim_spelling() -> None:
    text = " ".join(run_cli("serve", "--help").stdout.decode().split())
    assert "--hook-api-version VERSION, --version VERSION hook API version to offer" in text
    assert "--version is the same option, the name KubeVirt's sidecar-shim uses" in text
    assert "qat-hook --version prints the program's" in text
    top = " ".join(run_cli("--help").stdout.decode().split())
    assert "qat-hook serve --version is the hook API's" in top


ONE_COMMAND_ARGV = {
    "transform": ["transform", "domain.xml", "--diff", "--device", "3d:02.3", "-o", "x.xml"],
    "discover": ["discover", "--vmi", "vmi.json", "--format", "json"],
    "serve": ["serve", "--socket-dir", "/x", "--warm-up", "off", "--device", "3d:02.3"],
}


@pytest.mark.parametrize("command", cli.COMMANDS)
def test_the_one_command_parser_parses_and_helps_as_the_whole_one(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    env = {"QAT_HOOK_DEVICES": "3d:02.2", "QAT_HOOK_WORKERS": "3", "QAT_HOOK_MANAGED": "yes"}
    argv = ONE_COMMAND_ARGV[command]
    whole = cli.build_parser(env).parse_args(argv)
    one = cli.build_parser(env, command=command).parse_args(argv)
    assert vars(one) == vars(whole)
    helps = []
    for parser in (cli.build_parser(env), cli.build_parser(env, command=command)):
        with pytest.raises(SystemExit):
            parser.parse_args([command, "--help"])
        helps.append(capsys.readouterr().out)
    assert helps[0] == helps[1] and "--device" in helps[0]


def test_main_builds_only_the_options_of_the_command_it_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    built: list[str] = []
    for name, (add_options, epilog) in list(cli._OPTIONS.items()):

        def recording(parser: Any, env: Any, name: str = name, add: Any = add_options) -> None:
            built.append(name)
            add(parser, env)

        monkeypatch.setitem(cli._OPTIONS, name, (recording, epilog))
    with pytest.raises(SystemExit):
        cli.main(["serve", "--help"])
    assert built == ["serve"]
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert built == ["serve", *cli.COMMANDS]


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
        (("transform", DOMAIN, "--vmi", VMI, *NO_SYSFS), {}, "but none was found in"),
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
        (("discover", "--vmi", DOMAIN), {}, "is not JSON (YAML is not read)"),
        (
            ("transform", DOMAIN, "--managed", "maybe"),
            {},
            "--managed 'maybe' is not one of no, yes",
        ),
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
        ("transform", DOMAIN, "--bogus"),
        ("transform", DOMAIN, "--device"),
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
    for flag in ("--format", "--output"):  # --output: the older spelling, kept working
        proc = run_cli("discover", "--vmi", VMI, flag, "json", *NO_SYSFS, QAT0="3d:02.2")
        assert proc.returncode == 0, proc.stderr
        assert (b"--output is now --format" in proc.stderr) == (flag == "--output")
        data = json.loads(proc.stdout)
        assert data["devices"] == ["0000:3d:02.2"]
        assert data["source"] == "environment"
        assert data["expected"] == 1
        assert data["warnings"] == []


def test_discover_failure_is_the_error_then_every_place_looked_at() -> None:
    proc = run_cli("discover", "--vmi", VMI, *NO_SYSFS)
    assert proc.returncode == 1
    lines = proc.stderr.decode().splitlines()
    assert lines[0].startswith("qat-hook: error: VMI default/vmi-qat asks for a QAT VF")
    assert lines[1:] == [
        "qat-hook: looked at: --device options and QAT_HOOK_DEVICES (not set)",
        "qat-hook: looked at: device-plugin variables QAT<N>, PCI_RESOURCE_QAT_INTEL_COM_*, "
        "PCIDEVICE_QAT_INTEL_COM_* (none set in this container)",
        "qat-hook: looked at: DRA metadata under /var/run/kubernetes.io/dra-device-attributes "
        "(no such directory)",
        "qat-hook: looked at: VMI annotation qat.vm.kubevirt.io/devices "
        "(ignored: start the sidecar with --allow-vmi-devices to use it)",
    ]


def test_nothing_found_is_one_short_line() -> None:
    proc = run_cli("transform", DOMAIN, "--vmi", VMI, *NO_SYSFS)
    assert proc.returncode == 1
    line = one_error_line(proc.stderr)
    assert line == (
        "qat-hook: error: VMI default/vmi-qat asks for a QAT VF (resource qat.intel.com/generic:"
        " 1) but none was found in --device/QAT_HOOK_DEVICES, device-plugin variables, DRA "
        "metadata; first: give the sidecar a device source (see "
        "docs/how-it-works.md#how-the-vfs-address-reaches-the-sidecar)"
    )


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

    code = "import sys; from hook_sidecar.shim import main; sys.exit(main())"
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


# --- small things a new user meets first ---------------------------------------------------


def test_discover_help_explains_every_option() -> None:
    text = run_cli("discover", "--help").stdout.decode()
    flat = " ".join(text.split())
    assert "--vmi VMI.json the VirtualMachineInstance as JSON" in flat
    assert "--format {text,json} text for people, json for scripts" in flat
    assert "--output" not in flat  # transform's --output names a file
    assert "--domain DOMAIN.xml also run the transform on this domain" in flat


def test_shim_help_has_no_raw_markup() -> None:
    proc = run_shim("--help")
    assert proc.returncode == 0
    text = proc.stdout.decode()
    assert "``" not in text
    assert "onDefineDomain --vmi JSON --domain XML" in text


def test_validate_hint_works_from_a_clone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "libvirt", None)  # import libvirt now raises ImportError
    with pytest.raises(validate.ValidationUnavailable) as info:
        validate.validate(b"<domain/>", ())
    assert "pip install '.[validate]'" in str(info.value)
    assert "kubevirt-qat-hook[validate]" not in str(info.value)


def readme_commands(prefix: str) -> list[str]:
    readme = (ROOT / "README.md").read_text()
    return [c for c in re.findall(r"^\| `([^`]+)` \|", readme, re.M) if c.startswith(prefix)]


def test_readme_transform_examples_work_as_written(tmp_path: Path) -> None:
    """Each `qat-hook transform examples/...` row of the README, run in a clean environment."""
    needs_libvirt()
    commands = readme_commands("qat-hook transform examples/")
    assert any("--validate" in c for c in commands)
    (tmp_path / "examples").symlink_to(EXAMPLES)
    for command in commands:
        args = command.split()[1:]
        proc = subprocess.run(
            [sys.executable, "-m", "hook_sidecar", *args],
            capture_output=True,
            env=clean_env(),
            cwd=tmp_path,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 0, (command, proc.stderr)
        if "-o" in args:
            written = (tmp_path / args[args.index("-o") + 1]).read_bytes()
            assert written.count(b"<hostdev ") == 1


def test_readme_says_where_the_command_is_after_make_demo() -> None:
    readme = (ROOT / "README.md").read_text()
    quick = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    assert ".venv/bin/qat-hook" in quick
    assert "source .venv/bin/activate" in quick


def test_output_of_transform_is_a_file_not_a_format(tmp_path: Path) -> None:
    out = tmp_path / "json"
    proc = run_cli("transform", DOMAIN, "--device", "3d:02.2", "-o", str(out), *NO_SYSFS)
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes() == (EXAMPLES / "domain-with-qat.xml").read_bytes()
    assert proc.stdout == b""


# --- options: flags, variables, values -------------------------------------------------------


def test_help_says_which_inputs_are_read() -> None:
    flat = " ".join(run_cli("transform", "--help").stdout.decode().split())
    assert "YAML is not read; an empty file, {}, a List or another kind is an error" in flat
    assert "its spec.template is read as the VMI it starts" in flat


def test_variable_value_of_a_choice_option_is_checked() -> None:
    proc = run_cli("transform", DOMAIN, "--device", "3d:02.2", QAT_HOOK_MANAGED="maybe")
    assert proc.returncode == 1
    assert "QAT_HOOK_MANAGED='maybe' is not one of no, yes" in one_error_line(proc.stderr)


@pytest.mark.parametrize(
    ("flag", "value", "needle"),
    [
        ("--max-domain-bytes", "0", "--max-domain-bytes must be between 1 and"),
        ("--max-domain-bytes", "\u0661\u0660\u0660", "--max-domain-bytes must be between 1 and"),
        ("--max-domain-bytes", "9" * 5000, "--max-domain-bytes must be between 1 and"),
    ],
)
def test_integer_options_are_checked(flag: str, value: str, needle: str) -> None:
    proc = run_cli("transform", DOMAIN, "--device", "3d:02.2", flag, value)
    assert proc.returncode == 1
    assert needle in one_error_line(proc.stderr)


def test_numa_placement_option_reaches_the_transform(tmp_path: Path) -> None:
    """strict on a domain with guest NUMA cells and a VF of unknown host node must fail."""
    numa = SHARED / "numa-passthrough-2vf.xml"
    args = ("transform", str(numa), "--device", "3d:02.2", "--sysfs-root", str(tmp_path))
    off = run_cli(*args, "--numa-placement", "off", *NO_SYSFS)
    assert off.returncode == 0, off.stderr
    strict = run_cli(*args, *NO_SYSFS, QAT_HOOK_NUMA_PLACEMENT="strict")
    assert strict.returncode == 1
    assert "qat-hook: error: " in one_error_line(strict.stderr)


def test_discover_with_domain_shows_guest_cells() -> None:
    proc = run_cli(
        "discover", "--vmi", VMI, "--domain", DOMAIN, "--format", "json", *NO_SYSFS, QAT0=A_VF
    )
    assert proc.returncode == 0, proc.stderr
    (entry,) = json.loads(proc.stdout)["numa"]
    assert entry["device"] == A_VF
    assert entry["guest_cell"] is None  # examples/domain.xml has no guest NUMA cells
    text = run_cli("discover", "--vmi", VMI, "--domain", DOMAIN, *NO_SYSFS, QAT0=A_VF)
    assert "not placed on a guest NUMA cell" in text.stdout.decode()


def test_diff_shows_only_added_lines_whatever_the_input_spelling(tmp_path: Path) -> None:
    """--diff compares the input as the hook writes XML, not its raw bytes."""
    domain = tmp_path / "d.xml"
    domain.write_text(
        "<domain type='kvm'>\n  <name>x</name>\n  <devices>\n    <disk type='file'/>\n"
        "  </devices>\n</domain>\n"
    )
    proc = run_cli("transform", str(domain), "--device", A_VF, "--diff", *NO_SYSFS)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.decode().splitlines()
    changed = [line for line in lines[2:] if line.startswith(("-", "+"))]
    assert changed and all(line.startswith("+") for line in changed), lines


A_VF = "0000:3d:02.2"


def test_discover_with_a_numa_domain_shows_each_guest_cell(tmp_path: Path) -> None:
    """Host node 1 maps to guest cell 1 and node 0 to cell 0 (the fixture's memnodes)."""
    b_vf = "0000:3d:02.3"
    for address, node in ((A_VF, 1), (b_vf, 0)):
        folder = tmp_path / "bus" / "pci" / "devices" / address
        folder.mkdir(parents=True)
        (folder / "numa_node").write_text(f"{node}\n")
    args = (
        "discover",
        "--vmi",
        str(SHARED / "numa-passthrough-2vf.json"),
        "--domain",
        str(SHARED / "numa-passthrough-2vf.xml"),
        "--sysfs-root",
        str(tmp_path),
        *NO_SYSFS,
    )
    proc = run_cli(*args, "--format", "json", QAT0=A_VF, QAT1=b_vf)
    assert proc.returncode == 0, proc.stderr
    numa = json.loads(proc.stdout)["numa"]
    assert [(e["device"], e["host_node"], e["guest_cell"]) for e in numa] == [
        (A_VF, 1, 1),
        (b_vf, 0, 0),
    ]
    text = run_cli(*args, QAT0=A_VF, QAT1=b_vf).stdout.decode()
    assert f"device:   {A_VF}  host NUMA node 1 (sysfs), guest NUMA cell 1" in text


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (
            ("transform", "/dev/zero"),
            f"domain XML is {DEFAULT_MAX_BYTES + 1} bytes, over the limit of {DEFAULT_MAX_BYTES}",
        ),
        (("transform", DOMAIN, "--vmi", "/dev/zero"), "VMI JSON is over 2097152 bytes"),
        (("discover", "--vmi", "/dev/zero"), "VMI JSON is over 2097152 bytes"),
    ],
)
def test_endless_input_files_are_read_only_to_their_bound(
    args: tuple[str, ...], needle: str
) -> None:
    """An endless source (/dev/zero, a pipe) is read to the cap plus one byte, then refused."""
    proc = run_cli(*args, *NO_SYSFS, QAT0=A_VF)
    assert proc.returncode == 1
    assert needle in one_error_line(proc.stderr)


# --- what --vmi takes ---------------------------------------------------------------------------

VM_EXAMPLE = {
    "apiVersion": "kubevirt.io/v1",
    "kind": "VirtualMachine",
    "metadata": {"name": "vm-qat", "namespace": "prod"},
    "spec": {
        "runStrategy": "Always",
        "template": {
            "spec": {
                "domain": {
                    "resources": {"limits": {"qat.intel.com/generic": "1"}},
                    "memory": {"reservedOverhead": {"memLock": "Required"}},
                }
            }
        },
    },
}


def test_a_virtual_machine_is_understood_and_said_so(tmp_path: Path) -> None:
    vm = tmp_path / "vm.json"
    vm.write_text(json.dumps(VM_EXAMPLE))
    proc = run_cli("transform", DOMAIN, "--vmi", str(vm), *NO_SYSFS, QAT0=A_VF)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == (EXAMPLES / "domain-with-qat.xml").read_bytes()
    assert proc.stderr.decode().splitlines()[0] == (
        f"qat-hook: note: {vm} is the VirtualMachine prod/vm-qat: reading its spec.template, "
        "the VMI it starts"
    )
    found = run_cli("discover", "--vmi", str(vm), *NO_SYSFS, QAT0=A_VF)
    assert found.returncode == 0, found.stderr
    assert found.stdout.decode().splitlines()[:2] == [
        f"note: {vm} is the VirtualMachine prod/vm-qat: reading its spec.template, the VMI it "
        "starts",
        "inject 1 device(s): resource qat.intel.com/generic: 1",
    ]
    data = json.loads(run_cli("discover", "--vmi", str(vm), "--format", "json", QAT0=A_VF).stdout)
    assert data["note"].endswith(
        "is the VirtualMachine prod/vm-qat: reading its spec.template, the VMI it starts"
    )
    assert data["devices"] == [A_VF]


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("", "is empty; pass the VMI as JSON (kubectl get vmi NAME -o json)"),
        ("{}", "is an empty object {}"),
        (json.dumps({"kind": "List", "items": [VM_EXAMPLE]}), "is a List of 1 items; pass one VMI"),
        (json.dumps({"kind": "Pod", "metadata": {}}), "is a Pod, not a VirtualMachineInstance"),
        ((EXAMPLES / "vmi-qat.yaml").read_text(), "is not JSON (YAML is not read)"),
    ],
)
@pytest.mark.parametrize("command", ["transform", "discover"])
def test_input_that_is_not_a_vmi_is_an_error_never_no_qat_wanted(
    tmp_path: Path, content: str, needle: str, command: str
) -> None:
    vmi = tmp_path / "input.json"
    vmi.write_text(content)
    args = ("transform", DOMAIN) if command == "transform" else ("discover",)
    proc = run_cli(*args, "--vmi", str(vmi), *NO_SYSFS, QAT0=A_VF)
    assert proc.returncode == 1
    line = one_error_line(proc.stderr)
    assert line.startswith("qat-hook: error: ") and needle in line
    assert proc.stdout == b""


def test_a_vmi_on_stdin_is_named_stdin() -> None:
    proc = run_cli("discover", "--vmi", "-", stdin=b"{}")
    assert one_error_line(proc.stderr) == (
        "qat-hook: error: VMI stdin is an empty object {}; pass kubectl get vmi NAME -o json"
    )


# --- where a device came from, and what is said -------------------------------------------------


def test_a_device_from_the_variable_is_logged_as_from_the_variable() -> None:
    proc = run_cli("transform", DOMAIN, *NO_SYSFS, QAT_HOOK_DEVICES=A_VF)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.decode() == (
        f"qat-hook: added ua-qat-0 for {A_VF} (from override: QAT_HOOK_DEVICES)\n"
    )
    flag = run_cli("transform", DOMAIN, "--device", A_VF, *NO_SYSFS, QAT_HOOK_DEVICES=A_VF)
    assert "(from override: --device)" in flag.stderr.decode()


def test_an_empty_device_variable_is_set_but_empty() -> None:
    proc = run_cli("transform", DOMAIN, "--vmi", VMI, *NO_SYSFS, QAT_HOOK_DEVICES="")
    assert proc.returncode == 1
    assert one_error_line(proc.stderr).endswith(
        "first: QAT_HOOK_DEVICES is set but empty: set it to the VF's address "
        "(for example 0000:3d:02.2) or remove it"
    )


def test_discover_writes_warnings_to_stderr_like_transform(tmp_path: Path) -> None:
    """Default --verify-sysfs warn with an empty sysfs: the report on stdout, warnings apart."""
    args = ("--vmi", VMI, "--sysfs-root", str(tmp_path))
    proc = run_cli("discover", *args, QAT0=A_VF)
    assert proc.returncode == 0, proc.stderr
    assert "warning:" not in proc.stdout.decode()
    assert proc.stderr.decode() == (
        f"qat-hook: warning: sysfs: {A_VF} does not exist under {tmp_path}/bus/pci/devices\n"
    )
    transform = run_cli("transform", DOMAIN, *args, QAT0=A_VF)
    assert transform.stderr.decode().splitlines()[0] == proc.stderr.decode().strip()


def test_a_file_name_with_a_newline_cannot_forge_a_line(tmp_path: Path) -> None:
    """The DRA file's name reaches the "added" line; its newline is escaped there."""
    request = tmp_path / "dra" / "resourceclaims" / "claim" / "vf\nqat-hook: added ua-qat-9 for x"
    request.mkdir(parents=True)
    (request / "q-metadata.json").write_text(
        json.dumps(
            {
                "requests": [
                    {
                        "devices": [
                            {"attributes": {"resource.kubernetes.io/pciBusID": {"string": A_VF}}}
                        ]
                    }
                ]
            }
        )
    )
    proc = run_cli("transform", DOMAIN, "--dra-root", str(tmp_path / "dra"), *NO_SYSFS)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.decode().splitlines()
    assert lines == [
        f"qat-hook: added ua-qat-0 for {A_VF} (from dra: resourceclaims/claim/"
        "vf\\nqat-hook: added ua-qat-9 for x/q-metadata.json)"
    ]
    text = run_cli("discover", "--vmi", VMI, "--dra-root", str(tmp_path / "dra"), *NO_SYSFS)
    assert [line for line in text.stdout.decode().splitlines() if "ua-qat-9" in line] == [
        "  source:   dra (resourceclaims/claim/vf\\nqat-hook: added ua-qat-9 for x/q-metadata.json)"
    ]


# --- nothing is written or reported as added before a check that can fail ------------------------


def test_validate_without_libvirt_fails_before_writing_or_adding(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "libvirt.py").write_text("raise ImportError('libvirt-python is not installed')\n")
    out = tmp_path / "out.xml"
    proc = run_cli(
        "transform",
        DOMAIN,
        "--device",
        A_VF,
        "-o",
        str(out),
        "--validate",
        *NO_SYSFS,
        PYTHONPATH=f"{blocker}:{ROOT}",
    )
    assert proc.returncode == 1
    assert one_error_line(proc.stderr).startswith(
        "qat-hook: error: --validate needs libvirt-python"
    )
    assert not out.exists()


def test_an_unwritable_output_fails_before_anything_is_reported_as_added(tmp_path: Path) -> None:
    out = tmp_path / "no-such-dir" / "out.xml"
    proc = run_cli("transform", DOMAIN, "--device", A_VF, "-o", str(out), *NO_SYSFS)
    assert proc.returncode == 1
    assert one_error_line(proc.stderr) == (
        f"qat-hook: error: cannot write {out}: No such file or directory"
    )


def test_the_numa_example_runs_without_warnings() -> None:
    numa = EXAMPLES / "numa"
    proc = run_cli(
        "transform",
        str(numa / "domain.xml"),
        "--vmi",
        str(numa / "vmi.json"),
        "--device",
        "0000:3d:01.0",
        "--device",
        "0000:b1:01.0",
        "--sysfs-root",
        str(numa / "sysfs"),
    )
    assert proc.returncode == 0, proc.stderr
    assert "warning" not in proc.stderr.decode()


def test_a_usage_error_quoting_an_argument_stays_one_line() -> None:
    proc = run_cli("transform", DOMAIN, "--bogus\nqat-hook: added ua-qat-0 for x")
    assert proc.returncode == 2
    assert "--bogus\\nqat-hook: added" in one_error_line(proc.stderr)


def test_the_virtual_machine_example_is_read_as_its_vmi() -> None:
    """examples/cli/vm.json is examples/vmi.json's VM: the same devices, the same domain."""
    vm = str(EXAMPLES / "cli" / "vm.json")
    proc = run_cli("transform", DOMAIN, "--vmi", vm, *NO_SYSFS, QAT0=A_VF)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == (EXAMPLES / "domain-with-qat.xml").read_bytes()
    assert "is the VirtualMachine default/vm-qat" in proc.stderr.decode()
