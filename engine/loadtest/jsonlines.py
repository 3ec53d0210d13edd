"""JSON Lines as the load's input files are read: one place for the rule that a blank line is
skipped and a bad one is a `ConfigError` naming the file and the line."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from engine.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator


def json_lines(lines: Iterable[bytes], name: str) -> Iterator[tuple[int, Any]]:
    """Each non-blank line's number (from 1) and its JSON value."""
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield number, orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise ConfigError(f"{name}:{number}: not JSON ({exc.msg})") from None
