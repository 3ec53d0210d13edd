"""Chat Completions (`POST /v1/chat/completions`): `chat.completion.chunk` lines and `[DONE]`.

Per choice a first chunk `delta: {role: "assistant", content: "", refusal: null}` (`content:
null` when the answer is not text, `refusal: ""` when it is a refusal), then one chunk per
token: `delta.<reasoning field>` for reasoning, `delta.content` for text (with `logprobs` when
asked), `delta.refusal` for a refusal, `delta.audio: {transcript, data}` for a spoken answer
(the first also with `id` and `expires_at`). A tool call is an opening chunk `delta.tool_calls:
[{index, id, type: "function", function: {name, arguments: ""}}]` (`type: "custom", custom:
{name, input}` for a custom tool; which also carries the role when the call is the first thing
the choice says, as OpenAI sends it), then one chunk per fragment `{index, function:
{arguments}}`; the legacy `delta.function_call: {name, arguments}` the same way, without an
index. Then `finish_reason` (`stop`, `length`, `tool_calls`, `function_call`; with the
answer's `annotations` in its delta when asked), the usage chunk and `[DONE]` (see
`choices.py`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from engine.mock.choices import ChoiceStream, Frame
from engine.mock.parts import audio_data, chat_logprob, url_citation
from engine.mock.sse_writer import SLOT
from engine.mock.text import new_id

if TYPE_CHECKING:
    from engine.mock.text import Choice, Segment

SYSTEM_FINGERPRINT = "fp_mock"
AUDIO_EXPIRES_S = 3600  # how long a spoken answer's audio stays retrievable


def _role_delta(choice: Choice) -> dict[str, Any]:
    """The role chunk's delta: content "" for a text answer, null otherwise (as OpenAI)."""
    refuses = choice.joined("refusal") is not None
    spoken = choice.audio_tokens > 0
    return {
        "role": "assistant",
        "content": None if refuses or choice.calls or spoken else "",
        "refusal": "" if refuses else None,
    }


def _call_body(segment: Segment, text: Any) -> tuple[str, dict[str, Any]]:
    """A call's field and value: `function` (arguments) or `custom` (input)."""
    if segment.call_type == "custom":
        return "custom", {"name": segment.name, "input": text}
    return "function", {"name": segment.name, "arguments": text}


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
            "service_tier": gen.service_tier,
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
        if segment.kind == "audio":
            return self._audio_frames(frame, segment)
        if segment.call_type == "function_call":  # legacy: no index, no id
            opening: dict[str, Any] = {"function_call": {"name": segment.name, "arguments": SLOT}}
            fragment: dict[str, Any] = {"function_call": {"arguments": SLOT}}
        else:
            kind, body = _call_body(segment, SLOT)
            call = {"index": segment.call_index, "id": segment.call_id, "type": kind, kind: body}
            opening = {"tool_calls": [call]}
            field = "input" if kind == "custom" else "arguments"
            fragment = {"tool_calls": [{"index": segment.call_index, kind: {field: SLOT}}]}
        if choice.segments[0] is segment:  # the choice's first chunk: with the role
            opening = {"role": "assistant", "content": None, **opening, "refusal": None}
        return [frame(opening, 1), frame(fragment, count - 1)]

    def _audio_frames(self, frame: Any, segment: Segment) -> list[Frame]:
        """Each token's transcript and audio; the first also names the audio."""
        extras = [orjson.dumps(audio_data(p)) for p in segment.pieces]
        first = {
            "id": new_id("audio_")[:30],
            "transcript": SLOT,
            "data": SLOT,
            "expires_at": self._gen.created + AUDIO_EXPIRES_S,
        }
        rest = {"transcript": SLOT, "data": SLOT}
        return [
            frame({"audio": first}, 1, None, extras[:1]),
            frame({"audio": rest}, len(extras) - 1, None, extras[1:]),
        ]

    def _finish(self, index: int, reason: str) -> dict[str, Any]:
        """The last chunk of a choice, with the answer's annotations (as OpenAI's search)."""
        annotations = reason != "error" and self._annotations(self._gen.choices[index])
        delta = {"annotations": annotations} if annotations else {}
        return {"index": index, "delta": delta, "logprobs": None, "finish_reason": reason}

    def _annotations(self, choice: Choice) -> list[dict[str, Any]]:
        text = choice.joined("text")
        if text is None:
            return []
        return [url_citation(i, len(text), chat=True) for i in range(self._gen.annotations)]

    def _usage(self) -> dict[str, Any]:
        gen = self._gen
        return {
            "prompt_tokens": gen.input_tokens,
            "completion_tokens": gen.output_tokens,
            "total_tokens": gen.input_tokens + gen.output_tokens,
            "prompt_tokens_details": {
                "cached_tokens": gen.cached_tokens,
                "audio_tokens": gen.prompt_audio_tokens,
            },
            "completion_tokens_details": {
                "reasoning_tokens": gen.reasoning_tokens,
                "audio_tokens": gen.audio_tokens,
                "accepted_prediction_tokens": gen.accepted_prediction_tokens,
                "rejected_prediction_tokens": gen.rejected_prediction_tokens,
            },
        }

    def _body_choice(self, index: int, choice: Choice, reason: str) -> dict[str, Any]:
        role = _role_delta(choice)
        message: dict[str, Any] = {
            "role": "assistant",
            "content": choice.joined("text"),
            "refusal": choice.joined("refusal"),
            "annotations": self._annotations(choice),
        }
        if role["content"] == "" and message["content"] is None:
            message["content"] = ""  # a text answer cut before its first text token
        if (reasoning := choice.joined("reasoning")) is not None:
            message[self._gen.reasoning_field] = reasoning
        if (transcript := choice.joined("audio")) is not None:
            pieces = [p for s in choice.segments if s.kind == "audio" for p in s.pieces]
            message["audio"] = {
                "id": new_id("audio_")[:30],
                "data": "".join(audio_data(p) for p in pieces),
                "expires_at": self._gen.created + AUDIO_EXPIRES_S,
                "transcript": transcript,
            }
        if choice.legacy_call:
            (call,) = choice.calls
            message["function_call"] = {"name": call.name, "arguments": call.text}
        elif calls := choice.calls:
            message["tool_calls"] = [
                {"id": call.call_id, "type": kind, kind: body}
                for call in calls
                for kind, body in [_call_body(call, call.text)]
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
