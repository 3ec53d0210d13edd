"""The dependency rule (docs/decisions.md), enforced by walking every module's imports."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ENGINE = Path(__file__).resolve().parent.parent / "engine"
STDLIB = set(sys.stdlib_module_names)
NO_IO = {"asyncio", "aiohttp", "socket", "selectors", "uvloop"}

# module -> third-party / engine modules it may import (stdlib is always allowed, except NO_IO)
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "_flat": set(),
    "sse": {"errors", "typing_extensions"},  # a TypeVar with a default, before Python 3.13
    "_compiled": {"engine"},  # decides, before anything else loads, which path is loaded
    "build": {"_compiled", "mypyc", "setuptools"},  # `python -m engine.build`
    "events": {"sse", "errors", "_flat", "orjson"},
    "handlers": {"events", "errors", "assembly", "orjson"},
    "limits": {"asyncio"},  # async acquire helpers; still no network I/O
    "redaction": set(),
    "runtime": {"errors", "asyncio", "uvloop"},  # the commands' process, not the library
    "merge": set(),
    "choices": {"events"},
    "assembly": {"events", "errors", "_flat", "merge", "choices"},
    "chunks": {"_flat", "asyncio"},
    "config": set(),
    "retry": {"errors", "limits", "config"},
    "preflight": {"errors", "retry", "asyncio"},
    "content_encoding": {"errors"},
    "result": {"choices", "events"},  # annotations only
    "bodies": {"events"},
    "network": {"errors"},
    "transport": {"config", "errors", "limits", "redaction", "aiohttp", "orjson", "asyncio"},
    "attempt": {
        "chunks",
        "content_encoding",
        "errors",
        "events",
        "_flat",
        "redaction",
        "transport",
        "aiohttp",
        "orjson",
        "asyncio",
    },  # never the client: the reader takes plain arguments
    "client": {
        "_flat",
        "result",
        "sse",
        "events",
        "errors",
        "handlers",
        "assembly",
        "attempt",
        "chunks",
        "retry",
        "redaction",
        "config",
        "network",
        "transport",
        "aiohttp",
        "orjson",
        "asyncio",
    },
}
# packages: every module of the package may import only these (plus stdlib, itself)
PACKAGE_ALLOWED: dict[str, set[str]] = {
    "batch": {
        "client",
        "handlers",
        "limits",
        "events",
        "errors",
        "retry",
        "preflight",
        "network",
        "config",
        "result",
        "runtime",
        "orjson",
        "rich",
        "asyncio",
        "uvloop",
    },
    "loadtest": {
        "client",
        "handlers",
        "limits",
        "events",
        "errors",
        "redaction",
        "config",
        "network",
        "result",
        "bodies",
        "retry",
        "preflight",
        "runtime",
        "prometheus_client",
        "orjson",
        "numpy",
        "asyncio",
        "uvloop",
        "aiohttp",  # servermetrics' plain GET of /metrics (the engine streams POSTs only)
        "tokenizers",  # --tokenizer only (the workloads extra), imported when asked for
    },
    # The views: a function of what loadtest produced; loadtest (no rendering) never imports it.
    "report": {"loadtest", "rich", "plotly", "numpy"},
    "distributed": {"batch", "loadtest", "limits", "errors", "runtime", "orjson", "ray", "asyncio"},
}
# `python -m engine.<package>` is the CLI's verb (the CLI hands `--ray` to
# engine.distributed: no package imports it back).
GLUE_EXTRA = {"__main__.py": {"cli"}}
MUST_NOT_IO = {
    "sse",
    "events",
    "limits",
    "handlers",
    "assembly",
    "merge",
    "choices",
    "retry",
    "_flat",
    "content_encoding",
}


def imported_names(path: Path) -> set[str]:
    """Top-level names imported by a module (`engine.x` counts as `x`)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            mods = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module == "engine" and node.level == 0:
            mods = [f"engine.{alias.name}" for alias in node.names]  # from engine import _flat
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            mods = [node.module]
        else:
            continue
        for mod in mods:
            parts = mod.split(".")
            names.add(parts[1] if parts[0] == "engine" and len(parts) > 1 else parts[0])
    return names - {"__future__"}


@pytest.mark.parametrize("module", sorted(ALLOWED))
def test_module_imports_only_what_it_may(module: str) -> None:
    names = imported_names(ENGINE / f"{module}.py")
    extra = names - (STDLIB - NO_IO) - ALLOWED[module]
    assert not extra, f"engine/{module}.py imports {sorted(extra)}"


@pytest.mark.parametrize("module", sorted(MUST_NOT_IO))
def test_core_modules_do_no_io(module: str) -> None:
    names = imported_names(ENGINE / f"{module}.py")
    assert not (names & (NO_IO - ALLOWED[module]))


@pytest.mark.parametrize("package", sorted(PACKAGE_ALLOWED))
def test_package_imports_only_what_it_may(package: str) -> None:
    for path in sorted((ENGINE / package).glob("*.py")):
        allowed = PACKAGE_ALLOWED[package] | GLUE_EXTRA.get(path.name, set()) | {package}
        extra = imported_names(path) - STDLIB - allowed
        assert not extra, f"engine/{package}/{path.name} imports {sorted(extra)}"


