"""Wheels with the compiled hot path (docs/compiled.md): hatchling's build hook, off by default.

    HATCH_BUILD_HOOK_ENABLE_CUSTOM=true python -m build --wheel   # or cibuildwheel, in CI

compiles the hot modules with mypyc (`engine.build.compile_to`) and puts the extension modules
and their manifest beside the sources in a platform wheel. Without the variable (`pip install
-e .`, `pip install .`, an sdist) nothing is compiled and no compiler is needed.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


class CompiledHotPath(BuildHookInterface):  # type: ignore[misc] # untyped base (hatchling)
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name != "wheel" or version == "editable":
            return  # an editable install builds in place: python -m engine.build
        sys.path.insert(0, self.root)
        from engine.build import compile_to  # noqa: PLC0415 - the project's own, on its path

        self._out = tempfile.TemporaryDirectory(prefix="stream-engine-wheel-")
        for path in compile_to(Path(self._out.name), Path(self.root)):
            build_data["force_include"][str(path)] = f"engine/{path.name}"
        build_data["pure_python"] = False
        build_data["infer_tag"] = True  # cp311-cp311-<platform>

    def finalize(self, *_args: object) -> None:  # (version, build_data, artifact_path)
        out = getattr(self, "_out", None)
        if out is not None:
            out.cleanup()
