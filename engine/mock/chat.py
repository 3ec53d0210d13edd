"""Chat Completions (`POST /v1/chat/completions`): `chat.completion.chunk` lines and `[DONE]`.

First chunk `delta: {role: "assistant", content: ""}`, one chunk per token, a chunk with
`finish_reason`, a usage chunk (`choices: []`) only when `stream_options.include_usage`, then
`data: [DONE]`. Each content chunk is prefix + the token's pre-rendered JSON + suffix.
"""

from __future__ import annotations

from typing import Any

import orjson

from engine.mock.faults import error_object
from engine.mock.sse_writer import DONE, data_event, named_event
from engine.mock.text import VOCAB_JSON, Generation, new_id

SYSTEM_FINGERPRINT = "fp_mock"


class ChatStream:
    """One Chat Completions answer: head chunk, content chunks by index range, tail, or a body."""

    __slots__ = ("_envelope", "_gen", "_id", "_prefix", "_suffix", "n")
    head_events = 1

    def __init__(self, gen: Generation) -> None:
        self._gen = gen
        self._id = new_id("chatcmpl-")
        self.n = gen.output_tokens
        # Key order as the real API sends it; `usage: null` rides on every chunk with include_usage.
        self._envelope: dict[str, Any] = {
            "id": self._id, "object": "chat.completion.chunk", "created": gen.created,
            "model": gen.model, "service_tier": "default", "system_fingerprint": SYSTEM_FINGERPRINT,
        }
        head = orjson.dumps(self._envelope)[:-1]  # the envelope without its closing brace
        self._prefix = b"data: " + head + b',"choices":[{"index":0,"delta":{"content":'
        tail = b',"usage":null}' if gen.include_usage else b"}"
        self._suffix = b'},"logprobs":null,"finish_reason":null}]' + tail + b"\n\n"

    @property
    def finish_reason(self) -> str:
        cut = self._gen.stopped_by_limit or self._gen.ending == "incomplete"
        return "length" if cut else "stop"

    def _chunk(self, choices: list[Any], **extra: Any) -> bytes:
        usage = {"usage": None} if self._gen.include_usage else {}
        return data_event({**self._envelope, "choices": choices, **usage, **extra})

    def _usage(self) -> dict[str, Any]:
        gen = self._gen
        return {
            "prompt_tokens": gen.input_tokens, "completion_tokens": gen.output_tokens,
            "total_tokens": gen.input_tokens + gen.output_tokens,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0, "audio_tokens": 0,
                "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
        }

    def head(self) -> list[bytes]:
        delta = {"role": "assistant", "content": "", "refusal": None}
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}
        return [self._chunk([choice])]

    def delta(self, index: int) -> bytes:
        """One content chunk: what a paced stream sends per tick."""
        return self._prefix + VOCAB_JSON[self._gen.tokens[index]] + self._suffix

    def deltas(self, start: int, stop: int) -> list[bytes]:
        """Content chunks `start..stop-1`: the hot path, two concatenations per event."""
        prefix, suffix, tokens, vocab = self._prefix, self._suffix, self._gen.tokens, VOCAB_JSON
        return [prefix + vocab[tokens[k]] + suffix for k in range(start, stop)]

    def tail(self) -> list[bytes]:
        if self._gen.ending in ("error-event", "failed"):
            # A mid-stream error, then the stream ends without [DONE].
            return [named_event("error", {"error": error_object(500)})]
        finish = {"index": 0, "delta": {}, "logprobs": None, "finish_reason": self.finish_reason}
        events = [self._chunk([finish])]
        if self._gen.include_usage:
            events.append(data_event({**self._envelope, "choices": [], "usage": self._usage()}))
        events.append(DONE)
        return events

    def body(self) -> bytes:
        """The non-streaming answer: one `chat.completion` object."""
        message: dict[str, Any] = {"role": "assistant", "content": self._gen.text, "refusal": None,
                   "annotations": []}
        return orjson.dumps({
            **self._envelope, "object": "chat.completion",
            "choices": [{"index": 0, "message": message, "logprobs": None,
                         "finish_reason": self.finish_reason}],
            "usage": self._usage(),
        })
