"""The README tells the truth about options and the quick start."""

from __future__ import annotations

import re

from scripts.readme_options import render
from tests.conftest import ROOT

README = (ROOT / "README.md").read_text()


def test_options_table_matches_the_code() -> None:
    assert render(README) == README, "run: python scripts/readme_options.py"


def test_quick_start_is_exactly_two_commands() -> None:
    quick = README.split("## Quick start", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in quick.strip().splitlines()]
    assert commands == ["make demo", "make test"]


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, re.M)


def test_every_example_the_readme_links_exists() -> None:
    for link in re.findall(r"\]\((examples/[^)#]+)\)", README):
        assert (ROOT / link).exists(), link
