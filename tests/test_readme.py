"""README.md and docs/ tell the truth: their commands run, their links resolve, their facts hold.

What "a command runs" means here (docs/development.md#documentation-and-its-tests says it
for the people who write the pages):

- Commands are the logical lines of ```` ```sh ```` blocks, the ``$ `` lines of
  ```` ```console ```` blocks (whose following lines are the exact expected output), and the
  table cells that are nothing but a command in backticks.
- Each block runs in bash (``set -o pipefail``) in a scratch directory holding ``examples/``,
  ``deploy/`` and ``charts/``, with the test virtualenv's ``qat-hook`` on ``PATH`` and no
  device or ``QAT_HOOK_*`` variable set. Local commands must exit 0.
- ``kubectl``, ``helm``, ``virtctl``, ``make`` and ``.venv/bin/python`` are small recorders on
  ``PATH``; what they were called with is then checked with the real programs: ``kubectl
  apply -k`` and ``helm install``/``upgrade`` are rendered by the real kubectl and helm
  (``tests/k8s_render.py``), every other ``kubectl``/``helm`` call is parsed by the real
  program against an API server on a refused loopback port (only a refused connection
  passes, never a usage error), ``make X`` runs as ``make -n X``, a benchmark's flags must be
  in its ``--help``, and a pytest selection must collect. ``virtctl`` and commands in a block
  whose first line is ``# in the guest`` are checked against a list of known subcommands and
  programs: a stand-in, since neither a KubeVirt cluster nor a guest runs here.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest
import yaml

from hook_sidecar import __version__
from scripts.readme_options import render
from tests import k8s_render
from tests.ci import skip_or_fail
from tests.conftest import ROOT

README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = (README, *sorted(DOCS.glob("*.md")))
REPO = "kubevirt-qat-hook/kubevirt-qat-hook"
IMAGE = "ghcr.io/kubevirt-qat-hook/kubevirt-qat-hook"
CHART_OCI = "oci://ghcr.io/kubevirt-qat-hook/charts/kubevirt-qat-hook"
VENV_BIN = Path(sys.executable).parent
# Programs that are recorded and checked afterwards instead of run against a cluster.
RECORDED = ("kubectl", "helm", "virtctl", "make")
TABLE_PROGRAMS = ("qat-hook", "onDefineDomain", *RECORDED)
# virtctl subcommands a page may use (KubeVirt's virtctl; no virtctl binary runs here).
VIRTCTL = {"console", "ssh", "scp", "vnc", "start", "stop", "restart", "pause", "unpause"}
# Programs a page may run inside a guest (no guest runs here).
GUEST_PROGRAMS = {"lspci", "grep", "dmesg", "ls", "cat", "lsmod"}
SKIP_DIRS = {".git", ".venv", "mutants", ".cache", "build", "dist", "node_modules"}


# --- reading Markdown ----------------------------------------------------------------------


class Block(NamedTuple):
    """A fenced code block: where it starts (1-based line of the fence), its language, its lines."""

    page: Path
    line: int
    lang: str
    lines: tuple[str, ...]


FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})\s*([\w-]*)")
CODE_SPAN = re.compile(r"(`+)(?!`)(.+?)(?<!`)\1(?!`)", re.S)


def split_page(text: str) -> tuple[list[Block], list[tuple[int, str]]]:
    """The page's fenced blocks, and its other lines (line number, text)."""
    blocks: list[Block] = []
    prose: list[tuple[int, str]] = []
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if opening is None:
            prose.append((index + 1, lines[index]))
            index += 1
            continue
        fence, lang = opening.group(1), opening.group(2)
        end = index + 1
        while end < len(lines) and not lines[end].strip().startswith(fence):
            end += 1
        blocks.append(Block(Path(), index + 1, lang, tuple(lines[index + 1 : end])))
        index = end + 1
    return blocks, prose


