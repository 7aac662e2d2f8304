"""``qat-hook``: transform, discover and serve; and the ``onDefineDomain`` shim script.

Exit codes: 0 success; 1 bad input, a bad option value (flag or variable) or failed
validation; 2 usage error (unknown command or option, missing value). Every message
is one escaped line on stderr; a traceback is never shown to a user.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from hook_sidecar import __version__, settings
from hook_sidecar.config import MAX_VMI_BYTES
from hook_sidecar.errors import HookError, one_line

if TYPE_CHECKING:
    from hook_sidecar.config import HookSettings
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

--vmi takes JSON: a VirtualMachineInstance (kubectl get vmi NAME -o json) or a
VirtualMachine (kubectl get vm NAME -o json; its spec.template is read as the VMI
it starts). YAML is not read; an empty file, {}, a List or another kind is an error.
Messages and warnings go to stderr; -o names the output file.
"""

DISCOVER_EPILOG = """examples:
  qat-hook discover --vmi examples/vmi.json
  QAT0=0000:3d:02.2 qat-hook discover --vmi examples/vmi.json --format json
  QAT0=0000:3d:02.2 qat-hook discover --vmi examples/vmi.json --domain examples/domain.xml

Each device line shows the VF's host NUMA node (from kubelet, or sysfs under
--sysfs-root); with --domain also the guest NUMA cell the transform would put
it on for that domain. --vmi takes the same JSON as transform's (a VMI, or a
VirtualMachine whose spec.template is read). The report goes to stdout,
warnings to stderr; when nothing is found, every place looked at follows the error.
"""

