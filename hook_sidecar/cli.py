"""``qat-hook``: transform, discover and serve; and the ``onDefineDomain`` shim script.

Exit codes: 0 success, 1 bad input or failed validation, 2 usage error.
Every error is one line on stderr; a traceback is never shown to a user.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from hook_sidecar import __version__, settings
from hook_sidecar.errors import HookError, InvalidInput
from hook_sidecar.vmi import MAX_VMI_BYTES

if TYPE_CHECKING:
    from hook_sidecar.hook import HookSettings
    from hook_sidecar.server import ServeConfig

PROG = "qat-hook"

TRANSFORM_EPILOG = """examples:
  qat-hook transform examples/domain.xml --device 0000:3d:02.2 --diff
  qat-hook transform examples/domain.xml --vmi examples/vmi.json --device 0000:3d:02.2 \
      -o new.xml --validate
  QAT0=0000:3d:02.2 qat-hook transform - < domain.xml
  qat-hook transform domain.xml --device 3d:02.2 --guest-address 3d:02.2=00:10.0

Without --device, devices come from discovery (QAT_HOOK_DEVICES, QAT<N>,
PCI_RESOURCE_*/PCIDEVICE_* variables, kubelet, DRA metadata). Without --vmi,
whatever is found is injected; with --vmi, the hook decides as it does in a
cluster (only when the VMI asks, and the counts must match).
"""

DISCOVER_EPILOG = """examples:
  qat-hook discover --vmi examples/vmi.json
  QAT0=0000:3d:02.2 qat-hook discover --vmi examples/vmi.json --format json
  QAT0=0000:3d:02.2 qat-hook discover --vmi examples/vmi.json --domain examples/domain.xml

