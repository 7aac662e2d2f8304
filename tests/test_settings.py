"""The option table, turned into the core's plain values; and the layering it protects.

Every parser here is built from an environment mapping the test writes, so
the developer's own QAT_HOOK_* variables never leak in.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from hook_sidecar import cli, settings
from hook_sidecar.errors import InvalidInput
from hook_sidecar.pci import PciAddress
from tests.conftest import ROOT, clean_env

A, B, C = "0000:3d:02.2", "0000:3d:02.3", "0000:3d:02.4"


def parse(*argv: str, **environ: str) -> argparse.Namespace:
    return cli.build_parser(environ).parse_args(list(argv))


PA, PB, PC = (PciAddress.parse(x) for x in (A, B, C))


def test_repeatable_option_from_its_variable_alone() -> None:
    args = parse("transform", QAT_HOOK_DEVICES=f"{A}, {B},")
    assert args.device == [PA, PB]
    assert settings.discovery_config(args).devices_from == "QAT_HOOK_DEVICES"


def test_flags_replace_the_variable_then_accumulate() -> None:
    args = parse("transform", "--device", C, "--device", f"{A},{B}", QAT_HOOK_DEVICES=A)
    assert args.device == [PC, PA, PB]
    assert settings.discovery_config(args).devices_from == "--device"


def test_the_variable_list_is_not_changed_by_a_parse() -> None:
    parser = cli.build_parser({"QAT_HOOK_DEVICES": A})
    parser.parse_args(["transform", "--device", B])
    assert parser.parse_args(["transform"]).device == [PA]


def test_no_variable_no_flag_is_an_empty_list() -> None:
    args = parse("serve")
    assert args.device == [] and args.hook_api_version == []


def test_an_empty_variable_is_an_empty_list_from_the_variable() -> None:
    args = parse("transform", QAT_HOOK_DEVICES="")
    assert args.device == []
    assert settings.discovery_config(args).devices == ()


@pytest.mark.parametrize(
    ("argv", "environ", "message"),
    [
        (("transform", "--managed", "maybe"), {}, "--managed 'maybe' is not one of no, yes"),
        (
            ("transform",),
            {"QAT_HOOK_MANAGED": "maybe"},
            "QAT_HOOK_MANAGED='maybe' is not one of no, yes",
        ),
        (("transform", "--device", "zz"), {}, "--device: 'zz' is not a PCI address"),
        (("transform",), {"QAT_HOOK_DEVICES": "3d:02.2,zz"}, "QAT_HOOK_DEVICES: 'zz' is not"),
        (
            ("transform", "--guest-address", "3d:02.2"),
            {},
            "--guest-address '3d:02.2' must be HOST=GUEST",
        ),
        (
            ("transform",),
            {"QAT_HOOK_GUEST_ADDRESSES": "3d:02.2=zz"},
            "QAT_HOOK_GUEST_ADDRESSES='3d:02.2=zz': 'zz' is not",
        ),
        (
            ("transform",),
            {"QAT_HOOK_MAX_DOMAIN_BYTES": "0"},
            "QAT_HOOK_MAX_DOMAIN_BYTES must be between 1 and 1073741824",
        ),
        (("serve", "--workers", "17"), {}, "--workers must be between 1 and 16"),
        (
            ("serve",),
            {"QAT_HOOK_VERSIONS": "v1alpha1,v9"},
            "QAT_HOOK_VERSIONS: unknown hook API version v9; "
            "offer some of v1alpha1, v1alpha2, v1alpha3",
        ),
        (("serve", "--version", "v9"), {}, "--hook-api-version: unknown hook API version v9"),
        (
            ("serve",),
            {"QAT_HOOK_LOG_LEVEL": "loud"},
            "QAT_HOOK_LOG_LEVEL='loud' is not one of debug, info",
        ),
        (
            ("serve",),
            {"QAT_HOOK_ALLOW_VMI_DEVICES": "ture"},
            "QAT_HOOK_ALLOW_VMI_DEVICES='ture' is not one of true, false",
        ),
    ],
)
def test_each_value_is_checked_where_it_is_parsed_naming_flag_or_variable(
    argv: tuple[str, ...], environ: dict[str, str], message: str
) -> None:
    with pytest.raises(InvalidInput) as info:
        parse(*argv, **environ)
    assert message in str(info.value)


def test_checked_values_reach_the_core_as_values() -> None:
    args = parse(
        "serve",
        "--guest-address",
        f"{A}=00:10.0",
        QAT_HOOK_WORKERS=" 3 ",
        QAT_HOOK_MAX_DOMAIN_BYTES="100",
        QAT_HOOK_ALLOW_VMI_DEVICES="Yes",
    )
    assert settings.guest_addresses(args) == {PA: PciAddress.parse("00:10.0")}
    assert (args.workers, settings.transform_options(args).max_bytes) == (3, 100)
    assert settings.discovery_config(args).allow_vmi_devices is True


def test_version_is_the_hook_api_version_under_serve() -> None:
    assert parse("serve", "--version", "v1alpha2").hook_api_version == ["v1alpha2"]
    assert parse("serve", "--hook-api-version", "v1alpha3").hook_api_version == ["v1alpha3"]


def test_the_versions_offered_are_the_ones_served() -> None:
    from hook_sidecar import callbacks

    assert settings.HOOK_API_VERSIONS == callbacks.ALL_VERSIONS


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
    assert config.sysfs_root == "/srv/sys"


def test_podresources_socket_is_a_configured_source() -> None:
    from hook_sidecar import discovery

    args = parse("serve", "--podresources-socket", "/run/kubelet.sock")
    config = settings.discovery_config(args)
    assert config.podresources_socket == "/run/kubelet.sock"
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


def test_serve_config_from_arguments() -> None:
    config = cli.serve_config(
        parse("serve", "--socket-dir", "/x", "--version", "v1alpha2", QAT_HOOK_WORKERS="3")
    )
    assert (config.hook_socket, config.plugin_socket) == ("/x/qat.sock", None)
    assert (config.versions, config.workers) == (("v1alpha2",), 3)
    plugin_only = cli.serve_config(parse("serve", "--plugin-socket", "/p/qat.sock"))
    assert (plugin_only.hook_socket, plugin_only.plugin_socket) == (None, "/p/qat.sock")
    with pytest.raises(InvalidInput, match="--workers must be between 1 and 16"):
        parse("serve", "--workers", "0")


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
