"""Chat Completions (`POST /v1/chat/completions`): `chat.completion.chunk` lines and `[DONE]`.

Per choice a first chunk `delta: {role: "assistant", content: "", refusal: null}` (`content:
null` when the answer is not text, `refusal: ""` when it is a refusal), then one chunk per
token: `delta.<reasoning field>` for reasoning, `delta.content` for text (with `logprobs` when
asked), `delta.refusal` for a refusal. A tool call is an opening chunk `delta.tool_calls:
[{index, id, type: "function", function: {name, arguments: ""}}]` (which also carries the role
when the call is the first thing the choice says, as OpenAI sends it), then one chunk per
argument fragment `{index, function: {arguments}}`. Then `finish_reason` (`stop`, `length`,
`tool_calls`), the usage chunk and `[DONE]` (see `choices.py`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from engine.mock.choices import ChoiceStream, Frame
from engine.mock.parts import chat_logprob
from engine.mock.sse_writer import SLOT

if TYPE_CHECKING:
    from engine.mock.text import Choice, Segment

SYSTEM_FINGERPRINT = "fp_mock"


def _role_delta(choice: Choice) -> dict[str, Any]:
    """The role chunk's delta: content "" for a text answer, null otherwise (as OpenAI)."""
    refuses = choice.joined("refusal") is not None
    return {
        "role": "assistant",
        "content": None if refuses or choice.calls else "",
        "refusal": "" if refuses else None,
    }


class ChatStream(ChoiceStream):
    """One Chat Completions answer: head chunks, token chunks by step, tail, or a body."""

    __slots__ = ()

    def _make_envelope(self, stream_id: str) -> dict[str, Any]:
        # Key order as the real API sends it; `usage: null` rides on every chunk with include_usage.
        gen = self._gen
        return {
            "id": stream_id,
            "object": "chat.completion.chunk",
            "created": gen.created,
            "model": gen.model,
            "service_tier": "default",
            "system_fingerprint": SYSTEM_FINGERPRINT,
        }

    def _head(self, index: int, choice: Choice) -> dict[str, Any] | None:
        segments = choice.segments
        if segments and segments[0].kind == "tool_call":
            return None  # the first call's opening chunk carries the role
        return {
            "index": index,
            "delta": _role_delta(choice),
            "logprobs": None,
            "finish_reason": None,
        }

    def _frames(self, index: int, choice: Choice, segment: Segment) -> list[Frame]:
        def frame(
            delta: dict[str, Any],
            count: int,
            logprobs: Any = None,
            extras: list[bytes] | None = None,
        ) -> Frame:
            return Frame(
                {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": None},
                count,
                extras,
            )

        count = len(segment.pieces)
        if segment.kind == "reasoning":
            return [frame({self._gen.reasoning_field: SLOT}, count)]
        if segment.kind == "refusal":
            return [frame({"refusal": SLOT}, count)]
        if segment.kind == "text":
            top = self._gen.top_logprobs
            if top is None:
                return [frame({"content": SLOT}, count)]
            extras = [
                orjson.dumps({"content": [chat_logprob(p, top)], "refusal": None})
                for p in segment.pieces
            ]
            return [frame({"content": SLOT}, count, SLOT, extras)]
        call = {
            "index": segment.call_index,
            "id": segment.call_id,
            "type": "function",
            "function": {"name": segment.name, "arguments": SLOT},
        }
        opening: dict[str, Any] = {"tool_calls": [call]}
        if choice.segments[0] is segment:  # the choice's first chunk: with the role
            opening = {"role": "assistant", "content": None, **opening, "refusal": None}
        fragment = {"tool_calls": [{"index": segment.call_index, "function": {"arguments": SLOT}}]}
        return [frame(opening, 1), frame(fragment, count - 1)]

    def _finish(self, index: int, reason: str) -> dict[str, Any]:
        return {"index": index, "delta": {}, "logprobs": None, "finish_reason": reason}

    def _usage(self) -> dict[str, Any]:
        gen = self._gen
        return {
            "prompt_tokens": gen.input_tokens,
            "completion_tokens": gen.output_tokens,
            "total_tokens": gen.input_tokens + gen.output_tokens,
            "prompt_tokens_details": {"cached_tokens": gen.cached_tokens, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": gen.reasoning_tokens,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }

    def _body_choice(self, index: int, choice: Choice, reason: str) -> dict[str, Any]:
        role = _role_delta(choice)
        message: dict[str, Any] = {
            "role": "assistant",
            "content": choice.joined("text"),
            "refusal": choice.joined("refusal"),
            "annotations": [],
        }
        if role["content"] == "" and message["content"] is None:
            message["content"] = ""  # a text answer cut before its first text token
        if (reasoning := choice.joined("reasoning")) is not None:
            message[self._gen.reasoning_field] = reasoning
        if calls := choice.calls:
            message["tool_calls"] = [
                {
                    "id": call.call_id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.text},
                }
                for call in calls
            ]
        logprobs = None
        if self._gen.top_logprobs is not None:
            top = self._gen.top_logprobs
            logprobs = {
                "content": [
                    chat_logprob(p, top)
                    for s in choice.segments
                    if s.kind == "text"
                    for p in s.pieces
                ],
                "refusal": None,
            }
        return {"index": index, "message": message, "logprobs": logprobs, "finish_reason": reason}
