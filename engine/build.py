"""Build the hot path to C with mypyc, in place: `python -m engine.build` (or `--clean`).

Needs mypy (which brings mypyc: `pip install 'stream-engine[compile]'`), a C compiler and the
Python headers. The extension modules land beside their sources (engine/*.so, with the shared
library `engine/_hot__mypyc*.so`) with a manifest of the sources' hashes, so an editable
install picks them up; `stream-engine --version` then says `compiled: yes`. Each file is built
in a temporary directory and moved into place: a process that has the old build loaded keeps
its copy. `compile_to` builds the wheels' copies (hatch_build.py).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from engine._compiled import HERE, HOT, MANIFEST, extension_modules, manifest, source

__all__ = ["GROUP", "build", "clean", "compile_to", "extensions", "main"]

GROUP = "engine._hot"  # the shared library: engine/_hot__mypyc.<abi>.so
ROOT = HERE.parent


def extensions(root: Path, target_dir: Path, opt_level: str = "3") -> list[Any]:
    """The setuptools Extensions of the hot modules, their C written in `target_dir` (mypyc
    type-checks with pyproject's [tool.mypy]: call it from the project root)."""
    from mypyc.build import mypycify  # noqa: PLC0415 - only where a build is asked for

    paths = [str(source(m).relative_to(root)) for m in HOT]
    return list(mypycify(paths, opt_level=opt_level, group_name=GROUP, target_dir=str(target_dir)))


def _outputs() -> list[Path]:
    """What a build leaves in the package: extension modules and the manifest."""
    found = extension_modules()
    return [*found, HERE / MANIFEST] if (HERE / MANIFEST).exists() else found


def clean() -> list[Path]:
    """Remove a build: the hot path is pure Python again."""
    removed = _outputs()
    for path in removed:
        path.unlink()
    return removed


def compile_to(out: Path, root: Path = ROOT, opt_level: str = "3") -> list[Path]:
    """Compile the hot modules into `out` (`out/engine/*.so` and the manifest); returns the
    files, for `build` to place beside their sources or a wheel to carry (hatch_build.py)."""
    from setuptools import Distribution  # noqa: PLC0415 - a build-time dependency

    hashes = manifest()  # of the sources compiled, read before the build starts
    cwd = Path.cwd()
    with tempfile.TemporaryDirectory(prefix="stream-engine-build-") as tmp:
        os.chdir(root)  # mypyc reads ./pyproject.toml
        try:
            exts = extensions(root, Path(tmp, "c"), opt_level)
            args = ["build_ext", "-b", str(out), "-t", str(Path(tmp, "temp"))]
            dist = Distribution(
                {"name": "stream-engine-hot", "ext_modules": exts, "script_args": args}
            )
            dist.parse_command_line()
            dist.run_commands()
        finally:
            os.chdir(cwd)
    built = sorted(p for p in (out / "engine").iterdir() if p.name.endswith((".so", ".pyd")))
    record = {"sources": hashes, "python": sys.version.split()[0]}
    (out / "engine" / MANIFEST).write_text(json.dumps(record, indent=1) + "\n")
    return [*built, out / "engine" / MANIFEST]


def build(root: Path = ROOT, opt_level: str = "3") -> list[Path]:
    """Compile the hot modules and move them beside their sources; returns what was placed."""
    with tempfile.TemporaryDirectory(prefix="stream-engine-out-") as tmp:
        built = compile_to(Path(tmp), root, opt_level)
        clean()  # a module no longer compiled leaves nothing behind
        placed = []
        for path in built:
            target = HERE / path.name
            fresh = target.with_name(target.name + ".new")
            shutil.copy2(path, fresh)
            fresh.replace(target)  # a new inode: a process running the old one keeps it
            placed.append(target)
    return placed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m engine.build", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--clean", action="store_true", help="remove the build (pure Python)")
    parser.add_argument("--opt-level", default="3", help="the C compiler's -O level (default 3)")
    args = parser.parse_args(argv)
    if args.clean:
        for path in clean():
            print(f"removed {path.relative_to(ROOT)}")
        return 0
    try:
        import mypyc  # noqa: F401, PLC0415
    except ImportError:
        print("the build needs mypyc: pip install 'stream-engine[compile]'", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    try:
        placed = build(opt_level=args.opt_level)
    except (SystemExit, Exception) as exc:  # mypyc reports type errors by SystemExit
        print(f"the build failed: {exc!r}; the hot path stays pure Python", file=sys.stderr)
        return 1
    for path in placed:
        print(f"built {path.relative_to(ROOT)}")
    print(f"compiled {len(HOT)} modules in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
