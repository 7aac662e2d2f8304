"""One place that decides whether the suite runs in CI.

Tests that must never skip there (libvirt, Go's encoding/xml, fuzzing where
atheris installs) call ``skip_or_fail``: outside CI a missing tool is a skip
that names it, in CI it is a failure. ``.ci/run`` exports ``CI=true``.
"""

from __future__ import annotations

import os

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true")


def skip_or_fail(reason: str) -> None:
    """Skip locally; fail in CI, where the missing piece means a broken install step."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: this test must run in CI)")
    pytest.skip(reason)
