#!/usr/bin/env python3
"""Rewrite the option table in docs/ from hook_sidecar.settings (tests/test_readme.py checks it)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hook_sidecar.settings import markdown_table  # noqa: E402

BLOCK = re.compile(r"(<!-- options-table:[^\n]*-->\n).*?(<!-- end options-table -->)", re.S)


def render(readme: str) -> str:
    return BLOCK.sub(lambda m: m.group(1) + markdown_table() + "\n" + m.group(2), readme)


if __name__ == "__main__":
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = path.read_text()
        if BLOCK.search(text):
            path.write_text(render(text))