Each device line shows the VF's host NUMA node (from kubelet, or sysfs under
--sysfs-root); with --domain also the guest NUMA cell the transform would put
it on for that domain.
"""

SERVE_EPILOG = """examples (as in a hookSidecars annotation's args):
  qat-hook serve
  qat-hook serve --version v1alpha2 --device 0000:3d:02.2
  qat-hook serve --plugin-socket /var/run/kubevirt-plugin/qat/qat.sock   (plugin only)
  qat-hook serve --socket-dir /var/run/kubevirt-hooks --plugin-socket PATH   (both)
"""


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line and exits 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


COMMANDS = ("transform", "discover", "serve")
COMMAND_HELP = {
    "transform": "add the QAT hostdevs to a domain XML file",
    "discover": "dry run: which VFs would be injected for a VMI, and why",
    "serve": "run the hook sidecar's gRPC server",
}


def _add_transform_options(parser: argparse.ArgumentParser, env: Mapping[str, str]) -> None:
    parser.add_argument(
        "domain",
        nargs="?",
        default="-",
        metavar="DOMAIN.xml|-",
        help="libvirt domain XML (default: stdin)",
    )
    parser.add_argument("--vmi", metavar="VMI.json", help="the VMI object as JSON")
    parser.add_argument("-o", "--output", metavar="OUT", help="write the result to this file")
    parser.add_argument(
        "--diff",
        action="store_true",
        help="print a unified diff of the input (as the hook writes XML) and the output",
    )
    parser.add_argument(
        "--validate",
        action="store_true",
        help="check the result with libvirt (needs libvirt-python: pip install '.[validate]')",
    )
    settings.add_options(parser, settings.DISCOVERY_OPTIONS + settings.TRANSFORM_OPTIONS, env)


def _add_discover_options(parser: argparse.ArgumentParser, env: Mapping[str, str]) -> None:
    parser.add_argument(
        "--vmi",
        metavar="VMI.json",
        required=True,
        help="the VirtualMachineInstance as JSON (kubectl get vmi NAME -o json)",
    )
    parser.add_argument(
        "--format",
        "--output",
        dest="format",
        choices=("text", "json"),
        default="text",
        help="text for people, json for scripts (--output is the older spelling)",
    )
    parser.add_argument(
        "--domain",
        metavar="DOMAIN.xml",
        help="also run the transform on this domain and show each VF's guest NUMA cell",
    )
    settings.add_options(parser, settings.DISCOVERY_OPTIONS + settings.TRANSFORM_OPTIONS, env)


def _add_serve_options(parser: argparse.ArgumentParser, env: Mapping[str, str]) -> None:
    settings.add_options(
        parser,
        settings.SERVE_OPTIONS
        + settings.DISCOVERY_OPTIONS
        + settings.TRANSFORM_OPTIONS
        + settings.LOG_OPTIONS,
        env,
    )


_OPTIONS = {
    "transform": (_add_transform_options, TRANSFORM_EPILOG),
    "discover": (_add_discover_options, DISCOVER_EPILOG),
    "serve": (_add_serve_options, SERVE_EPILOG),
}


def build_parser(
    environ: Mapping[str, str] | None = None, only: str | None = None
) -> argparse.ArgumentParser:
    """The ``qat-hook`` parser; option defaults come from ``environ`` (the process's).

    With ``only``, just that command's options are built: the other commands are
    still listed (with their help line) but take no options. Building every option
    of every command costs a sidecar 5-10 ms of its start-up for nothing.
    """
    env = os.environ if environ is None else environ
    parser = _Parser(
        prog=PROG,
        description="KubeVirt hook sidecar that gives VMs an Intel QAT virtual function.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name in COMMANDS:
        if only is not None and name != only:
            commands.add_parser(name, help=COMMAND_HELP[name])
            continue
        add_options, epilog = _OPTIONS[name]
        add_options(
            commands.add_parser(
                name,
                help=COMMAND_HELP[name],
                epilog=epilog,
                formatter_class=argparse.RawDescriptionHelpFormatter,
            ),
            env,
        )
    return parser


def command_of(argv: Sequence[str]) -> str | None:
    """The command ``argv`` runs, when it can be told without parsing: else None.

    The top-level options (``-h``, ``--version``) take no value, so the first
    word that is not an option names the command.
    """
    for word in argv:
        if word == "--":
            return None
        if not word.startswith("-"):
            return word if word in COMMANDS else None
    return None


def _read(path: str, what: str, limit: int) -> bytes:
    """At most ``limit`` + 1 bytes: enough for the core's own size check to refuse more.

    A bound even for ``/dev/zero`` or an endless pipe, which would otherwise be read whole.
    """
    try:
        if path == "-":
            return sys.stdin.buffer.read(limit + 1)
        with open(path, "rb") as stream:
            return stream.read(limit + 1)
    except OSError as err:
        raise HookError(f"cannot read {what} {path}: {err.strerror or err}") from None


ALL_OPTIONS = (
    settings.DISCOVERY_OPTIONS
    + settings.TRANSFORM_OPTIONS
    + settings.LOG_OPTIONS
    + settings.SERVE_OPTIONS
)


def hook_settings(args: argparse.Namespace) -> HookSettings:
    """The core's plain settings from parsed arguments (every value checked here)."""
    from hook_sidecar.hook import HookSettings

    settings.check_choices(args, ALL_OPTIONS)
    return HookSettings(
        discovery=settings.discovery_config(args),
        transform=settings.transform_options(args),
        guest_addresses=settings.guest_addresses(args),
    )


def _environment() -> dict[str, str]:
    from hook_sidecar.discovery import env_snapshot

    return env_snapshot(os.environ)


def _warn(message: str) -> None:
    print(f"{PROG}: warning: {message}", file=sys.stderr)


def run_transform(args: argparse.Namespace) -> int:
    from hook_sidecar.hook import on_define_domain

    hook = hook_settings(args)
    domain = _read(args.domain, "domain XML", hook.transform.max_bytes)
    vmi = _read(args.vmi, "VMI", MAX_VMI_BYTES) if args.vmi else None
    outcome = on_define_domain(domain, vmi, _environment(), hook)
    for warning in outcome.warnings:
        _warn(warning)
    result = outcome.result
    if not outcome.discovery.wanted:
        print(f"{PROG}: no change: {outcome.discovery.reason}", file=sys.stderr)
    elif result is not None:
        for added in result.added:
            print(
                f"{PROG}: added {added.alias} for {added.address} "
                f"(from {outcome.discovery.source}: {outcome.discovery.detail})",
                file=sys.stderr,
            )
        for address in result.already_present:
            print(f"{PROG}: {address} is already a hostdev; not added again", file=sys.stderr)

    if args.output:
        try:
            Path(args.output).write_bytes(outcome.domain_xml)
        except OSError as err:
            raise HookError(f"cannot write {args.output}: {err.strerror or err}") from None
    if args.diff:
        # The input as the transform writes XML, so the diff shows only what was added.
        from hook_sidecar.transform import normalized

        base = normalized(domain, hook.transform) if result is not None and result.added else domain
        sys.stdout.writelines(
            difflib.unified_diff(
                base.decode("utf-8", "replace").splitlines(keepends=True),
                outcome.domain_xml.decode("utf-8", "replace").splitlines(keepends=True),
                fromfile=args.domain,
                tofile=args.output or "transformed",
            )
        )
    elif not args.output:
        sys.stdout.buffer.write(outcome.domain_xml)
        sys.stdout.flush()

    if args.validate:
        from hook_sidecar.validate import validate

        report = validate(outcome.domain_xml, result.added if result else ())
        for line in report.lines:
            print(f"{PROG}: libvirt {line}", file=sys.stderr)
        if not report.ok:
            return 1
    return 0


def run_discover(args: argparse.Namespace) -> int:
    from hook_sidecar import discovery, hook, report
    from hook_sidecar import vmi as vmis

    config = hook_settings(args)
    vmi = vmis.parse_vmi(_read(args.vmi, "VMI", MAX_VMI_BYTES))
    decided = discovery.discover(vmi, _environment(), config.discovery)
    cells = None
    if args.domain is not None:
        from hook_sidecar.transform import transform

        domain = _read(args.domain, "domain XML", config.transform.max_bytes)
        cells = {}
        if decided.wanted and decided.devices:
            devices = hook.host_devices(decided, config.guest_addresses)
            result = transform(domain, devices, config.transform)
            decided = replace(decided, warnings=decided.warnings + result.warnings)
            cells = {added.address: added.guest_cell for added in result.added}
    if args.format == "json":
        print(json.dumps(report.as_json(decided, cells), indent=2))
    else:
        print(report.describe(decided, cells))
    return 0


def serve_config(args: argparse.Namespace) -> ServeConfig:
    """The server's socket and API settings from parsed arguments."""
    from hook_sidecar import callbacks
    from hook_sidecar.server import ServeConfig

    versions = tuple(dict.fromkeys(args.version)) or callbacks.ALL_VERSIONS
    unknown = [v for v in versions if v not in callbacks.ALL_VERSIONS]
    if unknown:
        raise InvalidInput(
            f"unknown hook API version {', '.join(unknown)}; "
            f"offer some of {', '.join(callbacks.ALL_VERSIONS)}"
        )
    plugin_socket = Path(args.plugin_socket) if args.plugin_socket else None
    # Plugin mode is --plugin-socket alone; naming a hook socket too serves both.
    hook_socket = None
    if plugin_socket is None or args.socket_dir or args.socket_name:
        hook_socket = Path(args.socket_dir or settings.DEFAULT_SOCKET_DIR) / (
            args.socket_name or settings.DEFAULT_SOCKET_NAME
        )
    return ServeConfig(
        hook_socket=hook_socket,
        plugin_socket=plugin_socket,
        name=args.name,
        versions=versions,
        workers=settings.int_option(args.workers, "--workers", 1, 16),
        warm_up=args.warm_up == "on",
    )


def run_serve(args: argparse.Namespace) -> int:
    from hook_sidecar import server

    config, hook = serve_config(args), hook_settings(args)
    return server.serve(
        config, hook, _environment(), log_format=args.log_format, log_level=args.log_level
    )


def _guarded(prog: str, action: Callable[[], int]) -> int:
    """Run ``action``; any error becomes one line on stderr and exit 1, never a traceback."""
    try:
        return action()
    except HookError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as err:  # noqa: BLE001 - the one place that turns bugs into a line
        print(
            f"{prog}: internal error ({type(err).__name__}): {err}; please report it",
            file=sys.stderr,
        )
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else argv
    args = build_parser(only=command_of(words)).parse_args(words)
    runners = {"transform": run_transform, "discover": run_discover, "serve": run_serve}
    return _guarded(PROG, lambda: runners[args.command](args))


SHIM_DESCRIPTION = (
    "onDefineDomain --vmi JSON --domain XML: the script KubeVirt's sidecar-shim runs. "
    "Prints the new domain XML. Options beyond the two come from the same QAT_HOOK_* "
    "variables as qat-hook serve."
)


def shim_main(argv: Sequence[str] | None = None) -> int:
    """``onDefineDomain``: the same hook as ``serve``, as the sidecar-shim's script."""
    parser = _Parser(prog="onDefineDomain", description=SHIM_DESCRIPTION)
    parser.add_argument("--vmi", required=True, help="the VMI object as JSON (a string)")
    parser.add_argument("--domain", required=True, help="the domain XML (a string)")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    settings.add_options(
        parser, settings.DISCOVERY_OPTIONS + settings.TRANSFORM_OPTIONS, os.environ
    )
    args = parser.parse_args(argv)

    def run() -> int:
        from hook_sidecar.hook import on_define_domain

        outcome = on_define_domain(
            args.domain.encode(), args.vmi, _environment(), hook_settings(args)
        )
        for warning in outcome.warnings:
            _warn(warning)
        sys.stdout.buffer.write(outcome.domain_xml)
        sys.stdout.flush()
        return 0

    return _guarded("onDefineDomain", run)


if __name__ == "__main__":
    sys.exit(main())
