"""The compiled hot path (engine/_compiled.py, `python -m engine.build`): which path loads, the
switch that forces pure Python, a stale build ignored, and both paths agreeing byte for byte.

The whole suite runs twice in CI, once on each path; these tests hold on either.
"""

from __future__ import annotations

import copy
import importlib.machinery
import itertools
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

import engine
from engine import _compiled
from engine.cli import version_line
from engine.sse import SSEParser

ROOT = Path(__file__).resolve().parent.parent
SUFFIXES = tuple(importlib.machinery.EXTENSION_SUFFIXES)
PURE = {"STREAM_ENGINE_PURE_PYTHON": "1"}


def _python(code: str, env: dict[str, str] | None = None, root: Path = ROOT) -> str:
    """Run `code` in a fresh interpreter on `root`'s engine, the switch unset unless `env`
    sets it; its stdout and stderr."""
    full = {k: v for k, v in os.environ.items() if k != "STREAM_ENGINE_PURE_PYTHON"}
    full |= {"PYTHONPATH": str(root), **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-W", "default", "-c", code],
        capture_output=True,
        text=True,
        env=full,
        cwd=root,  # `-c` puts the working directory first on the path
        timeout=60,
        check=True,
    )
    return proc.stdout + proc.stderr


def test_the_path_loaded_is_all_compiled_or_all_pure() -> None:
    files = [sys.modules[m].__file__ or "" for m in _compiled.HOT]
    if engine.COMPILED:
        assert all(f.endswith(SUFFIXES) for f in files)
    else:
        assert all(f.endswith(".py") for f in files), files
    if os.environ.get("STREAM_ENGINE_PURE_PYTHON", "") not in ("", "0"):
        assert not engine.COMPILED


def test_the_environment_variable_loads_every_module_from_source() -> None:
    out = _python(
        "import sys, engine, engine.attempt\n"
        "print(engine.COMPILED, sorted(m.__file__.rsplit('.', 1)[1] for n, m in sys.modules.items()"
        " if n.startswith('engine.') and getattr(m, '__file__', None)))",
        env=PURE,
    )
    assert out.startswith("False ['py'"), out
    assert "so'" not in out


def test_version_says_which_path_is_loaded() -> None:
    line = version_line()
    assert line.startswith(f"stream-engine {engine.__version__} (compiled: ")
    assert ("compiled: yes" in line) == engine.COMPILED
    forced = _python("from engine.cli import version_line; print(version_line())", env=PURE)
    built = bool(_compiled.extension_modules())
    assert ("(compiled: no, STREAM_ENGINE_PURE_PYTHON=1)" if built else "(compiled: no)") in forced


def _package_copy(tmp_path: Path) -> Path:
    """The engine package's sources in a temporary root, without any build."""
    shutil.copytree(
        ROOT / "engine",
        tmp_path / "engine",
        ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.pyd", "_compiled.json"),
    )
    return tmp_path


def test_a_stale_build_is_ignored_with_a_warning(tmp_path: Path) -> None:
    root = _package_copy(tmp_path)
    # Not an extension module at all: importing it would fail, so it must not be imported.
    (root / "engine" / f"sse{importlib.machinery.EXTENSION_SUFFIXES[0]}").write_bytes(b"junk")
    sources = dict.fromkeys(_compiled.HOT, "0" * 64)
    (root / "engine" / "_compiled.json").write_text(json.dumps({"sources": sources}))
    out = _python("import engine; print('loaded', engine.COMPILED, engine.sse.__file__)", root=root)
    assert "stale build (sources changed since it was built)" in out
    assert "python -m engine.build" in out
    assert f"loaded False {root / 'engine' / 'sse.py'}" in out


def test_a_module_no_longer_compiled_is_never_loaded_from_an_old_build(tmp_path: Path) -> None:
    root = _package_copy(tmp_path)
    (root / "engine" / f"attempt{importlib.machinery.EXTENSION_SUFFIXES[0]}").write_bytes(b"x")
    manifest = {"sources": _compiled.manifest()}  # the copy's sources are these
    (root / "engine" / "_compiled.json").write_text(json.dumps(manifest))
    out = _python("import engine.attempt as a; print('loaded', a.__file__)", root=root)
    assert "a module no longer compiled is built" in out
    assert f"loaded {root / 'engine' / 'attempt.py'}" in out


def test_no_build_no_warning(tmp_path: Path) -> None:
    root = _package_copy(tmp_path)
    out = _python("import engine; print('loaded', engine.COMPILED)", root=root)
    assert out.strip() == "loaded False"