def page_blocks(page: Path) -> list[Block]:
    return [b._replace(page=page) for b in split_page(page.read_text())[0]]


def prose_text(page: Path) -> str:
    """The page without fenced blocks and without code spans."""
    text = "\n".join(line for _, line in split_page(page.read_text())[1])
    return CODE_SPAN.sub("", text)


def logical_lines(lines: tuple[str, ...]) -> list[str]:
    """Shell commands: continuation lines joined, blank and comment-only lines left out."""
    commands: list[str] = []
    pending = ""
    for line in lines:
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line
        if line.endswith("\\"):
            pending += "\n"
            continue
        commands.append(pending)
        pending = ""
    assert not pending, f"a command ends in a continuation: {pending!r}"
    return commands


def table_commands(page: Path) -> list[str]:
    """Table cells that hold nothing but commands in backticks (``a`` / ``b``)."""
    found = []
    for _, line in split_page(page.read_text())[1]:
        if not line.startswith("|"):
            continue
        for cell in line.strip().strip("|").split("|"):
            cell = cell.strip()
            if not re.fullmatch(r"`[^`]+`(?: / `[^`]+`)*", cell):
                continue
            for span in re.findall(r"`([^`]+)`", cell):
                words = [w for w in span.split() if not re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", w)]
                if words and words[0] in TABLE_PROGRAMS:
                    found.append(span)
    return found


def slug(title: str) -> str:
    """A heading's anchor as GitHub spells it."""
    title = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", title)
    return re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")


def headings(page: Path) -> list[str]:
    return [
        m.group(1)
        for _, line in split_page(page.read_text())[1]
        if (m := re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line))
    ]


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set(re.findall(r'<a (?:name|id)="([^"]+)"', page.read_text()))
    for title in headings(page):
        base = slug(title)
        count = seen.get(base, 0)
        found.add(base if count == 0 else f"{base}-{count}")
        seen[base] = count + 1
    return found


def markdown_files() -> list[Path]:
    found = []
    for directory, subdirs, files in os.walk(ROOT):
        subdirs[:] = [d for d in subdirs if d not in SKIP_DIRS and not d.endswith(".egg-info")]
        found += [Path(directory) / f for f in files if f.endswith(".md")]
    return sorted(found)


# --- running a page's commands -------------------------------------------------------------

RECORDER = """#!{python}
import json, os, sys
name = os.path.basename(sys.argv[0])
args = sys.argv[1:]
with open(os.environ["DOCS_CALLS"], "a") as log:
    log.write(json.dumps({{"program": name, "args": args, "cwd": os.getcwd(),
                          "line": int(os.environ["DOCS_LINE"])}}) + "\\n")
if name == "kubectl" and args[:1] == ["kustomize"]:
    os.execv({kubectl!r}, [{kubectl!r}, *args])
if name == "kubectl" and args[:1] == ["get"] and args[-2:] == ["-o", "name"]:
    print("pod/virt-launcher-vmi-qat-x2k9d")  # stand-in for the object a cluster would name
"""

DEAD_KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{name: dead, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: dead, user: {token: not-a-token}}]
contexts: [{name: dead, context: {cluster: dead, user: dead}}]
current-context: dead
"""


class Line(NamedTuple):
    """One command as run: its text, exit status and combined output."""

    command: str
    returncode: int
    output: str


class Call(NamedTuple):
    """One call of a recorded program."""

    program: str
    args: list[str]
    cwd: Path
    line: int


class Scratch(NamedTuple):
    work: Path
    env: dict[str, str]
    calls: Path
    kubeconfig: Path


def scratch(tmp: Path) -> Scratch:
    """A directory to run a page's commands in, with the recorders and a clean environment."""
    work, bins, home = tmp / "work", tmp / "bin", tmp / "home"
    for directory in (work, bins, home, work / ".venv" / "bin"):
        directory.mkdir(parents=True)
    for name in ("examples", "deploy", "charts"):
        (work / name).symlink_to(ROOT / name)
    recorder = RECORDER.format(python=sys.executable, kubectl=str(k8s_render.TOOLS / "kubectl"))
    for path in [bins / name for name in RECORDED] + [work / ".venv" / "bin" / "python"]:
        path.write_text(recorder)
        path.chmod(0o755)
    for name in ("qat-hook", "onDefineDomain"):
        (work / ".venv" / "bin" / name).symlink_to(VENV_BIN / name)
    kubeconfig = tmp / "kubeconfig"
    kubeconfig.write_text(DEAD_KUBECONFIG)
    calls = tmp / "calls.jsonl"
    env = {
        "PATH": f"{bins}:{VENV_BIN}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "KUBECONFIG": str(kubeconfig),
        "DOCS_CALLS": str(calls),
    }
    return Scratch(work, env, calls, kubeconfig)


