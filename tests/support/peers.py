"""Finding the real peer programs (KubeVirt's and Kubernetes' code built from Go modules).

``scripts/peers.sh build`` (run by ``make unit``/``make peers``) builds every peer listed in
``tests/peers/*/peers.txt`` into a cache; ``scripts/peers.sh path NAME`` prints one. A test
that needs a peer calls :func:`peer`: outside CI a missing peer is a skip naming the build
command, in CI (``CI=true``) a failure.
"""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

from tests.ci import skip_or_fail

ROOT = Path(__file__).resolve().parent.parent.parent
PEERS_SH = ROOT / "scripts" / "peers.sh"
BUILD_HINT = "scripts/peers.sh build (or make peers; needs Go 1.26 and the Go module proxy)"


@functools.cache
def _lookup(name: str) -> tuple[Path | None, str]:
    result = subprocess.run(
        [str(PEERS_SH), "path", name],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if result.returncode == 0:
        return Path(result.stdout.strip()), ""
    return None, result.stderr.strip().splitlines()[-1] if result.stderr.strip() else ""


def peer(name: str) -> Path:
    """The built peer binary ``name``; skip (fail in CI) when it has not been built."""
    path, why = _lookup(name)
    if path is None:
        skip_or_fail(f"peer {name!r} is not built ({why}): run {BUILD_HINT}")
        raise AssertionError("unreachable")  # skip_or_fail raises
    return path


def run_peer(
    name: str, *args: str, timeout: float = 120, stdin: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    """Run peer ``name`` with ``args``; the result is returned whatever the exit status."""
    return subprocess.run(
        [str(peer(name)), *args],
        input=stdin,
        capture_output=True,
        timeout=timeout,
        check=False,
    )


def hook_manager(
    hooks_dir: Path, vmi: Path, domain: Path, *extra: str
) -> subprocess.CompletedProcess[bytes]:
    """KubeVirt's hook manager (``hookdriver``) calling every sidecar socket under ``hooks_dir``."""
    args = ("-hooks-dir", str(hooks_dir), "-vmi", str(vmi), "-domain", str(domain))
    return run_peer("hookdriver", *args, "-timeout", "20s", *extra)
