"""The docs name only what exists: every `engine/…` module or package they mention is there."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted(
    [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), ROOT / "benchmarks" / "README.md"]
)
# engine/x.py, engine/x/, engine/x/y.py (a path, not prose such as "the engine/handler pair")
PATH = re.compile(r"\bengine/[a-z_/]*[a-z_](?:\.py|/)")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_engine_path_a_doc_names_exists(doc: Path) -> None:
    missing = sorted({m for m in PATH.findall(doc.read_text()) if not (ROOT / m).exists()})
    assert not missing, f"{doc.name} names {missing}"