def test_mock_never_shares_code_with_the_client() -> None:
    for path in (ENGINE / "mock").glob("*.py"):
        names = imported_names(path)
        assert not names & {"sse", "events", "client", "handlers"}, path.name


def test_nothing_imports_cli() -> None:
    """engine/cli/ is every command's face; only `python -m` entry points reach into it."""
    for path in ENGINE.rglob("*.py"):
        if path.parent.name != "cli" and path.name != "__main__.py":
            assert "cli" not in imported_names(path), path


def test_only_the_report_imports_plotly_and_only_in_one_module() -> None:
    """One look and one bundle for every page: engine/report/figures.py is Plotly's door."""
    for path in ENGINE.rglob("*.py"):
        if path != ENGINE / "report" / "figures.py":
            assert "plotly" not in imported_names(path), path


def test_only_the_server_metrics_scraper_speaks_aiohttp_in_the_load_tester() -> None:
    """The load goes through the engine (its pool, its stamps), never aiohttp directly."""
    for path in (ENGINE / "loadtest").glob("*.py"):
        if path.name != "servermetrics.py":
            assert "aiohttp" not in imported_names(path), path


def test_only_the_distributed_package_imports_ray() -> None:
    for path in ENGINE.rglob("*.py"):
        if path.parent.name != "distributed":
            assert "ray" not in imported_names(path), path


def _engine_imports(path: Path, *, typing: bool) -> set[str]:
    """The engine modules a module imports (anywhere in it, functions included), with or
    without its `if TYPE_CHECKING:` blocks (which annotations need and Python never runs)."""
    tree = ast.parse(path.read_text())
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if (
            not typing
            and isinstance(node, ast.If)
            and isinstance(node.test, ast.Name)
            and node.test.id == "TYPE_CHECKING"
        ):
            skipped.update(id(child) for child in ast.walk(node))
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name.startswith("engine.")}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ENGINE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _unit(module: str) -> str:
    """A module's package (`engine.batch.runner` -> `engine.batch`), or the module itself."""
    parts = module.split(".")
    return ".".join(parts[:2])


@pytest.mark.parametrize("typing", [False, True], ids=["at-run-time", "with-type-checking"])
@pytest.mark.parametrize("level", ["module", "package"])
def test_no_import_cycles(level: str, typing: bool) -> None:
    """No module, and no package, reaches itself through what it imports, type-checking
    imports included: the layers point one way."""
    modules = {_module_name(p): p for p in ENGINE.rglob("*.py") if p.name != "__main__.py"}
    unit = _unit if level == "package" else str
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = {unit(m) for m in _engine_imports(path, typing=typing) if m in modules}
        graph.setdefault(unit(name), set()).update(targets - {unit(name)})
    done: set[str] = set()

    def visit(name: str, trail: list[str]) -> None:
        if name in trail:
            cycle = [*trail[trail.index(name) :], name]
            raise AssertionError("import cycle: " + " -> ".join(cycle))
        if name in done:
            return
        for target in sorted(graph[name]):
            visit(target, [*trail, name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])


TOOLS_LIBRARIES = ("rich", "numpy", "plotly", "prometheus_client")
# The `cli` extra, as if not installed: an import of any of them raises ImportError.
WITHOUT_EXTRA = (
    "import sys\n"
    f"for name in {TOOLS_LIBRARIES!r}:\n"
    "    sys.modules[name] = None\n"
    "from engine.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def _python(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ENGINE.parent)}
    env.pop("OPENAI_BASE_URL", None)
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=env, timeout=60, check=False
    )


def test_importing_the_library_loads_none_of_the_tools_libraries() -> None:
    proc = _python(
        "-c", f"import sys, engine; print([m for m in {TOOLS_LIBRARIES!r} if m in sys.modules])"
    )
    assert proc.stdout.strip() == "[]", proc.stderr


def test_without_the_cli_extra_a_tool_says_the_pip_line_and_run_works(
    tmp_path: Path, base_url: str
) -> None:
    for verb in (["bench", "--duration", "1"], ["compare", "a.json", "b.json"]):
        proc = _python("-c", WITHOUT_EXTRA, *verb)
        assert proc.returncode == 2
        assert "pip install 'stream-engine[cli]'" in proc.stderr
        assert "Traceback" not in proc.stderr
    run = _python("-c", WITHOUT_EXTRA, "run", "--base-url", base_url, "Hi")
    assert run.returncode == 0, run.stderr
    (tmp_path / "in.jsonl").write_text('{"model": "m", "input": "hi"}\n')
    batch = _python(
        "-c",
        WITHOUT_EXTRA,
        "batch",
        str(tmp_path / "in.jsonl"),
        "-o",
        str(tmp_path / "out.jsonl"),
        "--base-url",
        base_url,
    )
    assert batch.returncode == 0, batch.stderr
    assert "1 succeeded" in batch.stderr
