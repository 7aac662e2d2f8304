"""Every option of the hook, as a CLI flag and as a ``QAT_HOOK_*`` environment variable.

One table drives argparse, the environment defaults and the option table of
docs/reference.md, so a flag can never exist without its variable or the other
way round.
In a pod, the hookSidecars annotation's ``args`` carry flags; an admission
policy or a plugin deployment sets variables more easily. A flag given on the
command line wins over its variable.

This module and ``cli`` are the only ones that know argparse: they turn the
parsed arguments into the core's plain values (``DiscoveryConfig``,
``TransformOptions``, guest addresses), and the core never imports them.
argparse itself is imported only where a parser is built: the shim's script
reads the same table from the environment without it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from hook_sidecar import config
from hook_sidecar.errors import InvalidInput
from hook_sidecar.hostdevs import DEFAULT_MAX_BYTES, TransformOptions
from hook_sidecar.pci import PciAddress, PciAddressError

if TYPE_CHECKING:
    import argparse

DEFAULT_SOCKET_DIR = "/var/run/kubevirt-hooks"
DEFAULT_SOCKET_NAME = "qat.sock"


Check = Callable[[str, str], Any]
"""A value's check: the text and the name to blame (the flag or the variable) in, the value out."""


def _named(name: str, text: str) -> str:
    shown = repr(text) if len(text) <= 40 else f"{text[:40]!r}..."
    return f"{name} {shown}" if name.startswith("-") else f"{name}={shown}"


def _address(text: str, name: str) -> PciAddress:
    try:
        return PciAddress.parse(text)
    except PciAddressError as err:
        raise InvalidInput(f"{name}: {err}") from None


def _guest_address(text: str, name: str) -> tuple[PciAddress, PciAddress]:
    host, sep, guest = text.partition("=")
    if not sep:
        raise InvalidInput(f"{_named(name, text)} must be HOST=GUEST, for example 3d:02.2=00:10.0")
    try:
        return PciAddress.parse(host), PciAddress.parse(guest)
    except PciAddressError as err:
        raise InvalidInput(f"{_named(name, text)}: {err}") from None


HOOK_API_VERSIONS = ("v1alpha1", "v1alpha2", "v1alpha3")


def _hook_api_version(text: str, name: str) -> str:
    if text in HOOK_API_VERSIONS:
        return text
    raise InvalidInput(
        f"{name}: unknown hook API version {text[:40]}; "
        f"offer some of {', '.join(HOOK_API_VERSIONS)}"
    )


def _whole_number(low: int, high: int) -> Check:
    return lambda text, name: int_option(text, name, low, high)


class Option(NamedTuple):
    """One option: its flag, its variable, its help, and how its value is checked."""

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
    check: Check | None = None
    """Turns one value (one item of a repeatable option) into what the core takes."""
    aliases: tuple[str, ...] = ()

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")

    def value(self, text: str, name: str) -> Any:
        if self.check is not None:
            return self.check(text, name)
        if self.choices is not None and text not in self.choices:
            raise InvalidInput(f"{_named(name, text)} is not one of {', '.join(self.choices)}")
        return text


# Options shared by transform, discover and serve.
DISCOVERY_OPTIONS = (
    Option(
        "--device",
        "QAT_HOOK_DEVICES",
        "host PCI address of a VF to inject (repeatable; "
        "the variable takes a comma list); overrides every other source",
        repeat=True,
        metavar="ADDR",
        check=_address,
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
        default=config.DRA_ROOT,
        metavar="DIR",
    ),
    Option(
        "--podresources-socket",
        "QAT_HOOK_PODRESOURCES_SOCKET",
        "kubelet's PodResources socket; consulted when it exists ('' to disable)",
        default=config.PODRESOURCES_SOCKET,
        metavar="PATH",
    ),
    Option(
        "--sysfs-root",
        "QAT_HOOK_SYSFS_ROOT",
        "sysfs mount used to verify devices and read each VF's host NUMA node",
        default=config.SYSFS_ROOT,
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
        check=_guest_address,
    ),
    Option(
        "--max-domain-bytes",
        "QAT_HOOK_MAX_DOMAIN_BYTES",
        "refuse larger domain XML",
        default=str(DEFAULT_MAX_BYTES),
        metavar="N",
        check=_whole_number(1, 1 << 30),
    ),
    Option(
        "--numa-placement",
        "QAT_HOOK_NUMA_PLACEMENT",
        "put each VF on the guest NUMA cell of its host node: auto (warn and fall back "
        "when a fact is missing), strict (fail instead) or off",
        default="auto",
        choices=("auto", "off", "strict"),
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
        "--hook-api-version",
        "QAT_HOOK_VERSIONS",
        "hook API version to offer (repeatable; default v1alpha1, v1alpha2 and v1alpha3); "
        "--version is the same option, the name KubeVirt's sidecar-shim uses",
        repeat=True,
        metavar="VERSION",
        check=_hook_api_version,
        aliases=("--version",),
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
        check=_whole_number(1, 16),
    ),
    Option(
        "--warm-up",
        "QAT_HOOK_WARM_UP",
        "after virt-launcher's Info (at once with the plugin socket alone), load the hook and "
        "the transform (lxml) in the background, so the first call does not wait for them "
        "(off: the first call loads the hook, and the first VMI that asks for a VF the transform)",
        default="on",
        choices=("on", "off"),
    ),
)


class FromVariable(str):
    """An option's default read from its environment variable: its checks then name the
    variable, not the flag. argparse passes string defaults through ``type`` like flag values."""

    variable: str