def run_lines(place: Scratch, commands: list[str]) -> list[Line]:
    """Run the commands in one bash, in order (variables carry over), each line's status kept."""
    outputs = place.work.parent / "out"
    outputs.mkdir(exist_ok=True)
    script = ["set -o pipefail"]
    for number, command in enumerate(commands):
        script += [
            f"export DOCS_LINE={number}",
            "{ " + command + f"\n}} > {outputs / str(number)} 2>&1 < /dev/null",
            f'echo "$?" > {outputs / str(number)}.rc',
        ]
    subprocess.run(
        ["bash", "-c", "\n".join(script)],
        cwd=place.work,
        env=place.env,
        timeout=300,
        check=False,
    )
    lines = []
    for number, command in enumerate(commands):
        status = outputs / f"{number}.rc"
        assert status.exists(), f"bash stopped before: {command}"
        output = (outputs / str(number)).read_text(errors="replace")
        lines.append(Line(command, int(status.read_text()), output))
    return lines


def recorded(place: Scratch) -> list[Call]:
    if not place.calls.exists():
        return []
    return [
        Call(c["program"], c["args"], Path(c["cwd"]), c["line"])
        for c in map(json.loads, place.calls.read_text().splitlines())
    ]


def uses_recorded(command: str) -> bool:
    return bool(re.search(r"(^|[\s|(;])(kubectl|helm|virtctl|make|\.venv/bin/python)\s", command))


# --- checking what the recorded programs were called with ----------------------------------


def tool(name: str) -> Path:
    return k8s_render.tool(name)


