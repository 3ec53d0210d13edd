"""Deterministic synthetic text, the answer's model and token accounting.

Text is a list of vocabulary indices, a window of one seeded table; one token is one paced
delta, so `usage.output_tokens` equals the number of deltas exactly. Each token's JSON string is
rendered once at import, so the delta loop never calls a JSON encoder.

An answer (`Generation`) is one or more choices; a choice is a list of `Segment`s, runs of one
kind of token (reasoning, text, refusal, one tool call) that every dialect frames its own way.

Input tokens (documented rule): every message counts `MESSAGE_OVERHEAD` plus the number of
whitespace-separated words of its text content, and the reply is primed with `REPLY_OVERHEAD`.
A string `input` is one message; Responses `instructions` count as one more message. The
prompt as a token sequence (`prompt_runs`) is that rule spelled out, for the prefix cache:
the template's tokens are one mark that is never a word, and the reply's priming is the mark a
message opens with, so a conversation's next turn (this prompt + the answer + a new message)
starts with this prompt token for token, as a chat template's next turn does.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import orjson

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

MESSAGE_OVERHEAD = 3
REPLY_OVERHEAD = 3
# The template's tokens in `prompt_runs`: whitespace, so never one of the words that
# str.split() yields; one mark for both, so the reply's priming equals the answer's message
# opening in the next turn.
TEMPLATE_MARK = "\n"
_MESSAGE_MARKS = [TEMPLATE_MARK] * MESSAGE_OVERHEAD
_REPLY_MARKS = [TEMPLATE_MARK] * REPLY_OVERHEAD

WORDS = (  # noqa: SIM905  (a sentence reads better than a 70-item list)
    "the of and to in is that it for as with was on be at by this from or an are not but "
    "stream token engine event delta server client latency model request response chunk "
    "buffer socket queue handler batch mock signal window budget pipeline parser value "
    "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor "
    "incididunt ut labore et dolore magna aliqua quick brown fox jumps over lazy dog"
).split()
# Tokens that exercise a client's decoder: escapes, multi-byte UTF-8, newlines, no space.
_SPECIAL = [",", ".", "\n\n", ' "quoted"', " naïve", " 東京", " 🙂", "\\", "\t", "ing", "'s"]

VOCAB: tuple[str, ...] = tuple([" " + w for w in WORDS] + _SPECIAL)
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
    tokens = _TABLE[start : start + count]
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


def prompt_runs(messages: list[list[str]]) -> Iterator[list[str]]:
    """The prompt as the mock tokenizes it, in runs: per message its template marks, then the
    words of each text piece; last the reply's priming marks. All runs' tokens, in order, are
    the request's input tokens. A generator: counting frees each run as it goes, as fast as
    counting words was."""
    for texts in messages:
        yield _MESSAGE_MARKS
        for piece in texts:
            yield piece.split()
    yield _REPLY_MARKS


def count_input_tokens(messages: list[list[str]]) -> int:
    return sum(map(len, prompt_runs(messages)))


def prompt_of(messages: list[list[str]]) -> str:
    """The text the answer's seed is derived from."""
    return "\x1e".join("\x1f".join(texts) for texts in messages)


SegmentKind = Literal["reasoning", "text", "refusal", "tool_call", "audio"]


@dataclass(slots=True)
class Segment:
    """A run of one kind of token. A tool call's first piece is `""`: the token that names the
    function (chat sends it as the call's opening chunk, Responses as its output item). An
    audio answer's pieces are its transcript, each token with its own audio data."""

    kind: SegmentKind
    pieces: list[str]  # the text of each token
    json: list[bytes]  # each piece as a JSON string, rendered once per answer
    name: str = ""  # tool_call: the function's name
    call_id: str = ""  # tool_call: `call_…`
    call_index: int = 0  # tool_call: its place among the choice's calls
    call_type: str = "function"  # tool_call: "function", "custom" or legacy "function_call"

    @classmethod
    def of_tokens(cls, kind: SegmentKind, tokens: Sequence[int]) -> Segment:
        """A run of vocabulary tokens (text, reasoning)."""
        return cls(kind, [VOCAB[i] for i in tokens], [VOCAB_JSON[i] for i in tokens])

    @classmethod
    def of_pieces(cls, kind: SegmentKind, pieces: list[str], **call: Any) -> Segment:
        return cls(kind, pieces, [orjson.dumps(p) for p in pieces], **call)

    @property
    def text(self) -> str:
        """All of it: the text, the refusal, the reasoning, or the call's arguments."""
        return "".join(self.pieces)

    def first(self, count: int) -> Segment:
        """Its first `count` tokens (a limit or a fault cut the answer here)."""
        return Segment(
            self.kind,
            self.pieces[:count],
            self.json[:count],
            self.name,
            self.call_id,
            self.call_index,
            self.call_type,
        )


