"""Deterministic synthetic text and token accounting.

The answer is a list of vocabulary indices drawn from `random.Random(seed)`; one index is one
token is one delta, so `usage.output_tokens` equals the number of text deltas exactly. Each
token's JSON string is rendered once at import, so the delta loop never calls a JSON encoder.

Input tokens (documented rule): every message counts `MESSAGE_OVERHEAD` plus the number of
whitespace-separated words of its text content, and the reply is primed with `REPLY_OVERHEAD`.
A string `input` is one message; Responses `instructions` count as one more message.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass
from typing import Any

import orjson

MESSAGE_OVERHEAD = 3
REPLY_OVERHEAD = 3

_WORDS = (  # noqa: SIM905  (a sentence reads better than a 70-item list)
    "the of and to in is that it for as with was on be at by this from or an are not but "
    "stream token engine event delta server client latency model request response chunk "
    "buffer socket queue handler batch mock signal window budget pipeline parser value "
    "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor "
    "incididunt ut labore et dolore magna aliqua quick brown fox jumps over lazy dog"
).split()
# Tokens that exercise a client's decoder: escapes, multi-byte UTF-8, newlines, no space.
_SPECIAL = [",", ".", "\n\n", ' "quoted"', " naïve", " 東京", " 🙂", "\\", "\t", "ing", "'s"]

VOCAB: tuple[str, ...] = tuple([" " + w for w in _WORDS] + _SPECIAL)
VOCAB_JSON: tuple[bytes, ...] = tuple(orjson.dumps(t) for t in VOCAB)


def text_seed(config_seed: int, request_seed: object, prompt: str) -> int:
    """Same config seed + same request seed + same prompt -> same answer, on any machine."""
    return zlib.crc32(f"{config_seed}|{request_seed}|{prompt}".encode())


_TABLE_SIZE = 1 << 16
# One long deterministic token sequence; an answer is a window of it chosen by the seed, so a
# request costs a slice instead of building and drawing from a fresh Random.
_TABLE = random.Random(0x5EED).choices(range(len(VOCAB)), k=_TABLE_SIZE)


def generate_tokens(seed: int, count: int) -> list[int]:
    """`count` vocabulary indices: the window of the shared table that starts at `seed`."""
    if count <= 0:
        return []
    start = seed % _TABLE_SIZE
    tokens = _TABLE[start:start + count]
    while len(tokens) < count:  # longer than the table's tail: wrap around
        tokens += _TABLE[: count - len(tokens)]
    return tokens


def _content_text(content: Any) -> list[str]:
    """Text of a message `content`: a string, or a list of parts with `text`."""
    if isinstance(content, str):
        return [content]
    if isinstance(content, list):
        parts = [p for p in content if isinstance(p, dict)]
        return [p["text"] for p in parts if isinstance(p.get("text"), str)]
    return []


def message_texts(messages: Any) -> list[list[str]]:
    """Per message, its text pieces (Chat `messages` or a Responses `input` list)."""
    if isinstance(messages, str):
        return [[messages]]
    if not isinstance(messages, list):
        return []
    return [_content_text(m.get("content")) for m in messages if isinstance(m, dict)]


def count_input_tokens(messages: list[list[str]]) -> int:
    words = sum(len(piece.split()) for texts in messages for piece in texts)
    return words + MESSAGE_OVERHEAD * len(messages) + REPLY_OVERHEAD


def prompt_of(messages: list[list[str]]) -> str:
    """The text the answer's seed is derived from."""
    return "\x1e".join("\x1f".join(texts) for texts in messages)


@dataclass(slots=True)
class Generation:
    """One request's answer and accounting, shared by both API dialects."""

    model: str
    tokens: list[int]
    input_tokens: int
    created: int
    stopped_by_limit: bool = False  # the request's token limit set the length
    ending: str | None = None  # error-event / failed / incomplete fault
    max_output_tokens: int | None = None
    include_usage: bool = False  # chat: stream_options.include_usage

    @property
    def output_tokens(self) -> int:
        return len(self.tokens)

    @property
    def text(self) -> str:
        return "".join([VOCAB[i] for i in self.tokens])


def new_id(prefix: str) -> str:
    """An id shaped like OpenAI's (`resp_…`, `msg_…`, `chatcmpl-…`, `req_…`)."""
    return f"{prefix}{random.getrandbits(192):048x}"
