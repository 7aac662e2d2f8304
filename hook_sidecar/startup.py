"""Start-up that loads only what a synchronous gRPC sidecar uses.

One copy of the sidecar runs beside every VM, so each module it imports is paid
for once per VM in private memory and start-up CPU. grpc's Cython core imports
``asyncio`` when it loads (asyncio pulls in ssl, subprocess, inspect and base64),
``grpc/__init__`` always imports ``grpc.aio``, and protobuf always imports its
pure-Python implementation, yet a sync server on protobuf's C core touches none
of them. Those names are *deferred*: their first import gets a stand-in module,
and the first time anything reads an attribute of the stand-in the real module
is imported and answers. No code path, foreseen or not, can see a missing
module: the deferral only moves a module's cost to its first use. Where an
importer takes just one name at load (grpc's server module typing_extensions'
``override``, lxml inspect's ``getfullargspec``), the stand-in answers that name
itself with the same behaviour (``SERVED``), and the module loads only when
something needs more of it.

The standard library's ``importlib.util.LazyLoader`` is not used: on Python 3.11 (the
image's) any second ``import name`` of a lazy module reads its ``__spec__`` and so loads
it. traceback, tokenize, token, linecache and socket are each imported by more than one
module, so with it they all load at every start (measured: +7% of the start-up's
instructions, +0.8 MiB), and its first use from two threads at once is unsafe before
Python 3.12.3. The stand-in here answers the import system's own attributes itself and
loads the real module under a lock.

The entry points that may serve (``qat-hook``, ``python -m hook_sidecar``) call
:func:`install` before anything imports grpc (``onDefineDomain``, the shim's script,
imports no grpc at all: ``hook_sidecar.shim``). ``QAT_HOOK_EAGER_IMPORTS=1``
turns the deferral off (for comparing against it, or as an escape hatch).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.machinery
import os
import sys
import types
from _thread import RLock
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from importlib.abc import Loader

# What a sync grpc server never uses. Only modules whose import has no side
# effect we rely on belong here: the stand-in runs none of the module's code.
# protobuf's descriptor_pool imports its pure-Python message implementation (with
# text_format, the codecs and the well-known types) even when the C (upb) one runs.
# traceback is needed only to format an exception, difflib only for `transform --diff`.
# urllib.parse (which pathlib and http import) imports ipaddress only to check a bracketed IPv6
# host in urlsplit, and protobuf's well_known_types imports calendar only to convert
# Timestamps: about 0.3 MiB and 1 ms of start-up that serving never uses. shutil
# (which argparse's help formatter imports) imports bz2 and lzma only to note that they
# exist: about 1 ms more. inspect (which lxml imports) imports tokenize, token
# and linecache for reading source files, and the server reaches kubelet's socket (and
# probes a stale socket of its own) only on a path that may never run: socket and
# selectors. grpc's Cython core imports inspect (with ast, dis...) and never reads it;
# lxml takes one function from it at load, which SERVED answers until it is called.
# grpc's Cython core also imports pkgutil (with importlib.util), only to read its bundled
# root certificates for TLS: the sidecar serves and calls over unix sockets without TLS.
# grpc's server module takes one name from typing_extensions, ``override`` (see SERVED),
# whose import would load inspect, ast and dis for a signature it reads at module level:
# about 6 ms of every start before the socket answers, and 0.4 MiB.
DEFERRED = (
    "asyncio",
    "grpc.aio",
    "google.protobuf.internal.python_message",
    "traceback",
    "difflib",
    "ipaddress",
    "calendar",
    "bz2",
    "lzma",
    "tokenize",
    "token",
    "linecache",
    "socket",
    "selectors",
    "inspect",
    "pkgutil",
    "typing_extensions",
)
EAGER_ENV = "QAT_HOOK_EAGER_IMPORTS"


def _override(method: Any) -> Any:
    """``typing_extensions.override`` as typing_extensions 4 defines it: marks, returns."""
    with contextlib.suppress(AttributeError, TypeError):
        method.__override__ = True
    return method


def _getfullargspec(func: Any) -> Any:
    """``inspect.getfullargspec``, loading inspect when it is first called."""
    return _real("inspect").getfullargspec(func)


SERVED: Mapping[str, Mapping[str, Any]] = {
    "typing_extensions": {"override": _override},
    "inspect": {"getfullargspec": _getfullargspec},
}
"""Attributes a stand-in answers itself, without loading its module, for the one name
each importer takes from it at load: grpc's server module ``override`` (applied to its
classes then, as typing_extensions applies it), lxml ``getfullargspec`` (called only for
XSLT extension functions, which the hook never registers; this one loads inspect and
answers as inspect would). Any other attribute loads the real module as usual."""


class DeferredModule(types.ModuleType):
    """Stands in for a module until something reads one of its attributes.

    Only attributes missing from the stand-in reach ``__getattr__``; the
    stand-in holds just what the import system itself reads (``__name__``,
    ``__spec__`` ...) and its ``SERVED`` names, so every other read, ``__file__``
    included, imports the real module and is answered by it from then on.
    ``__path__`` loads a package; a plain module has none, and says so unloaded.
    """

    def __init__(self, name: str) -> None:
        super().__init__(name)
        object.__setattr__(self, "_deferred_lock", RLock())
        object.__setattr__(self, "_deferred_real", None)
        # While the import system fills in __spec__, __path__... it probes with
        # getattr(module, name, None): answer "absent" instead of loading.
        object.__setattr__(self, "_deferred_initializing", True)

    def _deferred_load(self) -> types.ModuleType:
        with self._deferred_lock:
            real: types.ModuleType | None = self._deferred_real
            if real is None:
                _FINDER.release(self.__name__)
                if sys.modules.get(self.__name__) is self:
                    del sys.modules[self.__name__]
                # __import__, not importlib.import_module: -X importtime logs only the former,
                # so the real load shows as the name's second line in an import log.
                __import__(self.__name__)
                real = sys.modules[self.__name__]
                object.__setattr__(self, "_deferred_real", real)
            return real

    def __getattr__(self, name: str) -> Any:
        if self._deferred_initializing:
            raise AttributeError(name)
        spec = self.__spec__
        if name == "__path__" and spec is not None and not spec.loader_state:
            # ``from module import name`` asks whether it is a package; a plain module
            # is not, and saying so needs no load.
            raise AttributeError(name)
        return getattr(self._deferred_load(), name)

    def __setattr__(self, name: str, value: Any) -> None:
        # The import system sets __spec__, __loader__, __package__ on the stand-in
        # itself; anything else is meant for the real module.
        if self._deferred_real is None and name.startswith("__") and name.endswith("__"):
            object.__setattr__(self, name, value)
        else:
            setattr(self._deferred_load(), name, value)

    def __delattr__(self, name: str) -> None:
        delattr(self._deferred_load(), name)

    def __dir__(self) -> list[str]:
        return dir(self._deferred_load())

    def __repr__(self) -> str:
        state = "loaded" if self._deferred_real is not None else "deferred"
        return f"<module {self.__name__!r} ({state})>"


class _Loader:
    """The stand-in's loader (duck-typed: importlib.abc costs more to import than it saves)."""

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        return DeferredModule(spec.name)

    def exec_module(self, module: types.ModuleType) -> None:
        """Nothing runs now: the real module's code runs on first use."""
        for name, value in _FINDER.served.get(module.__name__, {}).items():
            object.__setattr__(module, name, value)
        object.__setattr__(module, "_deferred_initializing", False)