class Values(list):  # type: ignore[type-arg]
    """The checked items of a repeatable option, and where they came from (flag or variable)."""

    origin: str = ""


def _values(items: Any, origin: str) -> Values:
    result = Values(items)
    result.origin = origin
    return result


def _split(raw: str) -> list[str]:
    return [item.strip() for item in raw.split(",") if item.strip()]


def _checker(option: Option) -> Callable[[str], Any]:
    """The ``type=`` of ``option``: its value checked, named by its flag or its variable.

    A refusal is ``InvalidInput`` (exit 1, one line), which argparse lets through
    unchanged, rather than argparse's usage error: a wrong value is bad input.
    """

    def check(text: str) -> Any:
        name = text.variable if isinstance(text, FromVariable) else option.flag
        if option.repeat:
            items = _split(text)
            return _values([option.value(item, name) for item in items], name)
        return option.value(text.strip() if option.choices else text, name)

    check.__name__ = option.dest  # argparse names a failing type by it
    return check


def _env_default(option: Option, environ: Mapping[str, str]) -> Any:
    raw = environ.get(option.env)
    if raw is None:
        return (
            _values([], option.flag)
            if option.repeat
            else (False if option.boolean else option.default)
        )
    if option.boolean:
        return flag_value(raw, option.env)
    text = FromVariable(raw)
    text.variable = option.env
    return text


def flag_value(raw: str, variable: str) -> bool:
    """An on/off variable: 1, true, yes, on or 0, false, no, off, empty (any case)."""
    word = raw.strip().lower()
    if word in ("1", "true", "yes", "on"):
        return True
    if word in ("", "0", "false", "no", "off"):
        return False
    raise InvalidInput(f"{variable}={_shown(raw)} is not one of true, false (or 1, 0, yes, no)")


def add_options(
    parser: argparse.ArgumentParser,
    options: Sequence[Option],
    environ: Mapping[str, str],
) -> None:
    """Add ``options`` with their defaults taken from ``environ`` (the process's environment)."""
    import argparse

    class _Repeat(argparse.Action):
        """A repeatable flag whose default is its variable's list.

        The first flag replaces that list (a flag wins over its variable), later ones
        add to it; a flag may also carry a comma list, like the variable.
        """

        def __call__(
            self,
            parser: argparse.ArgumentParser,
            namespace: argparse.Namespace,
            values: Any,
            option_string: str | None = None,
        ) -> None:
            current = getattr(namespace, self.dest, None)
            items = [] if current is self.default or not isinstance(current, list) else current
            setattr(namespace, self.dest, _values([*items, *values], option_string or ""))

    for option in options:
        default = _env_default(option, environ)
        help_text = f"{option.help} [env {option.env}]"
        if option.boolean:
            parser.add_argument(
                option.flag, dest=option.dest, action="store_true", default=default, help=help_text
            )
            continue
        metavar = option.metavar or (
            "{" + ",".join(option.choices) + "}" if option.choices else None
        )
        parser.add_argument(
            option.flag,
            *option.aliases,
            dest=option.dest,
            action=_Repeat if option.repeat else "store",
            default=default,
            type=_checker(option),
            metavar=metavar,
            help=help_text,
        )


def _shown(text: str) -> str:
    return repr(text) if len(text) <= 40 else f"{text[:40]!r}..."


def int_option(text: str, flag: str, low: int, high: int) -> int:
    """The one parser of whole-number options: ASCII digits, inside ``[low, high]``."""
    stripped = str(text).strip()
    if stripped.isascii() and stripped.isdigit() and len(stripped) <= 20:
        value = int(stripped)
        if low <= value <= high:
            return value
    raise InvalidInput(
        f"{flag} must be between {low} and {high} (a whole number), not {_shown(str(text))}"
    )


def discovery_config(args: argparse.Namespace) -> config.DiscoveryConfig:
    devices = args.device
    socket = args.podresources_socket or ""
    return config.DiscoveryConfig(
        devices=tuple(devices),
        devices_from=getattr(devices, "origin", "") or "--device",
        resource_patterns=tuple(args.resource_pattern) or config.DEFAULT_RESOURCE_PATTERNS,
        dra_root=args.dra_root,
        sysfs_root=args.sysfs_root,
        verify_sysfs=args.verify_sysfs,
        allow_vmi_devices=bool(args.allow_vmi_devices),
        on_missing=args.on_missing,
        podresources_socket=socket or None,
    )


def guest_addresses(args: argparse.Namespace) -> dict[PciAddress, PciAddress]:
    return dict(args.guest_address)


def transform_options(args: argparse.Namespace) -> TransformOptions:
    return TransformOptions(
        managed=args.managed,
        max_bytes=args.max_domain_bytes,
        numa_placement=args.numa_placement,
    )


_USED_BY = (
    (DISCOVERY_OPTIONS, "transform, discover, serve"),
    (TRANSFORM_OPTIONS, "transform, serve, discover --domain"),
    (LOG_OPTIONS, "serve"),
    (SERVE_OPTIONS, "serve"),
)


def markdown_table() -> str:
    """The option table of docs/reference.md, generated from these definitions (a test compares)."""
    rows = [
        "| flag | variable | default | used by | meaning |",
        "| --- | --- | --- | --- | --- |",
    ]
    for options, used_by in _USED_BY:
        for option in options:
            default = "off" if option.boolean else (option.doc_default or option.default or "")
            flags = " ".join(f"`{flag}`" for flag in (option.flag, *option.aliases))
            rows.append(f"| {flags} | `{option.env}` | {default} | {used_by} | {option.help} |")
    return "\n".join(rows)
