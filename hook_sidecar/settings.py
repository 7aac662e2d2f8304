"""Every option of the hook, as a CLI flag and as a ``QAT_HOOK_*`` environment variable.

One table drives argparse, the environment defaults and the README's option
table, so a flag can never exist without its variable or the other way round.
In a pod, the hookSidecars annotation's ``args`` carry flags; an admission
policy or a plugin deployment sets variables more easily. A flag given on the
command line wins over its variable.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hook_sidecar import discovery
from hook_sidecar.errors import InvalidInput
from hook_sidecar.hostdevs import DEFAULT_MAX_BYTES, HostDevice, TransformOptions
from hook_sidecar.pci import PciAddress, PciAddressError

DEFAULT_PODRESOURCES_SOCKET = "/var/lib/kubelet/pod-resources/kubelet.sock"
DEFAULT_SOCKET_DIR = "/var/run/kubevirt-hooks"
DEFAULT_SOCKET_NAME = "qat.sock"


@dataclass(frozen=True)
class Option:
    flag: str
    env: str
    help: str
    default: Any = None
    choices: tuple[str, ...] | None = None
    repeat: bool = False
    boolean: bool = False
    metavar: str | None = None
    doc_default: str | None = None
    """Shown as the default where the real one depends on other options."""

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


# Options shared by transform, discover and serve.
DISCOVERY_OPTIONS = (
    Option(
        "--device",
        "QAT_HOOK_DEVICES",
        "host PCI address of a VF to inject (repeatable; "
        "the variable takes a comma list); overrides every other source",
        repeat=True,
        metavar="ADDR",
    ),
    Option(
        "--resource-pattern",
        "QAT_HOOK_RESOURCE_PATTERNS",
        "device resources that mean 'inject' (glob, repeatable; default qat.intel.com/*)",
        repeat=True,
        metavar="GLOB",
    ),
    Option(
        "--dra-root",
        "QAT_HOOK_DRA_ROOT",
        "where DRA device metadata is mounted",
        default=str(discovery.DEFAULT_DRA_ROOT),
        metavar="DIR",
    ),
    Option(
        "--podresources-socket",
        "QAT_HOOK_PODRESOURCES_SOCKET",
        "kubelet's PodResources socket; consulted when it exists ('' to disable)",
        default=DEFAULT_PODRESOURCES_SOCKET,
        metavar="PATH",
    ),
    Option(
        "--sysfs-root",
        "QAT_HOOK_SYSFS_ROOT",
        "sysfs mount used to verify devices",
        default=str(discovery.DEFAULT_SYSFS_ROOT),
        metavar="DIR",
    ),
    Option(
        "--verify-sysfs",
        "QAT_HOOK_VERIFY_SYSFS",
        "check each VF in sysfs (exists, QAT VF id, bound to vfio-pci): off, warn or strict",
        default="warn",
        choices=("off", "warn", "strict"),
    ),
    Option(
        "--allow-vmi-devices",
        "QAT_HOOK_ALLOW_VMI_DEVICES",
        "trust the VMI annotation qat.vm.kubevirt.io/devices (off: the VMI belongs to the tenant)",
        boolean=True,
    ),
    Option(
        "--on-missing",
        "QAT_HOOK_ON_MISSING",
        "when the VMI asks and no device is found: "
        "fail the VM start, or skip (pass through with a warning)",
        default="fail",
        choices=("fail", "skip"),
    ),
)

TRANSFORM_OPTIONS = (
    Option(
        "--managed",
        "QAT_HOOK_MANAGED",
        "libvirt managed attribute; 'no' is right inside "
        "KubeVirt (the device plugin already bound vfio-pci)",
        default="no",
        choices=("no", "yes"),
    ),
    Option(
        "--guest-address",
        "QAT_HOOK_GUEST_ADDRESSES",
        "guest PCI address for a host VF, HOST=GUEST (repeatable; the variable takes a comma list)",
        repeat=True,
        metavar="HOST=GUEST",
    ),
    Option(
        "--max-domain-bytes",
        "QAT_HOOK_MAX_DOMAIN_BYTES",
        "refuse larger domain XML",
        default=str(DEFAULT_MAX_BYTES),
        metavar="N",
    ),
)

LOG_OPTIONS = (
    Option(
        "--log-format",
        "QAT_HOOK_LOG_FORMAT",
        "json (KubeVirt's shape) or text",
        default="json",
        choices=("json", "text"),
    ),
    Option(
        "--log-level",
        "QAT_HOOK_LOG_LEVEL",
        "debug, info, warning or error",
        default="info",
        choices=("debug", "info", "warning", "error"),
    ),
)

SERVE_OPTIONS = (
    Option(
        "--socket-dir",
        "QAT_HOOK_SOCKET_DIR",
        "directory of the hook socket (with --plugin-socket alone, no hook socket is served)",
        doc_default=DEFAULT_SOCKET_DIR,
        metavar="DIR",
    ),
    Option(
        "--socket-name",
        "QAT_HOOK_SOCKET_NAME",
        "file name of the hook socket",
        doc_default=DEFAULT_SOCKET_NAME,
        metavar="NAME",
    ),
    Option(
        "--version",
        "QAT_HOOK_VERSIONS",
        "hook API version to offer (repeatable; default v1alpha1, v1alpha2 and v1alpha3)",
        repeat=True,
        choices=("v1alpha1", "v1alpha2", "v1alpha3"),
    ),
    Option(
        "--plugin-socket",
        "QAT_HOOK_PLUGIN_SOCKET",
        "also serve KubeVirt's structured plugin API (DomainHookService) on this socket path",
        metavar="PATH",
    ),
    Option("--name", "QAT_HOOK_NAME", "name reported by Info", default="qat"),
    Option(
        "--workers",
        "QAT_HOOK_WORKERS",
        "gRPC worker threads (virt-launcher calls one at a time)",
        default="2",
        metavar="N",
    ),
)


def _env_default(option: Option, environ: Mapping[str, str]) -> Any:
    raw = environ.get(option.env)
    if raw is None:
        return [] if option.repeat else (False if option.boolean else option.default)
    if option.boolean:
        return raw.strip().lower() in ("1", "true", "yes", "on")
    if option.repeat:
        return [item.strip() for item in raw.split(",") if item.strip()]
    return raw


def add_options(
    parser: argparse.ArgumentParser,
    options: Sequence[Option],
    environ: Mapping[str, str] | None = None,
) -> None:
    """Add ``options`` with their defaults taken from the environment."""
    environ = os.environ if environ is None else environ
    for option in options:
        default = _env_default(option, environ)
        help_text = f"{option.help} [env {option.env}]"
        if option.boolean:
            parser.add_argument(
                option.flag,
                dest=option.dest,
                action="store_true",
                default=default,
                help=help_text,
            )
        elif option.repeat:
            parser.add_argument(
                option.flag,
                dest=option.dest,
                action="append",
                default=None,
                choices=option.choices,
                metavar=option.metavar,
                help=help_text,
            )
            parser.set_defaults(**{f"_env_{option.dest}": default})
        else:
            parser.add_argument(
                option.flag,
                dest=option.dest,
                default=default,
                choices=option.choices,
                metavar=option.metavar,
                help=help_text,
            )


def repeated(args: argparse.Namespace, dest: str) -> list[str]:
    """A repeatable option: the flags if any were given, else the variable's list."""
    given = getattr(args, dest, None)
    if given:
        return [item for value in given for item in value.split(",") if item.strip()]
    return list(getattr(args, f"_env_{dest}", []) or [])