def succeeds(command: list[str | Path], cwd: Path) -> None:
    done = subprocess.run(
        [str(c) for c in command], cwd=cwd, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, f"{shlex.join(map(str, command))}: {done.stderr[-1500:]}"


def refused_loopback(program: str, args: list[str], cwd: Path, kubeconfig: Path) -> None:
    """The real program parses the call and gets as far as the (refused) API server."""
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(kubeconfig.parent)}
    env["KUBECONFIG"] = str(kubeconfig)
    done = subprocess.run(
        [str(tool(program)), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    unreachable = ("was refused", "connection refused", "cluster unreachable")
    assert done.returncode == 0 or any(u in done.stderr for u in unreachable), (
        f"{program} {shlex.join(args)} is not a valid call: {done.stderr.strip()[-600:]}"
    )


def kustomization(target: str, cwd: Path) -> Path:
    remote = re.fullmatch(rf"https://github\.com/{REPO}//([^?]+)\?ref=v(.+)", target)
    if remote:
        assert remote.group(2) == __version__, f"{target} names a version other than {__version__}"
        return ROOT / remote.group(1)
    assert "://" not in target, f"{target}: only this repository's tags are documented"
    return (cwd / target).resolve()


def check_manifest(target: str, cwd: Path) -> None:
    release = re.fullmatch(
        rf"https://github\.com/{REPO}/releases/download/v([^/]+)/kubevirt-qat-hook-([\w.-]+)\.yaml",
        target,
    )
    if release:
        assert release.group(1) == __version__, f"{target} names another version"
        k8s_render.kustomize_text(ROOT / "deploy" / "overlays" / release.group(2))
        return
    assert "://" not in target, f"{target} is not one of the release's files"
    documents = [d for d in yaml.safe_load_all((cwd / target).read_text()) if d]
    assert documents, f"{target} holds no object"
    for document in documents:
        assert {"apiVersion", "kind"} <= set(document), f"{target}: {document}"


def check_in_container(argv: list[str]) -> str | None:
    """A command for ``kubectl exec``: virsh's subcommand exists, qat-hook's flags exist."""
    if argv[0] == "virsh":
        words = iter(argv[1:])
        subcommand = next(w for w in words if not (w in ("-c", "--connect") and next(words)))
        virsh = shutil.which("virsh")
        if virsh is None:
            return "virsh is missing: make test installs it (scripts/libvirtd.sh)"
        done = subprocess.run([virsh, "help", subcommand], capture_output=True, check=False)
        assert done.returncode == 0, f"virsh has no command {subcommand}"
        return None
    if argv[0] == "qat-hook":
        check_flags([str(VENV_BIN / "qat-hook"), argv[1]], argv[2:], ROOT)
        return None
    raise AssertionError(f"unknown program in the container: {shlex.join(argv)}")


def check_flags(command: list[str], args: list[str], cwd: Path) -> None:
    """Every ``--flag`` of ``args`` is one the real command's ``--help`` lists."""
    done = subprocess.run(
        [*command, "--help"], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    for flag in (a.split("=")[0] for a in args if a.startswith("--")):
        assert re.search(rf"{re.escape(flag)}\b", done.stdout), f"{shlex.join(command)}: no {flag}"


def check_kubectl(args: list[str], cwd: Path, kubeconfig: Path) -> str | None:
    if args[:2] == ["apply", "--server-side"]:
        args = ["apply", *args[2:]]  # how the pages install; the rendering is the same
    if args[:2] in (["apply", "-k"], ["delete", "-k"]):
        k8s_render.kustomize_text(kustomization(args[2], cwd))
        return None
    if args[:1] == ["kustomize"]:
        return None  # the recorder ran the real kubectl; the line's status is its status
    if args[:2] == ["apply", "-f"]:
        check_manifest(args[2], cwd)
        return None
    for flag, read in (("--patch-file", lambda v: (cwd / v).read_text()), ("-p", str)):
        if flag in args:
            json.loads(read(args[args.index(flag) + 1]))
    refused_loopback("kubectl", args, cwd, kubeconfig)
    if args[:1] == ["exec"] and "--" in args:
        return check_in_container(args[args.index("--") + 1 :])
    return None


def check_helm(args: list[str], cwd: Path, kubeconfig: Path) -> None:
    args = list(args)
    if CHART_OCI in args:
        assert "--version" in args, "an OCI chart is installed with --version"
        at = args.index("--version")
        assert args[at + 1] == __version__, f"--version {args[at + 1]}, not {__version__}"
        del args[at : at + 2]
        args[args.index(CHART_OCI)] = str(k8s_render.CHART)
    assert "://" not in " ".join(args), f"helm {shlex.join(args)}: not this project's chart"
    if args[0] in ("install", "upgrade"):
        template = ["template", *(a for a in args[1:] if a != "--reuse-values")]
        succeeds([tool("helm"), *template], cwd)
    refused_loopback("helm", args, cwd, kubeconfig)


def check_python(args: list[str]) -> None:
    if args[:2] == ["-m", "pytest"]:
        succeeds([sys.executable, "-m", "pytest", "--collect-only", "-q", *args[2:]], ROOT)
        return
    script = ROOT / args[0]
    assert script.parent.name == "benchmarks" and script.is_file(), f"python {args}"
    check_flags([sys.executable, str(script)], args[1:], ROOT)


def check_call(call: Call, kubeconfig: Path) -> str | None:
    """None when the call is right, a reason to skip when a tool is missing; else it raises."""
    if call.program == "kubectl":
        return check_kubectl(call.args, call.cwd, kubeconfig)
    if call.program == "helm":
        check_helm(call.args, call.cwd, kubeconfig)
    elif call.program == "make":
        succeeds(["make", "-n", *call.args], ROOT)
    elif call.program == "virtctl":
        assert call.args[0] in VIRTCTL, f"virtctl {call.args[0]}"
    elif call.program == "python":
        check_python(call.args)
    else:
        raise AssertionError(f"unexpected recorded program {call.program}")
    return None


def check_commands(commands: list[str], tmp: Path) -> list[Line]:
    """Run the commands and check every recorded call; fail on the first wrong one."""
    place = scratch(tmp)
    lines = run_lines(place, commands)
    calls = recorded(place)
    skips = []
    for number, line in enumerate(lines):
        mine = [c for c in calls if c.line == number]
        if uses_recorded(line.command):
            assert mine, f"nothing was called: {line.command}\n{line.output}"
            # A filter on a recorded call's (empty) output may find nothing: grep exits 1.
            allowed = (0, 1) if "|" in line.command else (0,)
            assert line.returncode in allowed, f"{line.command}\n{line.output}"
        else:
            assert line.returncode == 0, f"{line.command} exited {line.returncode}\n{line.output}"
        for call in mine:
            skip = check_call(call, place.kubeconfig)
            if skip:
                skips.append(skip)
    if skips:
        skip_or_fail(skips[0])
    return lines


class Case(NamedTuple):
    """The commands of one block (or of one page's tables), and its expected output if any."""

    name: str
    commands: list[str]
    expected: list[str | None]
    guest: bool


def cases() -> Iterator[Case]:
    for page in PAGES:
        where = page.relative_to(ROOT)
        for block in page_blocks(page):
            name = f"{where}:{block.line}"
            if block.lang == "sh":
                guest = bool(block.lines) and block.lines[0].strip() == "# in the guest"
                commands = logical_lines(block.lines)
                yield Case(name, commands, [None] * len(commands), guest)
            elif block.lang == "console":
                commands, expected = [], []
                for line in block.lines:
                    if line.startswith("$ "):
                        commands.append(line[2:])
                        expected.append("")
                    else:
                        assert commands, f"{name}: output before the first $ line"
                        expected[-1] += line + "\n"
                yield Case(name, commands, list(expected), False)
        tables = table_commands(page)
        if tables:
            yield Case(f"{where}:tables", tables, [None] * len(tables), False)


CASES = list(cases())


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_every_documented_command_runs(case: Case, tmp_path: Path) -> None:
    if case.guest:
        for command in case.commands:
            for stage in command.split("|"):
                program = shlex.split(stage)[0]
                assert program in GUEST_PROGRAMS, f"{case.name}: {program} in the guest"
        return
    tool("kubectl")  # the recorders hand `kubectl kustomize` to it
    lines = check_commands(case.commands, tmp_path)
    for line, expected in zip(lines, case.expected, strict=True):
        if expected is not None:
            assert line.output == expected, f"{case.name}: $ {line.command}\nprints:\n{line.output}"


def test_every_page_has_commands_checked() -> None:
    """The parser finds the commands: a page that shows some is never silently skipped."""
    names = {c.name.split(":")[0] for c in CASES}
    for page in PAGES:
        if "```sh" in page.read_text() or "```console" in page.read_text():
            assert str(page.relative_to(ROOT)) in names, page


# --- links ---------------------------------------------------------------------------------

LINK = re.compile(r"\[(?:[^\]]|\n)*?\]\(\s*([^)\s]+)(?:\s+\"[^\"]*\")?\s*\)")


@pytest.mark.parametrize("page", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path) -> None:
    for target in LINK.findall(prose_text(page)):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):
            continue  # https:, mailto:
        path, _, anchor = urllib.parse.unquote(target).partition("#")
        resolved = (page.parent / path).resolve() if path else page
        assert resolved.exists(), f"{page.relative_to(ROOT)}: {target} does not exist"
        if anchor:
            assert resolved.suffix == ".md", f"{page.relative_to(ROOT)}: {target}: no anchors"
            assert anchor in anchors(resolved), f"{page.relative_to(ROOT)}: no #{anchor} there"


def test_pages_link_each_other_from_the_readme() -> None:
    """Every page of docs/ is one click from the README, and opens with its question."""
    readme_links = set(LINK.findall(prose_text(README)))
    for page in PAGES[1:]:
        assert f"docs/{page.name}" in readme_links, page.name
        title, question = page.read_text().split("\n\n")[:2]
        assert title.startswith("# ") and "\n" not in title, page.name
        assert re.fullmatch(r"\*[^*]+\?\*", question.replace("\n", " ")), page.name


def test_readme_stays_short() -> None:
    assert len(README.read_text().splitlines()) <= 250


# --- facts the pages state -----------------------------------------------------------------


def test_quick_start_is_exactly_two_commands() -> None:
    quick = README.read_text().split("## Quick start", 1)[1].split("```sh", 1)[1]
    commands = [
        line.split("#")[0].strip() for line in quick.split("```", 1)[0].strip().splitlines()
    ]
    assert commands == ["make demo", "make test"]


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, re.M)


def test_options_table_matches_the_code() -> None:
    tables = [p for p in PAGES if "<!-- options-table:" in p.read_text()]
    assert tables == [DOCS / "reference.md"]
    for page in tables:
        assert render(page.read_text()) == page.read_text(), "run: scripts/readme_options.py"


def test_versions_agree() -> None:
    """The package, the chart, the changelog and every version the pages name are one."""
    chart = yaml.safe_load((k8s_render.CHART / "Chart.yaml").read_text())
    assert chart["version"] == chart["appVersion"] == __version__
    changelog = (ROOT / "CHANGELOG.md").read_text()
    sections = re.findall(r"^## \[([^\]]+)\]", changelog, re.M)
    assert sections[:1] == ["Unreleased"] and __version__ in sections, sections
    named = []
    for page in PAGES:
        text = page.read_text()
        named += re.findall(r"\?ref=v([\w.+-]+)", text)
        named += re.findall(rf"github\.com/{REPO}/releases/(?:download|tag)/v([\w.+-]+)", text)
        named += re.findall(rf"{re.escape(IMAGE)}:([\w.+-]+)", text)
        named += re.findall(rf"{re.escape(CHART_OCI)} --version ([\w.+-]+)", text)
        named += re.findall(r"current version, ([0-9][\w.+-]*[0-9])", text)
    assert named and set(named) == {__version__}, named


def test_readme_diff_is_what_make_demo_prints(tmp_path: Path) -> None:
    """The demo diff at the top of the README is the output of `make demo`'s own command."""
    recipe = subprocess.run(
        ["make", "-n", "demo"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.replace("\\\n", " ")
    command = next(line for line in recipe.splitlines() if " transform " in line)
    args = shlex.split(command)
    assert Path(args[0]).name == "qat-hook"
    place = scratch(tmp_path)
    done = subprocess.run(
        [str(VENV_BIN / "qat-hook"), *args[1:]],
        cwd=place.work,
        env=place.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    shown = [b for b in page_blocks(README) if b.lang == "diff"]
    assert len(shown) == 1 and "\n".join(shown[0].lines) + "\n" == done.stdout


def test_readme_install_table_lists_every_overlay() -> None:
    """Each directory of deploy/overlays/ is one command of the README's install table."""
    section = README.read_text().split("\n## Install\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ")]
    listed = re.findall(
        r"`kubectl apply --server-side -k deploy/overlays/([\w.-]+)`", "".join(rows)
    )
    overlays = sorted(p.name for p in (ROOT / "deploy" / "overlays").iterdir() if p.is_dir())
    assert sorted(listed) == overlays


def test_release_workflow_publishes_what_the_pages_name() -> None:
    """The chart's OCI location and the shim flavor's tag come from the release workflow."""
    workflow = (ROOT / ".github" / "workflows" / "image.yml").read_text()
    owner = REPO.split("/")[0]
    assert f"oci://ghcr.io/{owner}/charts/kubevirt-qat-hook" == CHART_OCI
    assert re.search(r"helm\"? push dist/kubevirt-qat-hook-\*\.tgz", workflow)
    assert '"oci://ghcr.io/${{ github.repository_owner }}/charts"' in workflow
    assert "target: shim" in workflow and "outputs.version }}-shim" in workflow


def test_readme_names_where_the_released_artifacts_are() -> None:
    text = README.read_text()
    for artifact in (f"{IMAGE}:{__version__}", f"releases/tag/v{__version__}", CHART_OCI):
        assert artifact in text, artifact


# --- messages the pages quote --------------------------------------------------------------


def code_strings() -> str:
    """Every string literal of hook_sidecar, f-string holes as NUL, module constants filled in."""
    found = []
    for module in sorted((ROOT / "hook_sidecar").glob("*.py")):
        tree = ast.parse(module.read_text())
        constants = {
            target.id: node.value.value
            for node in tree.body
            if isinstance(node, ast.Assign)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
            for target in node.targets
            if isinstance(target, ast.Name)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                found.append(node.value)
            elif isinstance(node, ast.JoinedStr):
                found.append("".join(literal_part(v, constants) for v in node.values))
    return "\n".join(found)


def literal_part(node: ast.expr, constants: dict[str, str]) -> str:
    if isinstance(node, ast.Constant):
        return str(node.value)
    if isinstance(node, ast.FormattedValue) and isinstance(node.value, ast.Name):
        return constants.get(node.value.id, "\0")
    return "\0"


def quoted_messages(page: Path, section: str) -> list[str]:
    """The first column's code spans of the section's tables, outside parentheses."""
    text = page.read_text().split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    messages = []
    for line in text.splitlines():
        if not line.startswith("| `"):
            continue
        depth = 0
        for part in re.split(r"(`[^`]*`)", line.split(" | ")[0].lstrip("| ")):
            if part.startswith("`") and depth == 0:
                messages.append(part.strip("`"))
            elif not part.startswith("`"):
                depth += part.count("(") - part.count(")")
    return messages


def test_every_quoted_message_is_one_the_hook_gives() -> None:
    """Each message the troubleshooting page quotes is still in the code, word for word."""
    code = code_strings()
    messages = quoted_messages(DOCS / "operations.md", "Messages and what to do")
    assert len(messages) > 40
    for message in messages:
        pieces = re.split(r"<[^>]*>|\.\.\.|\b[NMLC]\b|\d+|'[^']*'", message)
        for piece in (p.strip(" ;:,.()'\"/") for p in pieces):
            if len(piece) >= 8:
                assert piece in code, f"operations.md quotes {message!r}: no {piece!r} in the code"


def test_documentation_the_code_points_to_exists() -> None:
    """Messages that send the user to a page or a section name one that exists."""
    code = code_strings()
    for target in re.findall(r"docs/[\w-]+\.md(?:#[\w-]+)?", code):
        path, _, anchor = target.partition("#")
        assert (ROOT / path).is_file(), target
        assert not anchor or anchor in anchors(ROOT / path), target
    titles = {title for page in PAGES for title in headings(page)}
    for title in re.findall(r'README section "([^"]+)"', code):
        assert title in titles, f'the code points to a section "{title}" no page has'