SERVE_EPILOG = """examples (as in a hookSidecars annotation's args):
  qat-hook serve
  qat-hook serve --hook-api-version v1alpha2 --device 0000:3d:02.2
  qat-hook serve --plugin-socket /var/run/kubevirt-plugin/qat/qat.sock   (plugin only)
  qat-hook serve --socket-dir /var/run/kubevirt-hooks --plugin-socket PATH   (both)

Here --version is --hook-api-version (the hook API version to offer), the
spelling KubeVirt's sidecar-shim uses; qat-hook --version prints the program's.
"""


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line and exits 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")


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
    parser.add_argument(
        "--vmi",
        metavar="VMI.json",
        help="the VMI (or a VirtualMachine) as JSON: kubectl get vmi NAME -o json",
    )
    parser.add_argument(
        "-o", "--output", metavar="FILE", help="write the result to this file, not stdout"
    )
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
        help="the VirtualMachineInstance as JSON (kubectl get vmi NAME -o json; "
        "a VirtualMachine's spec.template is read too)",
    )
    parser.add_argument(
        "--format",
        choices=("text", "json"),
        default="text",
        help="text for people, json for scripts",
    )
    # An alias of --format, kept for scripts; hidden, since transform's --output names a file.
    parser.add_argument(
        "--output", dest="old_format", choices=("text", "json"), help=argparse.SUPPRESS
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
    environ: Mapping[str, str] | None = None, command: str | None = None
) -> argparse.ArgumentParser:
    """The ``qat-hook`` parser; option defaults come from ``environ`` (the process's).

    With ``command``, only that command's options are built (every command is still listed
    with its help line): ``qat-hook serve`` starts once per VM, and the other commands'
    options are about 2 ms of its start-up.

    A variable with a value its option cannot take is ``InvalidInput`` here or when
    parsing (argparse passes string defaults through each option's check).
    """
    env = os.environ if environ is None else environ
    parser = _Parser(
        prog=PROG,
        description="KubeVirt hook sidecar that gives VMs an Intel QAT virtual function.",
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"{PROG} {__version__}",
        help="print the program's version (qat-hook serve --version is the hook API's)",
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name in COMMANDS:
        add_options, epilog = _OPTIONS[name]
        subparser = commands.add_parser(
            name,
            help=COMMAND_HELP[name],
            epilog=epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        if command in (None, name):
            add_options(subparser, env)
    return parser


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


def hook_settings(args: argparse.Namespace) -> HookSettings:
    """The core's plain settings from parsed (and so already checked) arguments."""
    from hook_sidecar.config import HookSettings

    return HookSettings(
        discovery=settings.discovery_config(args),
        transform=settings.transform_options(args),
        guest_addresses=settings.guest_addresses(args),
    )


def _environment() -> dict[str, str]:
    from hook_sidecar.config import env_snapshot

    return env_snapshot(os.environ)


def _say(message: str, prog: str = PROG) -> None:
    """One line on stderr, escaped: text from files or the VMI cannot forge a line."""
    print(f"{prog}: {one_line(message)}", file=sys.stderr)


def _warn(message: str, prog: str = PROG) -> None:
    _say(f"warning: {message}", prog)


def _read_vmi(path: str) -> tuple[Mapping[str, Any], str | None]:
    from hook_sidecar import vmi as vmis

    where = "stdin" if path == "-" else path
    return vmis.read_vmi_file(_read(path, "VMI", MAX_VMI_BYTES), where)


def _write(path: str, data: bytes) -> None:
    try:
        with open(path, "wb") as stream:
            stream.write(data)
    except OSError as err:
        raise HookError(f"cannot write {path}: {err.strerror or err}") from None


def run_transform(args: argparse.Namespace) -> int:
    from hook_sidecar.hook import on_define_domain

    hook = hook_settings(args)
    if args.validate:
        from hook_sidecar.validate import check_available

        check_available()  # before anything is written or reported as added
    domain = _read(args.domain, "domain XML", hook.transform.max_bytes)
    vmi_json = None
    if args.vmi:
        vmi, note = _read_vmi(args.vmi)
        if note:
            _say(f"note: {note}")
        vmi_json = json.dumps(vmi).encode()
    outcome = on_define_domain(domain, vmi_json, _environment(), hook)
    for warning in outcome.warnings:
        _warn(warning)
    if args.output:
        _write(args.output, outcome.domain_xml)
    result = outcome.result
    if not outcome.discovery.wanted:
        _say(f"no change: {outcome.discovery.reason}")
    elif result is not None:
        for added in result.added:
            _say(
                f"added {added.alias} for {added.address} "
                f"(from {outcome.discovery.source}: {outcome.discovery.detail})"
            )
        for address in result.already_present:
            _say(f"{address} is already a hostdev; not added again")

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
            _say(f"libvirt {line}")
        if not report.ok:
            return 1
    return 0


def run_discover(args: argparse.Namespace) -> int:
    from hook_sidecar import discovery, hook, report

    if args.old_format is not None:
        _say("note: discover --output is now --format (transform's --output names a file)")
    output_format = args.old_format or args.format
    config = hook_settings(args)
    vmi, note = _read_vmi(args.vmi)
    try:
        decided = discovery.discover(vmi, _environment(), config.discovery)
    except HookError as err:
        _say(f"error: {err}")
        for place in err.details:
            _say(f"looked at: {place}")
        return 1
    cells = None
    if args.domain is not None:
        from hook_sidecar.transform import transform

        domain = _read(args.domain, "domain XML", config.transform.max_bytes)
        cells = {}
        if decided.wanted and decided.devices:
            devices = hook.host_devices(decided, config.guest_addresses)
            result = transform(domain, devices, config.transform, decided.host_cpus)
            decided = decided._replace(warnings=decided.warnings + result.warnings)
            cells = {added.address: added.guest_cell for added in result.added}
    for warning in decided.warnings:
        _warn(warning)
    if output_format == "json":
        data = report.as_json(decided, cells)
        if note:
            data["note"] = note
        print(json.dumps(data, indent=2))
    else:
        print(f"note: {one_line(note)}\n" if note else "", end="")
        print(report.describe(decided, cells))
    return 0


def serve_config(args: argparse.Namespace) -> ServeConfig:
    """The server's socket and API settings from parsed arguments."""
    from hook_sidecar.server import ServeConfig

    versions = tuple(dict.fromkeys(args.hook_api_version)) or settings.HOOK_API_VERSIONS
    plugin_socket = args.plugin_socket or None
    # Plugin mode is --plugin-socket alone; naming a hook socket too serves both.
    hook_socket = None
    if plugin_socket is None or args.socket_dir or args.socket_name:
        hook_socket = os.path.join(
            args.socket_dir or settings.DEFAULT_SOCKET_DIR,
            args.socket_name or settings.DEFAULT_SOCKET_NAME,
        )
    return ServeConfig(
        hook_socket=hook_socket,
        plugin_socket=plugin_socket,
        name=args.name,
        versions=versions,
        workers=args.workers,
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
        _say(f"error: {err}", prog)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as err:  # noqa: BLE001 - the one place that turns bugs into a line
        _say(f"internal error ({type(err).__name__}): {err}; please report it", prog)
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else argv
    runners = {"transform": run_transform, "discover": run_discover, "serve": run_serve}

    def run() -> int:
        command = words[0] if words and words[0] in COMMANDS else None
        args = build_parser(command=command).parse_args(words)  # a bad value: exit 1
        return runners[args.command](args)

    return _guarded(PROG, run)


if __name__ == "__main__":
    sys.exit(main())
