"""``onDefineDomain``: the script KubeVirt's sidecar-shim runs, a new process per call.

The shim execs ``onDefineDomain --vmi JSON --domain XML`` for every OnDefineDomain
and hands the script's stdout to virt-launcher as the new domain; the script's
stderr lines become the shim's log entries, and a non-zero exit fails the call
(the VMI's owner sees ``exit status 1`` and the shim's log has the line). So the
whole start of this process is paid at every VM start and every migration target,
and it loads only what the hook needs: no grpc, no protobuf, no argparse parser.
Options beyond the two come from the same ``QAT_HOOK_*`` variables as
``qat-hook serve`` (``settings``).

The shim passes the arguments as raw bytes (Go strings); Python decodes argv with
the file system encoding and ``surrogateescape``, so ``os.fsencode`` gives back the
exact bytes whatever the document's encoding (a Latin-1 domain included), and the
new domain is written to stdout as bytes.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any, cast

from hook_sidecar import __version__, startup

if TYPE_CHECKING:
    import argparse
    from collections.abc import Mapping, Sequence

PROG = "onDefineDomain"
USAGE = f"usage: {PROG} --vmi JSON --domain XML"
HELP = f"""{USAGE}

The script KubeVirt's sidecar-shim runs for OnDefineDomain: prints the domain XML
with the QAT VFs the VMI asks for added. Every other option comes from the same
QAT_HOOK_* variables as `qat-hook serve` (docs/reference.md#options).

options:
  --vmi JSON      the VirtualMachineInstance as JSON (the text itself)
  --domain XML    the libvirt domain XML (the text itself)
  -h, --help      show this help and exit
  --version       show the version and exit
"""
ARGUMENTS = ("--vmi", "--domain")
# What this process imports but never uses on its way (a first use imports it, as usual):
# lxml's gzip and shutil (compressed files only), besides the server's list.
DEFERRED = (*startup.DEFERRED, "shutil", "gzip")


class UsageError(Exception):
    """The command line is not ``--vmi JSON --domain XML``."""


def _escape(text: str) -> str:
    from hook_sidecar.errors import escape

    return escape(text)


def parse_arguments(argv: Sequence[str]) -> dict[str, bytes] | str:
    """``--vmi`` and ``--domain`` as the bytes the shim passed; or the text to print and exit 0.

    ``--name VALUE`` and ``--name=VALUE`` are accepted, each name once.
    """
    values: dict[str, bytes] = {}
    words = iter(argv)
    for word in words:
        if word in ("-h", "--help"):
            return HELP
        if word == "--version":
            return f"qat-hook {__version__}\n"
        name, equals, value = word.partition("=")
        if name not in ARGUMENTS:
            raise UsageError(f"unknown argument {_escape(word[:64])!r}")
        if name in values:
            raise UsageError(f"{name} given twice")
        if not equals:
            following = next(words, None)
            if following is None:
                raise UsageError(f"{name} needs a value")
            value = following
        values[name] = os.fsencode(value)
    missing = [name for name in ARGUMENTS if name not in values]
    if missing:
        raise UsageError(f"missing {' and '.join(missing)}")
    return values


def environment_settings(environ: Mapping[str, str]) -> argparse.Namespace:
    """The ``QAT_HOOK_*`` options the hook uses, read and checked as ``qat-hook serve`` reads
    them when no flag is given: the same table and the same checks (``settings``), without
    argparse (its import and a parser cost every call about 8% of the script's CPU)."""
    from types import SimpleNamespace

    from hook_sidecar import settings

    values = SimpleNamespace()
    for option in settings.DISCOVERY_OPTIONS + settings.TRANSFORM_OPTIONS:
        raw = environ.get(option.env)
        name = option.flag if raw is None else option.env
        value: Any
        if option.boolean:
            value = False if raw is None else settings.flag_value(raw, option.env)
        elif option.repeat:
            items = [item.strip() for item in (raw or "").split(",") if item.strip()]
            value = settings.Values(option.value(item, name) for item in items)
            value.origin = name
        else:
            text = option.default if raw is None else raw
            if text is not None:
                text = option.value(text.strip() if option.choices else text, name)
            value = text
        setattr(values, option.dest, value)
    return cast("argparse.Namespace", values)


def run(values: Mapping[str, bytes], environ: Mapping[str, str]) -> bytes:
    """The new domain for ``values`` (raises ``HookError`` for anything a user must fix)."""
    from hook_sidecar import settings
    from hook_sidecar.config import HookSettings, env_snapshot
    from hook_sidecar.errors import escape
    from hook_sidecar.hook import on_define_domain

    args = environment_settings(environ)
    hook = HookSettings(
        discovery=settings.discovery_config(args),
        transform=settings.transform_options(args),
        guest_addresses=settings.guest_addresses(args),
    )
    outcome = on_define_domain(values["--domain"], values["--vmi"], env_snapshot(environ), hook)
    for warning in outcome.warnings:
        # The shim logs each stderr line as an entry of its own: one warning, one line.
        sys.stderr.write(f"{PROG}: warning: {escape(warning)}\n")
    return outcome.domain_xml


def main(argv: Sequence[str] | None = None) -> int:
    """Exit 0 with the new domain on stdout; 1 with one line on stderr; 2 for a usage error."""
    try:
        parsed = parse_arguments(sys.argv[1:] if argv is None else argv)
    except UsageError as err:
        sys.stderr.write(f"{PROG}: error: {err}; {USAGE}\n")
        return 2
    if isinstance(parsed, str):
        sys.stdout.write(parsed)
        return 0
    startup.install(DEFERRED)
    from hook_sidecar.errors import HookError

    try:
        domain = run(parsed, os.environ)
    except HookError as err:
        sys.stderr.write(f"{PROG}: error: {err}\n")
        return 1
    except Exception as err:  # noqa: BLE001 - one line for the shim's log, never a traceback
        sys.stderr.write(
            f"{PROG}: internal error ({type(err).__name__}): {_escape(str(err))[:512]}; "
            "please report it\n"
        )
        return 1
    sys.stdout.buffer.write(domain)
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
