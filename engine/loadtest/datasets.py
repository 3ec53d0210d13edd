"""Datasets from files (never a hub): recorded conversations, or a text corpus to cut from.

Formats, told apart by the file itself: ShareGPT-style JSON (a list of records whose
`conversations` are `{"from", "value"}` or `{"role", "content"}` turns), chat-messages JSONL
(`{"messages": [...]}` a line), OpenAI Batch JSONL (`{"body": {"messages" | "input"}}` a line),
and plain text (`.txt`, or anything that does not start as JSON), a corpus of words. A
conversation keeps its user turns in order and, after each, the length in words of the
reply it recorded: vLLM's bench takes that as the request's output length.

Which conversation request `i` sends is `pick(conversations, seed, i)`: a seeded permutation,
so a run uses each conversation once before any repeats (a repeat is a prefix-cache hit, which
would make the test a cache benchmark) and every worker split sends the same ones.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from engine.errors import ConfigError
from engine.loadtest.jsonlines import json_lines

if TYPE_CHECKING:
    import random
    from collections.abc import Iterator, Sequence

USER_ROLES = frozenset({"human", "user"})
ASSISTANT_ROLES = frozenset({"gpt", "assistant", "chatgpt", "bard", "bing", "model"})
SYSTEM_ROLES = frozenset({"system", "developer"})
_NOT_SPACE = re.compile(rb"\S")
_CONVERSATION_KEYS = ("conversations", "conversation", "messages")
_MASK64 = (1 << 64) - 1
_COUNT_CHUNK = 4096  # texts counted at once (bounds the joined buffer's size)
_SPACE = np.zeros(256, dtype=np.bool_)  # the ASCII bytes str.split() splits on, and 0xFF
_SPACE[[9, 10, 11, 12, 13, 28, 29, 30, 31, 32, 0xFF]] = True
_Draft = tuple[str | None, tuple[str, ...], list[str | None]]  # system, turns, reply texts


@dataclass(frozen=True, slots=True)
class Conversation:
    """One recorded conversation: its user turns, and the length in words of the reply
    recorded after each (None where there is none)."""

    system: str | None
    turns: tuple[str, ...]
    replies: tuple[int | None, ...]


class Dataset(list[Conversation]):
    """The conversations of a file, and how many it had to skip (no user turn to send)."""

    __slots__ = ("format", "path", "skipped")

    def __init__(self, path: str, format_: str, skipped: int, items: list[Conversation]) -> None:
        super().__init__(items)
        self.path = path
        self.format = format_  # "sharegpt", "messages", "batch"
        self.skipped = skipped

    def __repr__(self) -> str:
        return f"<Dataset {self.path} [{self.format}: {len(self)}, skipped {self.skipped}]>"


class Corpus:
    """A text's words, cut into prompts: a window of `words` words from a seeded start."""

    __slots__ = ("path", "words")

    def __init__(self, path: str, words: list[str]) -> None:
        if not words:
            raise ConfigError(f"{path}: the corpus has no words")
        self.path = path
        self.words = words

    def __repr__(self) -> str:
        return f"<Corpus {self.path} [{len(self.words)} words]>"

    def prompt(self, rng: random.Random, words: int) -> str:
        """`words` words from a random start, wrapping past the end back to the start."""
        return " ".join(self.window(rng.randrange(len(self.words)), words))

    def window(self, start: int, words: int) -> list[str]:
        size = len(self.words)
        start %= size
        out = self.words[start : start + words]
        while len(out) < words:  # past the end: on from the start (a short corpus repeats)
            out += self.words[: words - len(out)]
        return out

    def stream(self, start: int) -> Iterator[str]:
        """Endless words from `start`: what `tokens.fit` draws on to reach a token count."""
        size = len(self.words)
        index = start % size
        while True:
            yield self.words[index]
            index = (index + 1) % size


def load_corpus(path: str | Path) -> Corpus:
    """A plain-text corpus: its whitespace-separated words, in order."""
    return _corpus(str(path), _read(path))


def load_dataset(path: str | Path) -> Dataset | Corpus:
    """The file's conversations, or a `Corpus` when it is plain text (module docstring)."""
    name = str(path)
    raw = _read(path)
    first = _NOT_SPACE.search(raw)  # the first byte that is not whitespace, with no copy
    start = first[0] if first else b""
    suffix = Path(path).suffix.lower()
    if suffix == ".txt" or (start not in (b"[", b"{") and suffix not in (".json", ".jsonl")):
        return _corpus(name, raw)
    lines = start != b"["
    records = (
        json_lines(raw.splitlines(), name) if lines else enumerate(_json_document(name, raw), 1)
    )
    kind = ""
    drafts: list[_Draft] = []
    skipped = 0
    for number, record in records:
        try:
            record_kind, messages = _messages(record)
            draft = _draft(messages)
        except _BadRecord as exc:  # located here, so the happy path builds no names
            where = f"{name}:{number}" if lines else f"{name}: item {number}"
            raise ConfigError(f"{where}: {exc}") from None
        kind = kind or record_kind
        if draft is None:
            skipped += 1
        else:
            drafts.append(draft)
    if not drafts:
        raise ConfigError(f"{name}: no conversation with a user turn ({skipped} skipped)")
    counts = iter(_word_counts([r for _, _, replies in drafts for r in replies if r is not None]))
    conversations = [
        Conversation(system, turns, tuple(None if r is None else next(counts) for r in replies))
        for system, turns, replies in drafts
    ]
    return Dataset(name, kind, skipped, conversations)


