"""Legacy Completions (`POST /v1/completions`): `text_completion` chunks and `[DONE]`.

No role chunk: one chunk per token `choices: [{text, index, logprobs: null, finish_reason:
null}]`, per choice a last chunk `{text: "", finish_reason: "length" | "stop"}`, the usage
chunk with `stream_options.include_usage`, then `data: [DONE]` (see `choices.py`). A list
`prompt` gets one choice per prompt (times `n`), as the real API answers it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from engine.mock.choices import ChoiceStream, Frame
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
        return [
            Frame(
                {"text": SLOT, "index": index, "logprobs": None, "finish_reason": None},
                len(segment.pieces),
            )
        ]

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
        return {
            "text": choice.joined("text") or "",
            "index": index,
            "logprobs": None,
            "finish_reason": reason,
        }