NO_MYPYC = (
    "import sys; sys.modules['mypyc'] = None; from engine.build import main; sys.exit(main([]))"
)


def test_the_build_without_mypyc_says_the_pip_line() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            NO_MYPYC,
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert "pip install 'stream-engine[compile]'" in proc.stderr


# --- both paths, one process: the source copy against what is loaded ---------------------

PURE_SSE = _compiled.load_sources("engine.sse")["engine.sse"]
ATOMS = [b"data:", b"data: ", b"event: ", b"id: ", b"retry: ", b":", b"error: ", b"x", b"\xc3"]
ATOMS += [b"\r", b"\n", b"\r\n", b"\xef\xbb\xbf", b"\0", b"7", b"message", b"[DONE]"]


def test_load_sources_gives_source_copies_and_leaves_the_loaded_ones() -> None:
    assert PURE_SSE.__file__ == str(ROOT / "engine" / "sse.py")
    assert sys.modules["engine.sse"] is engine.sse
    assert engine.SSEParser is SSEParser
    assert PURE_SSE.SSEParser is not SSEParser


def _messages(module: object, chunks: list[bytes], *, flat: bool) -> list[object]:
    parser = module.SSEParser(64, factory=None) if flat else module.SSEParser(64)  # type: ignore[attr-defined]
    out: list[object] = []
    try:
        for chunk in chunks:
            out += [m if flat else (m.raw, m.event, m.id) for m in parser.feed(chunk)]
        parser.close()
    except engine.ProtocolError as exc:
        out.append(("ProtocolError", exc.offset))
    return [*out, parser.last_event_id, parser.retry, parser.partial_discarded]


@settings(derandomize=True, max_examples=300)
@given(
    atoms=st.lists(st.sampled_from(ATOMS), max_size=60),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=8),
    flat=st.booleans(),
)
def test_compiled_and_pure_parsers_agree(atoms: list[bytes], cuts: list[int], flat: bool) -> None:
    raw = b"".join(atoms)
    edges = sorted({0, len(raw), *(c for c in cuts if c < len(raw))})
    chunks = [raw[a:b] for a, b in itertools.pairwise(edges)]
    assert _messages(engine.sse, chunks, flat=flat) == _messages(PURE_SSE, chunks, flat=flat)


def _samples(events: object, sse: object, handlers: object) -> list[object]:
    event = events.StreamEvent(b'{"type":"x","delta":"hi"}', "response.output_text.delta", "7", 9)  # type: ignore[attr-defined]
    _ = event.text_delta, event.data  # cached and decoded: kept through a copy
    return [
        sse.SSEMessage(b"a", "e", "1"),  # type: ignore[attr-defined]
        events.Delta("tool_call", "{", 1, call_index=0, name="f"),  # type: ignore[attr-defined]
        events.Ending("incomplete", "max_output_tokens", "length"),  # type: ignore[attr-defined]
        events.Usage(1, 2, 3),  # type: ignore[attr-defined]
        event,
        handlers.Callback(print, types=["a"]),  # type: ignore[attr-defined]
    ]


def _view(obj: object) -> object:
    """What a copy must keep (StreamEvent and Callback have no __eq__)."""
    if type(obj).__name__ == "StreamEvent":
        return (obj.raw, obj.type, obj.id, obj.received_ns, obj.decoded, obj.text_delta)  # type: ignore[attr-defined]
    if type(obj).__name__ == "Callback":
        return (obj.fn, obj.types, obj.kinds, obj.is_async)  # type: ignore[attr-defined]
    return obj


def test_values_pickle_and_copy_alike_on_both_paths() -> None:
    """Compiled, unpickling calls a class with no argument: the ones that need arguments say
    how they are rebuilt (`__reduce__`), so pickle and copy behave as on the pure path. Pickle
    finds a class by its module's name, so it runs on the loaded modules only (the suite's
    pure run covers the other path); copies run on both."""
    pure = _compiled.load_sources("engine.events", "engine.sse", "engine.handlers")
    loaded = (engine.events, engine.sse, engine.handlers)
    sources = (pure["engine.events"], pure["engine.sse"], pure["engine.handlers"])
    for modules in (loaded, sources):
        for obj in _samples(*modules):
            copies = [copy.copy(obj), copy.deepcopy(obj)]
            if modules is loaded:
                copies.append(pickle.loads(pickle.dumps(obj)))  # noqa: S301 - our own bytes
            for copied in copies:
                assert type(copied) is type(obj)
                assert _view(copied) == _view(obj)
