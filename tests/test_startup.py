"""The import deferral: safe in-process, and effective through the real entry point.

In-process tests use throw-away modules written to tmp_path (each test its own
names), so the deferral's behaviour is checked without touching asyncio or grpc
in the test process. The subprocess tests run ``python -m hook_sidecar serve``
with ``PYTHONPROFILEIMPORTTIME=1`` and read which modules the server imported.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import sysconfig
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hook_sidecar import startup
from hook_sidecar._generated import (
    info_pb2,
    info_pb2_grpc,
    plugins_v1alpha1_pb2,
    plugins_v1alpha1_pb2_grpc,
    v1alpha3_pb2,
    v1alpha3_pb2_grpc,
)
from tests.conftest import ROOT, clean_env, start_server
from tests.image_client import stderr_lines

# What a served call must never load: asyncio's body (and what it drags in), grpc.aio's.
NEVER_LOADED = (
    "asyncio.base_events",
    "asyncio.events",
    "ssl",
    "_ssl",
    "subprocess",
    "base64",
    "grpc.aio._server",
    "grpc.aio._channel",
    "google.protobuf.text_format",  # protobuf's pure-Python implementation
)
# Deferred modules without submodules: the import log shows the stand-in's import once,
# and the real module's as a second line.
NEVER_LOADED_TWICE = (
    "ipaddress",  # urllib.parse's, for bracketed IPv6 hosts only
    "calendar",  # protobuf's well_known_types', for Timestamps only
    "pkgutil",  # grpc's Cython core's, for TLS root certificates only
    "typing_extensions",  # grpc's server module's, for one decorator (startup.SERVED)
    "inspect",  # grpc's Cython core's, unread, and lxml's, for one function (startup.SERVED)
)


RUN_LOGS: dict[str, Path] = {}


@pytest.fixture
def modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh package name on sys.path whose __init__ writes a line each time it runs."""
    name = f"deferred_{tmp_path.name.replace('-', '_')}"
    package = tmp_path / name
    package.mkdir()
    log = tmp_path / "runs.log"
    log.write_text("")
    (package / "__init__.py").write_text(
        f"with open({str(log)!r}, 'a') as log:\n    log.write(__name__ + '\\n')\nVALUE = 42\n"
    )
    (package / "sub.py").write_text("SUB = 'sub'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv(startup.EAGER_ENV, raising=False)
    RUN_LOGS[name] = log
    yield name
    startup._FINDER.pending.discard(name)
    for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
        del sys.modules[key]
    del RUN_LOGS[name]


@pytest.fixture
def plain_module(modules: str) -> Iterator[str]:
    """A fresh plain module (no package) beside ``modules``, logging its runs to the same log."""
    name = f"{modules}_plain"
    (RUN_LOGS[modules].parent / f"{name}.py").write_text(
        f"with open({str(RUN_LOGS[modules])!r}, 'a') as log:\n    log.write(__name__ + '\\n')\n"
        "VALUE = 42\nOTHER = 'other'\n"
    )
    yield name
    startup._FINDER.pending.discard(name)
    startup._FINDER.served.pop(name, None)
    sys.modules.pop(name, None)


def runs(name: str) -> list[str]:
    """Each time the package's __init__ has run, in order."""
    return RUN_LOGS[name].read_text().splitlines()


def test_a_deferred_import_runs_nothing_until_first_use(modules: str) -> None:
    startup.install((modules,))
    module = importlib.import_module(modules)
    assert isinstance(module, startup.DeferredModule)
    assert runs(modules) == []
    assert not startup.loaded(modules)

    assert module.VALUE == 42
    assert runs(modules) == [modules]
    assert startup.loaded(modules)
    assert module.VALUE == 42 and runs(modules) == [modules]  # loaded once
    assert sys.modules[modules] is not module  # the real module replaced the stand-in


def test_a_second_import_statement_does_not_load_it(modules: str) -> None:
    """Where importlib.util.LazyLoader falls short on Python 3.11: logging, grpc and the
    hook all ``import traceback``, and only a use may load it."""
    startup.install((modules,))
    exec(f"import {modules}", {})
    exec(f"import {modules} as again", {})
    assert runs(modules) == []
    assert not startup.loaded(modules)


def test_from_import_and_submodule_import_load_the_real_package(modules: str) -> None:
    startup.install((modules,))
    importlib.import_module(modules)
    sub = importlib.import_module(f"{modules}.sub")
    assert sub.SUB == "sub"
    assert runs(modules) == [modules]  # __path__ was asked for: the package ran, then its child
    namespace: dict[str, Any] = {}
    exec(f"from {modules} import VALUE", namespace)
    assert namespace["VALUE"] == 42


def test_from_import_of_a_plain_module_loads_it_once(modules: str, plain_module: str) -> None:
    startup.install((plain_module,))
    importlib.import_module(plain_module)
    assert runs(modules) == []
    namespace: dict[str, Any] = {}
    exec(f"from {plain_module} import VALUE", namespace)
    assert namespace["VALUE"] == 42
    assert runs(modules) == [plain_module]


def test_a_served_name_is_answered_without_loading(modules: str, plain_module: str) -> None:
    """``from module import name`` of a served name leaves the module unloaded; any other
    name still loads it, and it answers from then on."""
    marker = object()
    startup.install((plain_module,), {plain_module: {"VALUE": marker}})
    namespace: dict[str, Any] = {}
    exec(f"from {plain_module} import VALUE", namespace)
    assert namespace["VALUE"] is marker
    assert runs(modules) == []
    assert not startup.loaded(plain_module)
    exec(f"from {plain_module} import OTHER", namespace)
    assert namespace["OTHER"] == "other"
    assert runs(modules) == [plain_module]
    assert importlib.import_module(plain_module).VALUE == 42  # the real module now


def test_the_served_override_marks_and_returns_as_typing_extensions_does() -> None:
    import typing_extensions

    served = startup.SERVED["typing_extensions"]["override"]

    class Base:
        def method(self) -> None: ...

    for decorate in (typing_extensions.override, served):
        marked = decorate(Base.method)
        assert marked is Base.method and marked.__override__ is True  # type: ignore[attr-defined]
        unmarkable: Any = 1
        assert decorate(unmarkable) == 1  # what cannot take the mark comes back as it is


def test_the_served_getfullargspec_answers_as_inspect_does() -> None:
    import inspect

    served = startup.SERVED["inspect"]["getfullargspec"]

    def sample(a: int, b: str = "x", *rest: int, key: bool, **more: str) -> None: ...

    assert served(sample) == inspect.getfullargspec(sample)
    with pytest.raises(TypeError):
        served(42)  # what inspect refuses is refused alike


def test_setattr_on_the_stand_in_reaches_the_real_module(modules: str) -> None:
    startup.install((modules,))
    module = importlib.import_module(modules)
    setattr(module, "PATCHED", "yes")  # noqa: B010 - through the stand-in, as code would
    assert sys.modules[modules].PATCHED == "yes"
    assert module.PATCHED == "yes"


def test_a_missing_module_still_fails_at_import(modules: str) -> None:
    missing = modules + "_absent"
    startup.install((missing,))
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module(missing)
    startup._FINDER.pending.discard(missing)


def test_concurrent_first_use_runs_the_module_once(modules: str) -> None:
    startup.install((modules,))
    module = importlib.import_module(modules)
    barrier = threading.Barrier(8)
    seen: list[int] = []

    def use() -> None:
        barrier.wait()
        seen.append(module.VALUE)

    threads = [threading.Thread(target=use) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert seen == [42] * 8
    assert runs(modules) == [modules]


def test_eager_env_turns_the_deferral_off(modules: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(startup.EAGER_ENV, "1")
    startup.install((modules,))
    module = importlib.import_module(modules)
    assert not isinstance(module, startup.DeferredModule)
    assert runs(modules) == [modules]


def test_an_already_loaded_module_is_left_alone(modules: str) -> None:
    real = importlib.import_module(modules)
    startup.install((modules,))
    assert modules not in startup._FINDER.pending
    assert importlib.import_module(modules) is real


# --- through the real entry point -------------------------------------------------------


def imported(log: str) -> list[str]:
    """Module names from ``-X importtime`` lines, in import order."""
    return [
        line.rsplit("|", 1)[1].strip()
        for line in stderr_lines(log)
        if line.startswith("import time:") and "|" in line and "cumulative" not in line
    ]


def serve_and_call(
    tmp_path: Path, vmi: bytes, domain: bytes, **env: str
) -> tuple[list[str], bytes]:
    """Info, OnDefineDomain, MutateDomain, Shutdown; the modules imported, and the reply."""
    variables: dict[str, Any] = {"QAT0": "0000:3d:02.2", "PYTHONPROFILEIMPORTTIME": "1", **env}
    server = start_server(tmp_path, plugin=True, **variables)
    try:
        with server.channel() as channel:
            info_pb2_grpc.InfoStub(channel).Info(info_pb2.InfoParams(), timeout=10)
        with server.channel() as channel:
            reply = v1alpha3_pb2_grpc.CallbacksStub(channel).OnDefineDomain(
                v1alpha3_pb2.OnDefineDomainParams(domainXML=domain, vmi=vmi), timeout=10
            )
        assert reply.domainXML
        with server.channel(plugin=True) as channel:
            mutated = plugins_v1alpha1_pb2_grpc.DomainHookServiceStub(channel).MutateDomain(
                plugins_v1alpha1_pb2.MutateDomainRequest(
                    domain_type="libvirt", domain=domain, vmi=vmi
                ),
                timeout=10,
            )
        assert mutated.domain == reply.domainXML
        with server.channel() as channel:
            v1alpha3_pb2_grpc.CallbacksStub(channel).Shutdown(
                v1alpha3_pb2.ShutdownParams(), timeout=10
            )
        assert server.process.wait(10) == 0
    finally:
        server.stop()
    return imported(server.log_path.read_text()), reply.domainXML


def test_serving_loads_neither_asyncio_ssl_nor_grpc_aio(
    tmp_path: Path, domain_xml: bytes, vmi_json: bytes
) -> None:
    names, _ = serve_and_call(tmp_path, vmi_json, domain_xml)
    assert "grpc._cython.cygrpc" in names  # the import log is really being read
    assert "lxml.etree" in names  # this VMI asks for a VF: the transform ran
    assert [name for name in NEVER_LOADED if name in names] == []
    assert [name for name in NEVER_LOADED_TWICE if names.count(name) > 1] == []


def test_the_serving_modules_leave_them_unloaded() -> None:
    """What runs before the socket answers (serve's modules, and grpc's server module, which
    ``grpc.server()`` imports) loads none of NEVER_LOADED_TWICE, nor inspect's ast and dis."""
    names = (*NEVER_LOADED_TWICE, "ast", "dis")
    code = (
        "from hook_sidecar import startup\n"
        "startup.install()\n"
        "import hook_sidecar.cli, hook_sidecar.server, grpc._server\n"
        f"for name in {names!r}:\n"
        "    print(name, startup.loaded(name))\n"
    )
    # python -S, as the image runs it: site's editable-install finder would import pathlib first.
    path = f"{ROOT}{os.pathsep}{sysconfig.get_paths()['purelib']}"
    proc = subprocess.run(
        [sys.executable, "-S", "-c", code],
        capture_output=True,
        text=True,
        env=clean_env(PYTHONPATH=path),
        check=True,
    )
    assert proc.stdout.split("\n")[:-1] == [f"{name} False" for name in names]


def test_the_check_sees_them_when_the_deferral_is_off(
    tmp_path: Path, domain_xml: bytes, vmi_json: bytes
) -> None:
    names, _ = serve_and_call(tmp_path, vmi_json, domain_xml, **{startup.EAGER_ENV: "1"})
    assert {"asyncio.base_events", "ssl", "grpc.aio._server"} <= set(names)
    assert [names.count(name) for name in NEVER_LOADED_TWICE] == [1] * len(NEVER_LOADED_TWICE)


def test_a_vmi_that_asks_for_nothing_never_loads_lxml_without_the_warm_up(
    tmp_path: Path, domain_xml: bytes, vmi: dict[str, Any]
) -> None:
    """With ``--warm-up off``, lxml loads only for a VMI that wants a VF.

    The warm-up is on by default (see the next test): the sidecar is attached only to
    VMs that want a VF, so nearly every copy loads lxml on its first call anyway, and
    loading it after the ready line, in the background, takes it off that call.
    """
    for section in ("limits", "requests"):
        vmi["spec"]["domain"]["resources"][section].pop("qat.intel.com/generic")
    names, _ = serve_and_call(
        tmp_path, json.dumps(vmi).encode(), domain_xml, QAT_HOOK_WARM_UP="off"
    )
    assert "hook_sidecar.hook" in names
    assert not [name for name in names if name.startswith("lxml")]
    assert [name for name in NEVER_LOADED if name in names] == []


def test_the_image_s_optimisation_level_serves_the_same_answer(
    tmp_path: Path, domain_xml: bytes, vmi_json: bytes
) -> None:
    # The image runs with PYTHONOPTIMIZE=2: no asserts, no docstrings.
    (tmp_path / "plain").mkdir()
    (tmp_path / "oo").mkdir()
    _, plain = serve_and_call(tmp_path / "plain", vmi_json, domain_xml)
    names, optimised = serve_and_call(tmp_path / "oo", vmi_json, domain_xml, PYTHONOPTIMIZE="2")
    assert b"ua-qat-0" in plain
    assert optimised == plain
    assert "lxml.etree" in names


def test_the_warm_up_loads_the_transform_after_ready_and_before_the_first_call(
    tmp_path: Path, domain_xml: bytes, vmi_json: bytes
) -> None:
    """The hook (with discovery and the VMI reader), lxml and the transform load after the
    ready line, and the first call imports nothing.

    So neither the socket nor Info waits for them, and virt-launcher's first
    OnDefineDomain (which comes after its 300 ms socket scan and Info) finds them loaded.
    """
    # The text log format writes to fd 2 directly, in the order of events, as the import
    # log does (the JSON format re-emits fd 2 through a thread, in its own time).
    server = start_server(
        tmp_path,
        QAT0="0000:3d:02.2",
        PYTHONPROFILEIMPORTTIME="1",
        QAT_HOOK_LOG_LEVEL="debug",
        QAT_HOOK_LOG_FORMAT="text",
    )
    try:
        with server.channel() as channel:  # as virt-launcher: Info first; the warm-up follows
            info_pb2_grpc.InfoStub(channel).Info(info_pb2.InfoParams(), timeout=10)
        server.wait_for_log("warm-up: loaded hook_sidecar.hook, hook_sidecar.transform")
        before_call = stderr_lines("\n".join(server.log_lines()))
        ready = next(i for i, line in enumerate(before_call) if "ready: serving on" in line)
        warmed = imported("\n".join(before_call[ready:]))
        after_ready = {"lxml.etree", "hook_sidecar.transform", "hook_sidecar.hook"}
        after_ready |= {"hook_sidecar.discovery", "hook_sidecar.vmi", "hook_sidecar.dra"}
        assert after_ready <= set(warmed)
        assert after_ready.isdisjoint(imported("\n".join(before_call[:ready])))
        # numa (guest NUMA placement) loads only for a domain with guest NUMA cells.
        assert "hook_sidecar.numa" not in warmed
        with server.channel() as channel:
            reply = v1alpha3_pb2_grpc.CallbacksStub(channel).OnDefineDomain(
                v1alpha3_pb2.OnDefineDomainParams(domainXML=domain_xml, vmi=vmi_json), timeout=10
            )
        assert b"ua-qat-0" in reply.domainXML
        server.wait_for_log("OnDefineDomain: injected 1 device(s)")
        after = stderr_lines("\n".join(server.log_lines()))[len(before_call) :]
        assert imported("\n".join(after)) == []
    finally:
        server.stop()
