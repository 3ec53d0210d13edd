"""The compiled hot path: which modules are built to C, and the switch that ignores the build.

The modules in `HOT` compile with mypyc from these same source files (`python -m engine.build`
puts the extension modules beside them); the .py files stay the reference. Python's import
system prefers an extension module to a source file, so a build is used as soon as it is there.
It is ignored, and every module loads from its source, when:

- `STREAM_ENGINE_PURE_PYTHON=1` is set (as aiohttp's `AIOHTTP_NO_EXTENSIONS`): CI runs the
  suite once compiled and once pure;
- the build is stale: a source changed since it was built (its manifest holds each source's
  hash). A warning says so; running old code silently would be worse than running slowly.

All or nothing: the compiled modules call each other directly, so a mix is never loaded.
`engine/__init__.py` imports this module before any other (importing it installs the switch),
and it is never compiled itself.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.machinery
import importlib.util
import json
import os
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Sequence
    from importlib.machinery import ModuleSpec
    from types import ModuleType

__all__ = [
    "HOT",
    "PURE_ENV",
    "compiled",
    "extension_modules",
    "install",
    "load_sources",
    "manifest",
    "pure_reason",
]

# The per-event path, in dependency order. Interpreted, and why (docs/compiled.md):
# `engine.errors`: its exception classes inherit from builtins (ValueError, TimeoutError),
# which mypyc's native classes cannot; `engine.attempt`, the reader's async shell (its
# per-chunk work is `SSEParser.feed`, `EventDecoder.scan` and `first_token`, all compiled):
# mypyc 2.4's coroutines leave an exception thrown into them (a failed read) as the one being
# handled, so an error raised after it carries a stale `__context__` (aiohttp's, and with it
# what the error must not show).
HOT: Final[tuple[str, ...]] = (
    "engine._flat",
    "engine.sse",
    "engine.events",
    "engine.merge",
    "engine.assembly",
    "engine.handlers",
    "engine.chunks",
)
PURE_ENV: Final = "STREAM_ENGINE_PURE_PYTHON"
MANIFEST: Final = "_compiled.json"  # written by engine.build beside the extension modules
HERE: Final = Path(__file__).resolve().parent


def source(module: str) -> Path:
    """The source file of a hot module."""
    return HERE / f"{module.rpartition('.')[2]}.py"


def manifest() -> dict[str, str]:
    """Each hot module's source hash, as the build must record it."""
    return {m: hashlib.sha256(source(m).read_bytes()).hexdigest() for m in HOT}


def extension_modules() -> list[Path]:
    """The extension modules in the package's folder (a build, current or not)."""
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    return [p for p in HERE.iterdir() if p.name.endswith(suffixes)]


def pure_reason() -> str | None:
    """Why the build is ignored, or None: no reason (a current build, or none at all)."""
    if os.environ.get(PURE_ENV, "") not in ("", "0"):
        return f"{PURE_ENV}={os.environ[PURE_ENV]}"
    if not extension_modules():
        return None
    try:
        recorded = json.loads((HERE / MANIFEST).read_text())["sources"]
    except (OSError, ValueError, KeyError, TypeError):
        return "stale build (no manifest)"
    if recorded != manifest():
        return "stale build (sources changed since it was built)"
    hot = {m.rpartition(".")[2] for m in HOT}
    if any(
        p.name.split(".", 1)[0] not in hot and "__mypyc" not in p.name for p in extension_modules()
    ):
        return "stale build (a module no longer compiled is built)"
    return None


class _SourcesFirst:
    """A meta-path finder that loads the engine's modules from their .py files."""

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,  # noqa: ARG002 - the finder protocol's
        target: ModuleType | None = None,  # noqa: ARG002
    ) -> ModuleSpec | None:
        # Any module of the package's top level, not only HOT: a leftover of an older build
        # (a module no longer compiled) must not load either.
        package = fullname.rpartition(".")[0]
        if package != "engine" or not source(fullname).is_file():
            return None
        return importlib.util.spec_from_file_location(fullname, source(fullname))


def install() -> None:
    """Before any hot module is imported: load them from source if the build is ignored."""
    reason = pure_reason()
    if reason is None or any(isinstance(f, _SourcesFirst) for f in sys.meta_path):
        return
    if reason.startswith("stale"):
        warnings.warn(
            f"stream-engine: the compiled modules are a {reason}; running pure Python. "
            "Rebuild with `python -m engine.build`, or remove them with "
            "`python -m engine.build --clean`.",
            RuntimeWarning,
            stacklevel=3,
        )
    sys.meta_path.insert(0, _SourcesFirst())


def compiled() -> bool:
    """Whether the hot path runs compiled: every hot module loaded from its extension."""
    extension = importlib.machinery.ExtensionFileLoader
    return all(isinstance(getattr(sys.modules.get(m), "__loader__", None), extension) for m in HOT)


def load_sources(*names: str) -> dict[str, ModuleType]:
    """Fresh copies of hot modules loaded from their sources, beside the ones imported (which
    stay in `sys.modules`): the benchmarks time both paths in one process. Each copy imports
    the source copies of the hot modules it uses."""
    import engine  # noqa: PLC0415 - the package is initialised by now

    saved = {m: sys.modules.pop(m) for m in HOT if m in sys.modules}
    attrs = {m: getattr(engine, m.rpartition(".")[2]) for m in saved}
    finder = _SourcesFirst()
    sys.meta_path.insert(0, finder)
    try:
        return {name: importlib.import_module(name) for name in names}
    finally:
        sys.meta_path.remove(finder)
        for m in HOT:
            sys.modules.pop(m, None)
        sys.modules.update(saved)
        for m, module in attrs.items():
            setattr(engine, m.rpartition(".")[2], module)


install()