_LOADER = _Loader()


class _Finder:
    """Answers the first import of each deferred name with a stand-in."""

    def __init__(self) -> None:
        self.pending: set[str] = set()
        self.served: dict[str, Mapping[str, Any]] = {}

    def release(self, name: str) -> None:
        self.pending.discard(name)

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: types.ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self.pending:
            return None
        # Only a module that really exists is deferred; anything else fails now, as usual.
        real = importlib.machinery.PathFinder.find_spec(fullname, path)
        if real is None:
            return None
        spec = importlib.machinery.ModuleSpec(fullname, cast("Loader", _LOADER))
        # Whether the real module is a package. The stand-in has no __path__ of its own:
        # a submodule import asks for it and so loads the real package first.
        spec.loader_state = real.submodule_search_locations is not None
        return spec


_FINDER = _Finder()


def install(
    names: Sequence[str] = DEFERRED, served: Mapping[str, Mapping[str, Any]] = SERVED
) -> None:
    """Defer ``names`` for this process unless they are loaded already or eager is asked for.

    ``served``: attributes the stand-in of a module answers without loading it.
    """
    if os.environ.get(EAGER_ENV, "") not in ("", "0"):
        return
    _quiet_logging_task_names()
    _FINDER.pending.update(name for name in names if name not in sys.modules)
    _FINDER.served.update(served)
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)


def _quiet_logging_task_names() -> None:
    # Python 3.12+ LogRecord asks asyncio for the current task whenever asyncio is in
    # sys.modules, which would load the real asyncio on the first log line. This
    # process runs no asyncio tasks, so there is never a task name to record.
    if sys.version_info >= (3, 12):
        import logging

        logging.logAsyncioTasks = False


def _real(name: str) -> types.ModuleType:
    """The real module ``name``, imported now if only its stand-in is."""
    module = sys.modules.get(name)
    if isinstance(module, DeferredModule):
        return module._deferred_load()
    return importlib.import_module(name)


def loaded(name: str) -> bool:
    """Whether the real module ``name`` has been imported (a stand-in does not count)."""
    module = sys.modules.get(name)
    if isinstance(module, DeferredModule):
        return module._deferred_real is not None
    return module is not None


def main() -> int:
    """``qat-hook``: the CLI, with the deferral in place before anything imports grpc."""
    install()
    from hook_sidecar.cli import main as cli_main

    return cli_main()