@dataclass(slots=True)
class Choice:
    """One answer of the request (chat's `n` gives several): its segments, in order."""

    segments: list[Segment]
    stopped_by_limit: bool = False  # the request's token limit set the length

    @property
    def tokens(self) -> int:
        return sum(len(segment.pieces) for segment in self.segments)

    @property
    def reasoning_tokens(self) -> int:
        return sum(len(s.pieces) for s in self.segments if s.kind == "reasoning")

    @property
    def calls(self) -> list[Segment]:
        return [s for s in self.segments if s.kind == "tool_call"]

    @property
    def legacy_call(self) -> bool:
        """The answer is chat's legacy `function_call` (finish reason `function_call`)."""
        return any(s.call_type == "function_call" for s in self.calls)

    @property
    def audio_tokens(self) -> int:
        return sum(len(s.pieces) for s in self.segments if s.kind == "audio")

    def joined(self, kind: SegmentKind) -> str | None:
        """The text of every segment of `kind`, or None when there is none."""
        texts = [s.text for s in self.segments if s.kind == kind]
        return "".join(texts) if texts else None


@dataclass(slots=True)
class Generation:
    """One request's answer and accounting, shared by every dialect.

    `tokens` is the shorthand for a plain answer: one choice of text. The planner passes
    `choices` instead when the request asked for more (reasoning, tool calls, `n`, ...).
    """

    model: str
    input_tokens: int
    created: int
    tokens: Sequence[int] = ()
    stopped_by_limit: bool = False  # (with `tokens`) the request's token limit set the length
    ending: str | None = None  # error-event / failed / incomplete fault
    max_output_tokens: int | None = None
    include_usage: bool = False  # chat: stream_options.include_usage
    choices: list[Choice] = field(default_factory=list)
    cached_tokens: int = 0  # x-mock-cached-tokens, at most input_tokens
    top_logprobs: int | None = None  # None: no logprobs asked for; else alternatives per token
    reasoning_field: str = "reasoning_content"  # chat: the delta field of reasoning tokens
    reasoning_summary: bool = False  # Responses: reasoning as a summary, not as raw text
    echo: dict[str, Any] = field(default_factory=dict)  # request fields the response repeats
    annotations: int = 0  # url_citation annotations on the answer's text
    service_tier: str = "default"  # the request's, as the response reports it
    prompt_audio_tokens: int = 0  # of the input: its `input_audio` parts
    prediction_tokens: int = 0  # the words of a chat `prediction`: accepted, rest rejected

    def __post_init__(self) -> None:
        if not self.choices:
            self.choices = [Choice([Segment.of_tokens("text", self.tokens)], self.stopped_by_limit)]

    @property
    def output_tokens(self) -> int:
        return sum(choice.tokens for choice in self.choices)

    @property
    def reasoning_tokens(self) -> int:
        return sum(choice.reasoning_tokens for choice in self.choices)

    @property
    def audio_tokens(self) -> int:
        return sum(choice.audio_tokens for choice in self.choices)

    @property
    def accepted_prediction_tokens(self) -> int:
        """Half of the prediction's words (at most the output): a fixed, visible rule."""
        return min(self.prediction_tokens // 2, self.output_tokens)

    @property
    def rejected_prediction_tokens(self) -> int:
        return self.prediction_tokens - self.accepted_prediction_tokens

    @property
    def text(self) -> str:
        """The first choice's visible text."""
        return self.choices[0].joined("text") or ""


def new_id(prefix: str) -> str:
    """An id shaped like OpenAI's (`resp_…`, `msg_…`, `chatcmpl-…`, `req_…`)."""
    return f"{prefix}{random.getrandbits(192):048x}"
