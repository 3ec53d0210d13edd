"""Deltas merged as openai-python merges them, and the compact text they build.

`merge` is the SDK's `accumulate_delta` (`openai/lib/streaming/_deltas.py`), the rule by
which its chat helper turns a choice's deltas into the final message: a key seen for the
first time is taken as it is, strings are joined, objects merged key by key, lists of
objects with an `index` merged entry by entry, other lists extended, `index` and `type`
replaced. So a field the engine does not know (`annotations`, `audio`, a gateway's own) ends
up where the SDK puts it. Where the SDK's rule misfires the engine differs, each case in
docs/sdk-parity.md:

- a `role`, `id` or `name` sent again whole is kept once (the SDK doubles it:
  "assistantassistant");
- a number sent again replaces the old one (the SDK adds them up);
- a list entry without `index` is a new entry, or, in `tool_calls`, continues the last call
  unless it names another `id` (the SDK raises);
- strings are kept as `Pieces` until `materialized`: joining on every delta is quadratic.
"""

from __future__ import annotations

from typing import Any, Final

__all__ = ["Pieces", "materialized", "merge"]

# Keys whose value names a thing rather than being text: sent again whole, kept once.
_NAMES: Final = frozenset({"role", "id", "name", "call_id"})
_REPLACED: Final = frozenset({"index", "type"})  # the SDK takes the latest


class Pieces:
    """Text fragments, joined every FOLD fragments: memory follows the characters, not how
    finely the server cut them. `pieces` is the unjoined tail (the hot path appends to it)."""

    __slots__ = ("folded", "pieces")
    # Fragments kept as they came cost ~50 bytes of object each, whatever their length: a
    # flood of 3-character deltas would take 20 times its text.
    FOLD: Final = 4096

    def __init__(self, *texts: str) -> None:
        self.pieces: list[str] = list(texts)
        self.folded: list[str] = []  # one string per FOLD fragments

    def append(self, text: str) -> None:
        pieces = self.pieces
        pieces.append(text)
        if len(pieces) >= self.FOLD:
            self.fold()

    def fold(self) -> None:
        self.folded.append("".join(self.pieces))
        self.pieces.clear()  # the same list: the hot path's alias stays valid

    def __bool__(self) -> bool:
        return bool(self.pieces or self.folded)

    def join(self) -> str:
        return "".join(self.folded) + "".join(self.pieces)

    def joined(self) -> str | None:
        """The text, or None when nothing came."""
        return self.join() if self else None


def merge(acc: dict[str, Any], delta: dict[str, Any]) -> int:
    """Merge `delta` into `acc` (never sharing `delta`'s objects); returns the characters of
    text it added, for the answer's size cap."""
    added = 0
    for key, value in delta.items():
        old = acc.get(key)
        if old is None:
            acc[key], size = _own(value, key)
            added += size
        elif key in _REPLACED:
            acc[key] = value if value is not None else old
        elif isinstance(value, str):
            if isinstance(old, Pieces):
                old.append(value)
            elif isinstance(old, str):
                if key in _NAMES and old == value:
                    continue
                acc[key] = Pieces(old, value)
            else:
                continue
            added += len(value)
        elif isinstance(value, dict):
            if isinstance(old, dict):
                added += merge(old, value)
        elif isinstance(value, list):
            if isinstance(old, list):
                added += _merge_list(old, value, key)
        elif value is not None and not isinstance(old, dict | list | Pieces | str):
            acc[key] = value  # a number or a bool: the latest
    return added


def _own(value: Any, key: str) -> tuple[Any, int]:
    """A copy of a first-seen value that later merges may change, and its text size."""
    if isinstance(value, dict):
        mine: dict[str, Any] = {}
        return mine, merge(mine, value)
    if isinstance(value, list):
        entries: list[Any] = []
        return entries, _merge_list(entries, value, key)
    return value, len(value) if isinstance(value, str) else 0


def _merge_list(acc: list[Any], entries: list[Any], key: str) -> int:
    """Entries with an `index` merge into the entry with that index; see the module for the
    others."""
    added = 0
    for entry in entries:
        if not isinstance(entry, dict):
            acc.append(entry)
            continue
        target = _target(acc, entry, key)
        if target is None:
            mine, size = _own(entry, key)
            acc.append(mine)
            added += size
        else:
            added += merge(target, entry)
    return added


def _target(acc: list[Any], entry: dict[str, Any], key: str) -> dict[str, Any] | None:
    """The entry of `acc` that `entry` continues, if any."""
    index = entry.get("index")
    if type(index) is int:
        # The latest first: the call being streamed. (By index: mypyc 2.4 crashes compiling
        # `reversed()` of a list[Any].)
        for i in range(len(acc) - 1, -1, -1):
            old = acc[i]
            if isinstance(old, dict) and old.get("index") == index:
                return old
        return None
    last = acc[-1] if acc else None
    if key == "tool_calls" and isinstance(last, dict) and "index" not in last:
        call_id = entry.get("id")
        if call_id is None or _text(last.get("id")) == call_id:
            return last
    return None


def _text(value: Any) -> Any:
    return value.join() if isinstance(value, Pieces) else value


def materialized(value: Any) -> Any:
    """A plain JSON-ready copy: every `Pieces` joined."""
    if isinstance(value, dict):
        return {k: materialized(v) for k, v in value.items()}
    if isinstance(value, list):
        return [materialized(v) for v in value]
    return _text(value)
