"""Legacy Completions (`POST /v1/completions`): `text_completion` chunks and `[DONE]`.

No role chunk: one chunk per token `choices: [{text, index, logprobs: null, finish_reason:
null}]` (with the request's `logprobs: k`, the token's `{tokens, token_logprobs,
top_logprobs, text_offset}`), per choice a last chunk `{text: "", finish_reason: "length" |
"stop"}`, the usage chunk with `stream_options.include_usage`, then `data: [DONE]` (see
`choices.py`). A list `prompt` gets one choice per prompt (times `n`), as the real API answers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from engine.mock.choices import ChoiceStream, Frame
from engine.mock.parts import legacy_logprobs
from engine.mock.sse_writer import SLOT

if TYPE_CHECKING:
    from engine.mock.text import Choice, Segment


class CompletionsStream(ChoiceStream):
    """One legacy Completions answer: text chunks by step, tail, or a body."""

    __slots__ = ()
    id_prefix = "cmpl-"
    body_object = "text_completion"

    def _make_envelope(self, stream_id: str) -> dict[str, Any]:
        gen = self._gen
        return {
            "id": stream_id,
            "object": "text_completion",
            "created": gen.created,
            "model": gen.model,
        }

    def _frames(
        self,
        index: int,
        choice: Choice,  # noqa: ARG002  (chat's needs it)
        segment: Segment,
    ) -> list[Frame]:
        top = self._gen.top_logprobs
        body = {"text": SLOT, "index": index, "logprobs": None, "finish_reason": None}
        if top is None:
            return [Frame(body, len(segment.pieces))]
        extras = [orjson.dumps(lp) for lp in legacy_logprobs(segment.pieces, top)]
        return [Frame({**body, "logprobs": SLOT}, len(segment.pieces), extras)]

    def _finish(self, index: int, reason: str) -> dict[str, Any]:
        return {"text": "", "index": index, "logprobs": None, "finish_reason": reason}

    def _usage(self) -> dict[str, Any]:
        gen = self._gen
        return {
            "prompt_tokens": gen.input_tokens,
            "completion_tokens": gen.output_tokens,
            "total_tokens": gen.input_tokens + gen.output_tokens,
        }

    def _body_choice(self, index: int, choice: Choice, reason: str) -> dict[str, Any]:
        top = self._gen.top_logprobs
        logprobs: dict[str, list[Any]] | None = None
        if top is not None:
            pieces = [p for s in choice.segments for p in s.pieces]
            logprobs = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
            for entry in legacy_logprobs(pieces, top):
                for key, values in entry.items():
                    logprobs[key] += values
        return {
            "text": choice.joined("text") or "",
            "index": index,
            "logprobs": logprobs,
            "finish_reason": reason,
        }
