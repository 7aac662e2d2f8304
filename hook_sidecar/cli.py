"""``qat-hook``: transform, discover and serve; and the ``onDefineDomain`` shim script.

Exit codes: 0 success, 1 bad input or failed validation, 2 usage error.
Every error is one line on stderr; a traceback is never shown to a user.
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from hook_sidecar import __version__, settings
from hook_sidecar.errors import HookError

if TYPE_CHECKING:
    from hook_sidecar.hook import HookSettings

PROG = "qat-hook"

TRANSFORM_EPILOG = """examples:
  qat-hook transform examples/domain.xml --device 0000:3d:02.2 --diff
  qat-hook transform domain.xml --vmi vmi.json -o new-domain.xml --validate
  QAT0=0000:3d:02.2 qat-hook transform - < domain.xml
  qat-hook transform domain.xml --device 3d:02.2 --guest-address 3d:02.2=00:10.0

Without --device, devices come from discovery (QAT_HOOK_DEVICES, QAT<N>,
PCI_RESOURCE_*/PCIDEVICE_* variables, kubelet, DRA metadata). Without --vmi,
whatever is found is injected; with --vmi, the hook decides as it does in a
cluster (only when the VMI asks, and the counts must match).
"""

DISCOVER_EPILOG = """examples:
  qat-hook discover --vmi examples/vmi.json
  QAT0=0000:3d:02.2 qat-hook discover --vmi examples/vmi.json --output json
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


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="KubeVirt hook sidecar that gives VMs an Intel QAT virtual function.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    formatter = argparse.RawDescriptionHelpFormatter

    transform = commands.add_parser(
        "transform",
        help="add the QAT hostdevs to a domain XML file",
        epilog=TRANSFORM_EPILOG,
        formatter_class=formatter,
    )
    transform.add_argument(
        "domain",
        nargs="?",
        default="-",
        metavar="DOMAIN.xml|-",
        help="libvirt domain XML (default: stdin)",
    )
    transform.add_argument("--vmi", metavar="VMI.json", help="the VMI object as JSON")
    transform.add_argument("-o", "--output", metavar="OUT", help="write the result here")
    transform.add_argument(
        "--diff", action="store_true", help="print a unified diff of input and output"
    )
    transform.add_argument(
        "--validate",
        action="store_true",
        help="check the result with libvirt (needs libvirt-python)",
    )
    settings.add_options(transform, settings.DISCOVERY_OPTIONS + settings.TRANSFORM_OPTIONS)

    discover = commands.add_parser(
        "discover",
        help="dry run: which VFs would be injected for a VMI, and why",
        epilog=DISCOVER_EPILOG,
        formatter_class=formatter,
    )
    discover.add_argument("--vmi", metavar="VMI.json", required=True)
    discover.add_argument("--output", choices=("text", "json"), default="text")
    settings.add_options(discover, settings.DISCOVERY_OPTIONS)

    serve = commands.add_parser(
        "serve",
        help="run the hook sidecar's gRPC server",
        epilog=SERVE_EPILOG,
        formatter_class=formatter,
    )
    settings.add_options(
        serve,
        settings.SERVE_OPTIONS
        + settings.DISCOVERY_OPTIONS
        + settings.TRANSFORM_OPTIONS
        + settings.LOG_OPTIONS,
    )
    return parser


def _read(path: str, what: str) -> bytes:
    try:
        if path == "-":
            return sys.stdin.buffer.read()
        return Path(path).read_bytes()
    except OSError as err:
        raise HookError(f"cannot read {what} {path}: {err.strerror or err}") from None


def _hook_settings(args: argparse.Namespace) -> HookSettings:
    from hook_sidecar.hook import HookSettings

    return HookSettings(
        discovery=settings.discovery_config(args),
        transform=settings.transform_options(args),
        guest_addresses=settings.guest_addresses(args),
    )


def _warn(message: str) -> None:
    print(f"{PROG}: warning: {message}", file=sys.stderr)


def run_transform(args: argparse.Namespace) -> int:
    from hook_sidecar.discovery import env_snapshot
    from hook_sidecar.hook import on_define_domain

    domain = _read(args.domain, "domain XML")
    vmi = _read(args.vmi, "VMI") if args.vmi else None
    outcome = on_define_domain(domain, vmi, env_snapshot(), _hook_settings(args))
    for warning in outcome.discovery.warnings:
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
        sys.stdout.writelines(
            difflib.unified_diff(
                domain.decode("utf-8", "replace").splitlines(keepends=True),
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
    from hook_sidecar import discovery
    from hook_sidecar import vmi as vmis

    vmi = vmis.parse_vmi(_read(args.vmi, "VMI"))
    found = discovery.discover(vmi, discovery.env_snapshot(), settings.discovery_config(args))
    if args.output == "json":
        print(json.dumps(found.as_json(), indent=2))
    else:
        print(discovery.describe(found))
    return 0


def run_serve(args: argparse.Namespace) -> int:
    from hook_sidecar.server import serve_from_args

    return serve_from_args(args, _hook_settings(args))


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
    args = build_parser().parse_args(argv)
    runners = {"transform": run_transform, "discover": run_discover, "serve": run_serve}
    return _guarded(PROG, lambda: runners[args.command](args))


def shim_main(argv: Sequence[str] | None = None) -> int:
    """``onDefineDomain --vmi JSON --domain XML``: the script KubeVirt's sidecar-shim runs.

    Options beyond the two come from the same QAT_HOOK_* variables as ``serve``.
    """
    parser = _Parser(prog="onDefineDomain", description=shim_main.__doc__)
    parser.add_argument("--vmi", required=True, help="the VMI object as JSON (a string)")
    parser.add_argument("--domain", required=True, help="the domain XML (a string)")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    settings.add_options(parser, settings.DISCOVERY_OPTIONS + settings.TRANSFORM_OPTIONS)
    args = parser.parse_args(argv)

    def run() -> int:
        from hook_sidecar.discovery import env_snapshot
        from hook_sidecar.hook import on_define_domain

        outcome = on_define_domain(
            args.domain.encode(), args.vmi, env_snapshot(), _hook_settings(args)
        )
        for warning in outcome.discovery.warnings:
            _warn(warning)
        sys.stdout.buffer.write(outcome.domain_xml)
        sys.stdout.flush()
        return 0

    return _guarded("onDefineDomain", run)


if __name__ == "__main__":
    sys.exit(main())