class _BadRecord(ValueError):
    """A record that is no conversation; `load_dataset` adds the file and line."""


def _read(path: str | Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the dataset ({exc.strerror or exc})") from None


def _corpus(name: str, raw: bytes) -> Corpus:
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{name}: not UTF-8 text at byte {exc.start}") from None
    return Corpus(name, text.split())


def _json_document(name: str, raw: bytes) -> list[Any]:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"{name}:{exc.lineno}:{exc.colno}: not JSON ({exc.msg})") from None
    if not isinstance(data, list):
        raise ConfigError(f"{name}: a dataset is a list of conversations")
    return data


def _messages(record: Any) -> tuple[str, list[Any]]:
    """A record's format and its messages, in any of the accepted spellings."""
    if isinstance(record, dict):
        for key in _CONVERSATION_KEYS:
            messages = record.get(key)
            if isinstance(messages, list):
                return ("messages" if key == "messages" else "sharegpt"), messages
        body = record.get("body")
        if isinstance(body, dict):
            return "batch", _body_messages(body)
    raise _BadRecord("not a conversation (expected 'conversations', 'messages' or a batch 'body')")


def _body_messages(body: dict[str, Any]) -> list[Any]:
    """A request body's prompt as messages: Chat's `messages`, Responses' `input` (a string
    or items) and `instructions`, or Completions' `prompt`."""
    messages: list[Any] = []
    if isinstance(body.get("instructions"), str):
        messages.append({"role": "system", "content": body["instructions"]})
    prompt = body.get("messages", body.get("input", body.get("prompt")))
    if isinstance(prompt, str):
        messages.append({"role": "user", "content": prompt})
    elif isinstance(prompt, list):
        messages += prompt
    return messages


def _draft(messages: list[Any]) -> _Draft | None:
    """User turns and reply texts, in order; None when there is no user turn. Replies before
    the first user turn are dropped, and a conversation ends at an empty user message (there
    is nothing to send from there on)."""
    systems: list[str] = []
    turns: list[str] = []
    replies: list[str | None] = []
    for message in messages:
        if not isinstance(message, dict):
            raise _BadRecord(f"a message is an object, not {message!r:.60}")
        role = message.get("from", message.get("role"))
        text = _text(message.get("value", message.get("content")))
        if role in USER_ROLES:
            if not text or text.isspace():
                break
            turns.append(text)
            replies.append(None)
        elif role in ASSISTANT_ROLES and turns:
            previous = replies[-1]
            replies[-1] = text if previous is None else f"{previous}\n{text}"
        elif role in SYSTEM_ROLES and text and not turns:
            systems.append(text)
        # anything else (tools, function results, unknown roles) carries no turn
    if not turns:
        return None
    return "\n\n".join(systems) or None, tuple(turns), replies


def _word_counts(texts: list[str]) -> list[int]:
    """Each text's whitespace-separated words (ASCII whitespace: a Unicode space inside a word
    leaves it one word), counted by numpy over the texts joined in chunks: `str.split` makes
    every word a string, ~100 ns each, seconds for a ShareGPT-sized file."""
    counts: list[int] = []
    for first in range(0, len(texts), _COUNT_CHUNK):
        chunk = texts[first : first + _COUNT_CHUNK]
        # 0xFF is never a byte of UTF-8: a separator no text can hold
        joined = b"\xff".join([b"", *(t.encode("utf-8", "surrogatepass") for t in chunk), b""])
        data = np.frombuffer(joined, dtype=np.uint8)
        bounds = np.flatnonzero(data == 0xFF)
        space = _SPACE[data]
        starts = space[:-1] > space[1:]  # a space (or the separator), then not: a word begins
        counts += np.add.reduceat(starts, bounds[:-1], dtype=np.int64).tolist()
    return counts


def _text(content: Any) -> str:
    """A message's text: a string, or the text of its content parts (images dropped)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [part.get("text") for part in content if isinstance(part, dict)]
        return "\n".join(t for t in texts if isinstance(t, str))
    return ""


def pick(conversations: Sequence[Conversation], seed: int, index: int) -> Conversation:
    """Request `index`'s conversation: pass k of the dataset (index // size) is a seeded
    permutation of it, so the same in every process, and no repeat within a pass."""
    size = len(conversations)
    if size == 0:
        raise ConfigError("no conversations to pick from")
    cycle, position = divmod(index, size)
    return conversations[_permute(position, size, _mix((seed & _MASK64) ^ _mix(cycle)))]


def sample(conversations: Sequence[Conversation], n: int, seed: int) -> list[Conversation]:
    """`n` conversations for a seed: `pick` for 0..n-1, so two runs send the same ones."""
    return [pick(conversations, seed, index) for index in range(n)]


def _permute(position: int, size: int, key: int) -> int:
    """A bijection of range(size) keyed by `key`: a balanced Feistel network on the smallest
    even number of bits that holds `size`, walked until it lands inside (at most ~4 steps on
    average). O(1) per index, where a shuffled list would cost O(size) per process."""
    half = max(1, (size - 1).bit_length() + 1) // 2
    mask = (1 << half) - 1
    value = position
    while True:
        left, right = value >> half, value & mask
        for round_ in range(4):
            left, right = right, left ^ (_mix(right ^ key ^ (round_ << 56)) & mask)
        value = left << half | right
        if value < size:
            return value


def _mix(value: int) -> int:
    """splitmix64's finaliser: a cheap, well-spread 64-bit hash of an integer."""
    value = (value + 0x9E3779B97F4A7C15) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)
