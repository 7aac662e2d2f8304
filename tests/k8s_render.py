"""Render deploy/ and charts/ with the real kubectl (kustomize) and helm.

The binaries are the ones ``scripts/k8s-tools.sh`` installs next to the test virtualenv
(``make test`` runs it); /usr/bin/kubectl or a helm on PATH is never used, so every
machine renders with the same versions. Renders are cached for the session: each
overlay and chart variant is rendered once however many tests read it.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from tests.ci import skip_or_fail
from tests.conftest import ROOT

DEPLOY = ROOT / "deploy"
OVERLAYS = DEPLOY / "overlays"
CHART = ROOT / "charts" / "kubevirt-qat-hook"
TOOLS = Path(sys.prefix) / "k8s-tools" / "bin"
NAMESPACE = "kubevirt-qat-hook"
DEFAULT_REPOSITORY = "ghcr.io/kubevirt-qat-hook/kubevirt-qat-hook"
MAP_V1 = "admissionregistration.k8s.io/v1/MutatingAdmissionPolicy"

ROUTES = ("plugin", "annotation")
SOURCES = ("podresources", "dra", "static")
APIS = ("v1", "v1beta1")
# The Kubernetes versions each admission API version is validated against.
KUBERNETES = {"v1": ("1.36.0", "1.37.0"), "v1beta1": ("1.34.0", "1.35.0")}

Objects = list[dict[str, Any]]


def overlay_name(route: str, source: str, api: str) -> str:
    return f"{route}-{source}" + ("-v1beta1" if api == "v1beta1" else "")


def overlay_choices(name: str) -> tuple[str, str, str]:
    """(route, source, api) of an overlay directory name."""
    parts = name.split("-")
    api = "v1beta1" if parts[-1] == "v1beta1" else "v1"
    return parts[0], parts[1], api


def tool(name: str) -> Path:
    path = TOOLS / name
    if not path.is_file():
        skip_or_fail(f"{path} is missing: run scripts/k8s-tools.sh {TOOLS.parent}")
    return path


def run(*command: str | Path) -> str:
    result = subprocess.run(
        [str(c) for c in command], capture_output=True, text=True, timeout=120, check=False
    )
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, command))} failed:\n{result.stderr}")
    return result.stdout


def parse(text: str) -> Objects:
    return [doc for doc in yaml.safe_load_all(text) if doc]


@functools.cache
def kustomize_text(path: Path) -> str:
    return run(tool("kubectl"), "kustomize", path)


def kustomize(path: Path) -> Objects:
    return parse(kustomize_text(path))


@functools.cache
def wrapped_overlay_text(name: str, image: str | None = None, devices: str | None = None) -> str:
    """Render a user's own overlay on top of ours: a new image, and/or static devices."""
    with tempfile.TemporaryDirectory() as tmp:
        lines = ["resources:", f"  - {os.path.relpath(OVERLAYS / name, tmp)}"]
        if image is not None:
            repository, tag = image.rsplit(":", 1)
            lines += [
                "images:",
                f"  - name: {DEFAULT_REPOSITORY}",
                f"    newName: {repository}",
                f'    newTag: "{tag}"',
            ]
        if devices is not None:
            patch: dict[str, Any] = {"metadata": {"name": "qat-hook", "namespace": NAMESPACE}}
            patch |= {"apiVersion": "v1", "kind": "ConfigMap", "data": {"devices": devices}}
            lines += ["patches:", f"  - patch: '{json.dumps(patch)}'"]
        (Path(tmp) / "kustomization.yaml").write_text("\n".join(lines) + "\n")
        return kustomize_text(Path(tmp))


@functools.cache
def helm_text(*args: str) -> str:
    return run(tool("helm"), "template", "qat-hook", CHART, "--namespace", NAMESPACE, *args)


def helm_args(route: str, source: str, api: str | None = None) -> tuple[str, ...]:
    """Chart values for these choices; api None leaves the version to the capabilities."""
    args = ["--set", f"route={route}", "--set", f"addressSource={source}"]
    if source == "static":
        args += ["--set", "staticDevices={0000:3d:02.2}"]
    if api is not None:
        args += ["--set", f"admissionApiVersion={api}"]
    return tuple(args)


def helm(route: str, source: str, api: str | None = None, *extra: str) -> Objects:
    return parse(helm_text(*helm_args(route, source, api), *extra))


def key(obj: dict[str, Any]) -> tuple[str, str, str]:
    return obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"]


def by_key(objects: Objects) -> dict[tuple[str, str, str], dict[str, Any]]:
    table = {key(obj): obj for obj in objects}
    assert len(table) == len(objects), "two objects share a kind, namespace and name"
    return table


def of_kind(objects: Objects, kind: str) -> Objects:
    return [obj for obj in objects if obj["kind"] == kind]


def one(objects: Objects, kind: str) -> dict[str, Any]:
    found = of_kind(objects, kind)
    assert len(found) == 1, f"{len(found)} objects of kind {kind}"
    return found[0]
