"""The option table, turned into the core's plain values; and the layering it protects.

Every parser here is built from an environment mapping the test writes, so
the developer's own QAT_HOOK_* variables never leak in.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from hook_sidecar import cli, settings
from hook_sidecar.errors import InvalidInput
from hook_sidecar.pci import PciAddress
from tests.conftest import ROOT, clean_env

A, B, C = "0000:3d:02.2", "0000:3d:02.3", "0000:3d:02.4"


def parse(*argv: str, **environ: str) -> argparse.Namespace:
    return cli.build_parser(environ).parse_args(list(argv))


def test_repeatable_option_from_its_variable_alone() -> None:
    args = parse("transform", QAT_HOOK_DEVICES=f"{A}, {B},")
    assert args.device == [A, B]
    assert not [name for name in vars(args) if name.startswith("_env")]


def test_flags_replace_the_variable_then_accumulate() -> None:
    args = parse("transform", "--device", C, "--device", f"{A},{B}", QAT_HOOK_DEVICES=A)
    assert args.device == [C, A, B]


def test_the_variable_list_is_not_changed_by_a_parse() -> None:
    parser = cli.build_parser({"QAT_HOOK_DEVICES": A})
    parser.parse_args(["transform", "--device", B])
    assert parser.parse_args(["transform"]).device == [A]


def test_no_variable_no_flag_is_an_empty_list() -> None:
    args = parse("serve")
    assert args.device == [] and args.version == []


def test_discovery_config_from_variables_only() -> None:
    args = parse(
        "transform",
        QAT_HOOK_DEVICES=f"{A},{B}",
        QAT_HOOK_RESOURCE_PATTERNS="intel.com/qat",
        QAT_HOOK_PODRESOURCES_SOCKET="",
        QAT_HOOK_SYSFS_ROOT="/srv/sys",
    )
    config = settings.discovery_config(args)
    assert config.devices == (PciAddress.parse(A), PciAddress.parse(B))
    assert config.resource_patterns == ("intel.com/qat",)
    assert config.podresources_socket is None
    assert config.sysfs_root == Path("/srv/sys")


def test_podresources_socket_is_a_configured_source() -> None:
    from hook_sidecar import discovery

    args = parse("serve", "--podresources-socket", "/run/kubelet.sock")
    config = settings.discovery_config(args)
    assert config.podresources_socket == Path("/run/kubelet.sock")
    names = [(s.name, s.remote) for s in discovery.configured_sources(config)]
    assert names == [
        ("override", False),
        ("environment", False),
        ("podresources", True),
        ("dra", False),
        ("vmi-annotation", False),
    ]


@pytest.mark.parametrize("mode", ["auto", "off", "strict"])
def test_numa_placement_reaches_transform_options(mode: str) -> None:
    flag = settings.transform_options(parse("transform", "--numa-placement", mode))
    variable = settings.transform_options(parse("transform", QAT_HOOK_NUMA_PLACEMENT=mode))
    assert flag.numa_placement == variable.numa_placement == mode


def test_numa_placement_defaults_to_auto() -> None:
    assert settings.transform_options(parse("transform")).numa_placement == "auto"


@pytest.mark.parametrize(
    ("text", "value"), [("1", 1), (" 16 ", 16), ("0", None), ("17", None), ("x", None), ("", None)]
)
def test_int_option(text: str, value: int | None) -> None:
    if value is None:
        with pytest.raises(InvalidInput, match=r"--workers must be between 1 and 16"):
            settings.int_option(text, "--workers", 1, 16)
    else:
        assert settings.int_option(text, "--workers", 1, 16) == value


def test_check_choices_names_the_variable() -> None:
    args = parse("serve", QAT_HOOK_VERSIONS="v1alpha1,v9", QAT_HOOK_LOG_FORMAT="json")
    with pytest.raises(InvalidInput, match=r"QAT_HOOK_VERSIONS='v9' is not one of v1alpha1"):
        settings.check_choices(args, cli.ALL_OPTIONS)


def test_serve_config_from_arguments() -> None:
    config = cli.serve_config(
        parse("serve", "--socket-dir", "/x", "--version", "v1alpha2", QAT_HOOK_WORKERS="3")
    )
    assert (config.hook_socket, config.plugin_socket) == (Path("/x/qat.sock"), None)
    assert (config.versions, config.workers) == (("v1alpha2",), 3)
    plugin_only = cli.serve_config(parse("serve", "--plugin-socket", "/p/qat.sock"))
    assert (plugin_only.hook_socket, plugin_only.plugin_socket) == (None, Path("/p/qat.sock"))
    with pytest.raises(InvalidInput, match="--workers must be between 1 and 16"):
        cli.serve_config(parse("serve", "--workers", "0"))


CORE = (
    "hook_sidecar.hook",
    "hook_sidecar.discovery",
    "hook_sidecar.sources",
    "hook_sidecar.dra",
    "hook_sidecar.sysfs",
    "hook_sidecar.podresources",
    "hook_sidecar.vmi",
    "hook_sidecar.report",
    "hook_sidecar.transform",
)


def test_the_core_imports_no_cli_argparse_or_grpc() -> None:
    """The layering the README draws: the core knows neither argparse nor the CLI nor grpc."""
    code = (
        "import sys\n"
        f"for name in {CORE!r}: __import__(name)\n"
        "bad = [m for m in ('argparse', 'grpc', 'hook_sidecar.cli', 'hook_sidecar.settings',"
        " 'hook_sidecar.server', 'hook_sidecar.callbacks') if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        env=clean_env(),
        cwd=ROOT,
        timeout=60,
        check=True,
    )
    assert proc.stdout.decode().strip() == ""