def _positive_int(text: str, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise InvalidInput(f"{what} must be a positive whole number, not {text!r}")
    return value


def discovery_config(args: argparse.Namespace) -> discovery.DiscoveryConfig:
    devices = tuple(
        address
        for item in repeated(args, "device")
        for address in discovery.parse_address_list(item, "--device")
    )
    patterns = (
        tuple(repeated(args, "resource_pattern")) or discovery.DiscoveryConfig().resource_patterns
    )
    extra: tuple[tuple[str, discovery.Source], ...] = ()
    socket = getattr(args, "podresources_socket", "") or ""
    if socket:
        from hook_sidecar.podresources import podresources_source

        extra = (("podresources", podresources_source(Path(socket))),)
    return discovery.DiscoveryConfig(
        devices=devices,
        resource_patterns=patterns,
        dra_root=Path(args.dra_root),
        sysfs_root=Path(args.sysfs_root),
        verify_sysfs=args.verify_sysfs,
        allow_vmi_devices=bool(args.allow_vmi_devices),
        on_missing=args.on_missing,
        extra_sources=extra,
    )


def guest_addresses(args: argparse.Namespace) -> dict[PciAddress, PciAddress]:
    mapping = {}
    for item in repeated(args, "guest_address"):
        host, sep, guest = item.partition("=")
        if not sep:
            raise InvalidInput(
                f"--guest-address {item!r} must be HOST=GUEST, for example 3d:02.2=00:10.0"
            )
        try:
            mapping[PciAddress.parse(host)] = PciAddress.parse(guest)
        except PciAddressError as err:
            raise InvalidInput(f"--guest-address {item!r}: {err}") from None
    return mapping


def transform_options(args: argparse.Namespace) -> TransformOptions:
    return TransformOptions(
        managed=args.managed,
        max_bytes=_positive_int(str(args.max_domain_bytes), "--max-domain-bytes"),
    )


def host_devices(
    addresses: Sequence[PciAddress], guests: Mapping[PciAddress, PciAddress]
) -> list[HostDevice]:
    unknown = set(guests) - set(addresses)
    if unknown:
        listed = ", ".join(sorted(map(str, unknown)))
        raise InvalidInput(
            f"--guest-address names {listed}, which is not among the devices to inject"
        )
    return [HostDevice(address, guests.get(address)) for address in addresses]


_USED_BY = (
    (DISCOVERY_OPTIONS, "transform, discover, serve"),
    (TRANSFORM_OPTIONS, "transform, serve"),
    (LOG_OPTIONS, "serve"),
    (SERVE_OPTIONS, "serve"),
)


def markdown_table() -> str:
    """The README's option table, generated from the same definitions (a test compares)."""
    rows = [
        "| flag | variable | default | used by | meaning |",
        "| --- | --- | --- | --- | --- |",
    ]
    for options, used_by in _USED_BY:
        for option in options:
            default = "off" if option.boolean else (option.doc_default or option.default or "")
            rows.append(
                f"| `{option.flag}` | `{option.env}` | {default} | {used_by} | {option.help} |"
            )
    return "\n".join(rows)
