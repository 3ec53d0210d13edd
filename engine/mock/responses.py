"""The Responses API (`POST /v1/responses`): the real event sequence, as bytes.

    response.created, response.in_progress, response.output_item.added,
    response.content_part.added, response.output_text.delta x n, response.output_text.done,
    response.content_part.done, response.output_item.done, response.completed

Each segment of the answer is one output item, in order (`output_index` 0, 1, ...): reasoning
(`rs_…`: `content_part` + `reasoning_text.delta`/`.done` as OpenAI's open-weight models and
vLLM send it, or `reasoning_summary_part` + `reasoning_summary_text.delta`/`.done` as OpenAI's
hosted models do), a message (`msg_…`: `output_text` or, for a refusal, `refusal`), function
calls (`fc_…`: the item is the call's first token, then `function_call_arguments.delta`/`.done`;
a custom tool's `ctc_…` item with `custom_tool_call_input.delta`/`.done`). A spoken answer
(`x-mock-output: audio`) is no item: `response.audio.transcript.delta` per token, then
`response.audio.delta` (the audio), `response.audio.done` and `response.audio.transcript.done`.
A message's annotations (`x-mock-annotations`) come as `response.output_text.annotation.added`
after its last token, and in its final part.
The first item opens in the head, a later one just before its first token; an item closes right
after its last token, the last one in the tail before the final event.

A stream whose length the request's `max_output_tokens` set ends as `limit_ending` says:
OpenAI's `response.incomplete` (the item and the response `incomplete`, `incomplete_details`),
vLLM's `response.completed` whose response is `incomplete` (the item `completed`), or a plain
`response.completed`.

A token's event comes from one per-item bytes template (`%d` for the sequence number, `%b` for
the token's pre-rendered JSON string); everything else is rendered with orjson.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from engine.mock.parts import audio_data, delta_logprob, text_logprob, url_citation
from engine.mock.sse_writer import (
    DONE,
    SEQ,
    SLOT,
    cut_at_slots,
    named_event,
    percent_template,
)
from engine.mock.text import Generation, new_id

if TYPE_CHECKING:
    from engine.mock.config import LimitEnding
    from engine.mock.text import Segment

_ERROR_MESSAGE = "The server had an error while processing your request. (mock fault)"
_LIFECYCLE_HEAD = 2  # response.created, response.in_progress


@dataclass(frozen=True, slots=True)
class _Shape:
    """The event names and fields of one kind of output item."""

    prefix: str  # of the item's id
    delta: str  # a token's event
    done: str  # the event with the whole text
    field: str  # where that event puts it
    index: str | None = "content_index"  # the part's index field (None: a call has no parts)
    part_added: str = "response.content_part.added"
    part_done: str = "response.content_part.done"


_MESSAGE = _Shape("msg_", "response.output_text.delta", "response.output_text.done", "text")
_REFUSAL = _Shape("msg_", "response.refusal.delta", "response.refusal.done", "refusal")
_REASONING = _Shape("rs_", "response.reasoning_text.delta", "response.reasoning_text.done", "text")
_SUMMARY = _Shape(
    "rs_",
    "response.reasoning_summary_text.delta",
    "response.reasoning_summary_text.done",
    "text",
    "summary_index",
    "response.reasoning_summary_part.added",
    "response.reasoning_summary_part.done",
)
_CALL = _Shape(
    "fc_",
    "response.function_call_arguments.delta",
    "response.function_call_arguments.done",
    "arguments",
    None,
)
_CUSTOM = _Shape(
    "ctc_",
    "response.custom_tool_call_input.delta",
    "response.custom_tool_call_input.done",
    "input",
    None,
)
_AUDIO = _Shape("", "response.audio.transcript.delta", "response.audio.transcript.done", "", None)


def _usage(gen: Generation) -> dict[str, Any]:
    return {
        "input_tokens": gen.input_tokens,
        "input_tokens_details": {"cached_tokens": gen.cached_tokens},
        "output_tokens": gen.output_tokens,
        "output_tokens_details": {"reasoning_tokens": gen.reasoning_tokens},
        "total_tokens": gen.input_tokens + gen.output_tokens,
    }


class _Item:
    """One segment as an output item: its events around a run of per-token events."""

    __slots__ = (
        "_notes",
        "_top",
        "first_seq",
        "id",
        "output_index",
        "pieces",
        "segment",
        "shape",
        "start",
        "template",
    )

    def __init__(
        self,
        segment: Segment,
        shape: _Shape,
        output_index: int,
        start: int,
        first_seq: int,
        top_logprobs: int | None,
        annotations: int = 0,
    ) -> None:
        self.segment, self.shape, self.output_index = segment, shape, output_index
        self.id = new_id(shape.prefix)
        self.start = start  # the answer's token index of the item's first token
        self.first_seq = first_seq  # the sequence number of that token's event
        self._top = top_logprobs if shape is _MESSAGE else None
        self._notes = annotations if shape is _MESSAGE else 0
        delta: dict[str, Any] = {**self._where(SEQ, shape.delta), "delta": SLOT}
        if shape is _MESSAGE:
            delta["logprobs"] = [] if self._top is None else SLOT
        prefix, mids, suffix = cut_at_slots(named_event(shape.delta, delta))
        self.template = percent_template(prefix, suffix)
        self.pieces = segment.json
        if self._top is not None:  # the token, then `,"logprobs":` and its entry
            top = self._top
            self.pieces = [
                p + mids[0] + orjson.dumps([delta_logprob(t, top)])
                for p, t in zip(segment.json, segment.pieces, strict=True)
            ]

    @property
    def is_call(self) -> bool:
        return self.shape is _CALL or self.shape is _CUSTOM

    @property
    def is_item(self) -> bool:
        """Whether it is an output item (audio is not)."""
        return self.shape is not _AUDIO

    @property
    def stop(self) -> int:
        return self.start + len(self.pieces)

    @property
    def opening_events(self) -> int:
        """Events before its first token (a call's item is that token; audio has none)."""
        return 0 if self.is_call or not self.is_item else 2

    @property
    def closing_events(self) -> int:
        return 2 if self.is_call else 3 + self._notes

    def _where(self, seq: Any, name: str) -> dict[str, Any]:
        if not self.is_item:
            return {"type": name, "sequence_number": seq}
        where: dict[str, Any] = {
            "type": name,
            "sequence_number": seq,
            "item_id": self.id,
            "output_index": self.output_index,
        }
        if self.shape.index is not None:
            where[self.shape.index] = 0
        return where

    def _logprobs(self) -> list[dict[str, Any]]:
        """The whole text's logprobs, as the done event and the final part carry them."""
        top = self._top
        return [] if top is None else [text_logprob(p, top) for p in self.segment.pieces]

    def _annotations(self) -> list[dict[str, Any]]:
        end = len(self.segment.text)
        return [url_citation(i, end, chat=False) for i in range(self._notes)]

    def _part(self, text: str, *, final: bool) -> dict[str, Any]:
        shape = self.shape
        if shape is _MESSAGE:
            return {
                "type": "output_text",
                "annotations": self._annotations() if final else [],
                "logprobs": self._logprobs() if final else [],
                "text": text,
            }
        if shape is _REFUSAL:
            return {"type": "refusal", "refusal": text}
        return {"type": "summary_text" if shape is _SUMMARY else "reasoning_text", "text": text}

    def item(self, status: str, *, final: bool) -> dict[str, Any]:
        """The item as output_item.added (final=False) or .done and the response show it."""
        segment, shape = self.segment, self.shape
        if self.is_call:
            custom = shape is _CUSTOM
            return {
                "id": self.id,
                "type": "custom_tool_call" if custom else "function_call",
                "status": status,
                "input" if custom else "arguments": segment.text if final else "",
                "call_id": segment.call_id,
                "name": segment.name,
            }
        parts = [self._part(segment.text, final=True)] if final else []
        if shape is _REASONING or shape is _SUMMARY:
            summary = parts if shape is _SUMMARY else []
            return {
                "id": self.id,
                "type": "reasoning",
                "summary": summary,
                "content": [] if shape is _SUMMARY else parts,
            }
        return {
            "id": self.id,
            "type": "message",
            "status": status,
            "content": parts,
            "role": "assistant",
        }

    def _added(self, seq: int) -> bytes:
        return named_event(
            "response.output_item.added",
            {
                "type": "response.output_item.added",
                "sequence_number": seq,
                "output_index": self.output_index,
                "item": self.item("in_progress", final=False),
            },
        )

    def opening(self) -> list[bytes]:
        if self.is_call or not self.is_item:
            return []
        seq = self.first_seq - 2
        part = {**self._where(seq + 1, self.shape.part_added), "part": self._part("", final=False)}
        return [self._added(seq), named_event(self.shape.part_added, part)]

    def token(self, k: int) -> bytes:
        """The event of the answer's token `k` (one of this item's)."""
        j = k - self.start
        if self.is_call and j == 0:
            return self._added(self.first_seq)
        return self.template % (self.first_seq + j, self.pieces[j])

    def closing(self, status: str) -> list[bytes]:
        seq, segment, shape = self.first_seq + len(self.pieces), self.segment, self.shape
        if not self.is_item:
            return self._audio_closing(seq)
        notes = [
            named_event(
                "response.output_text.annotation.added",
                {
                    **self._where(seq + i, "response.output_text.annotation.added"),
                    "annotation_index": i,
                    "annotation": note,
                },
            )
            for i, note in enumerate(self._annotations())
        ]
        seq += len(notes)
        done = {**self._where(seq, shape.done), shape.field: segment.text}
        if shape is _MESSAGE:
            done["logprobs"] = self._logprobs()
        events = [*notes, named_event(shape.done, done)]
        if not self.is_call:
            part = {
                **self._where(seq + 1, shape.part_done),
                "part": self._part(segment.text, final=True),
            }
            events.append(named_event(shape.part_done, part))
        events.append(
            named_event(
                "response.output_item.done",
                {
                    "type": "response.output_item.done",
                    "sequence_number": seq + len(events) - len(notes),
                    "output_index": self.output_index,
                    "item": self.item(status, final=True),
                },
            )
        )
        return events

    def _audio_closing(self, seq: int) -> list[bytes]:
        """The whole audio, then the end of the audio and of its transcript."""
        data = "".join(audio_data(p) for p in self.segment.pieces)
        return [
            named_event(
                "response.audio.delta",
                {"type": "response.audio.delta", "sequence_number": seq, "delta": data},
            ),
            named_event(
                "response.audio.done", {"type": "response.audio.done", "sequence_number": seq + 1}
            ),
            named_event(
                "response.audio.transcript.done",
                {"type": "response.audio.transcript.done", "sequence_number": seq + 2},
            ),
        ]


def _shape(segment: Segment, summary: bool) -> _Shape:
    if segment.kind == "reasoning":
        return _SUMMARY if summary else _REASONING
    if segment.kind == "tool_call":
        return _CUSTOM if segment.call_type == "custom" else _CALL
    return {"text": _MESSAGE, "refusal": _REFUSAL, "audio": _AUDIO}[segment.kind]


class ResponsesStream:
    """One Responses answer: head events, token events by index range, tail events, or a body."""

    __slots__ = (
        "_fast",
        "_gen",
        "_id",
        "_instructions",
        "_items",
        "_limit_ending",
        "_tail_seq",
        "done_after",
        "head_events",
        "n",
    )

    def __init__(
        self,
        gen: Generation,
        instructions: Any = None,
        *,
        done_after: bool = False,
        limit_ending: LimitEnding = "incomplete",
    ) -> None:
        self._gen = gen
        choice = gen.choices[0]
        # Only a length the request's limit set (and no fault ending) ends the limit's way.
        limited = choice.stopped_by_limit and gen.ending is None
        self._limit_ending: LimitEnding | None = limit_ending if limited else None
        self._id = new_id("resp_")
        self._instructions = instructions if isinstance(instructions, str) else None
        self.done_after = done_after
        self._items: list[_Item] = []
        seq, start, last = _LIFECYCLE_HEAD, 0, len(choice.segments) - 1
        for index, segment in enumerate(choice.segments):
            shape = _shape(segment, gen.reasoning_summary)
            item = _Item(segment, shape, index, start, seq, gen.top_logprobs, gen.annotations)
            item.first_seq = seq = seq + item.opening_events
            self._items.append(item)
            seq += len(item.pieces) + (item.closing_events if index < last else 0)
            start = item.stop
        self._tail_seq = seq
        self.n = start
        self.head_events = _LIFECYCLE_HEAD + self._items[0].opening_events
        first = self._items[0]
        # One message or reasoning item (a plain answer): the hot path, one bytes `%` a token.
        self._fast = (
            (first.template, first.pieces, first.first_seq)
            if len(self._items) == 1 and not first.is_call
            else None
        )

    @property
    def status(self) -> str:
        """The final response's status."""
        ending = self._gen.ending
        if ending == "failed":
            return "failed"
        if ending == "incomplete" or self._limit_ending in ("incomplete", "vllm"):
            return "incomplete"
        return "completed"

    @property
    def _final_event(self) -> str:
        """vLLM reports an incomplete response inside response.completed."""
        if self._limit_ending == "vllm":
            return "response.completed"
        return f"response.{self.status}"

    @property
    def _item_status(self) -> str:
        """vLLM marks the last item `completed` even when the response is incomplete."""
        if self.status == "completed" or self._limit_ending == "vllm":
            return "completed"
        return "incomplete"

    def _response(self, status: str, output: list[Any], *, final: bool) -> dict[str, Any]:
        """The `response` object; fields and order follow what the real API sends."""
        gen = self._gen
        incomplete = {"reason": "max_output_tokens"} if status == "incomplete" and final else None
        error = {"code": "server_error", "message": _ERROR_MESSAGE} if status == "failed" else None
        return {
            "id": self._id,
            "object": "response",
            "created_at": gen.created,
            "status": status,
            "background": False,
            "completed_at": int(time.time()) if status == "completed" else None,
            "error": error,
            "incomplete_details": incomplete,
            "instructions": self._instructions,
            "max_output_tokens": gen.max_output_tokens,
            "max_tool_calls": None,
            "model": gen.model,
            "output": output,
            "parallel_tool_calls": True,
            "previous_response_id": None,
            "prompt_cache_key": None,
            "reasoning": {"effort": None, "summary": None},
            "safety_identifier": None,
            "service_tier": gen.service_tier,
            "store": True,
            "temperature": 1.0,
            "text": {"format": {"type": "text"}, "verbosity": "medium"},
            "tool_choice": "auto",
            "tools": [],
            "top_logprobs": 0,
            "top_p": 1.0,
            "truncation": "disabled",
            "usage": _usage(gen) if final else None,
            "user": None,
            "metadata": {},
            **gen.echo,
        }

    def _output(self) -> list[dict[str, Any]]:
        """Every item as the final response lists it: the last one with the ending's status."""
        last = len(self._items) - 1
        return [
            item.item(self._item_status if i == last else "completed", final=True)
            for i, item in enumerate(self._items)
            if item.is_item
        ]

    def head(self) -> list[bytes]:
        started = self._response("in_progress", [], final=False)
        return [
            *(
                named_event(name, {"type": name, "sequence_number": seq, "response": started})
                for seq, name in enumerate(("response.created", "response.in_progress"))
            ),
            *self._items[0].opening(),
        ]

    def _item_at(self, k: int) -> _Item:
        for item in self._items:
            if k < item.stop:
                return item
        raise IndexError(k)

    def _step(self, k: int) -> list[bytes]:
        """Token `k`'s event, after its item's opening and before its closing when it is the
        item's first or last token (the answer's last item closes in the tail)."""
        item = self._item_at(k)
        events = item.opening() if k == item.start and item.output_index else []
        events.append(item.token(k))
        if k == item.stop - 1 and item is not self._items[-1]:
            events += item.closing("completed")
        return events

    def delta(self, index: int) -> bytes | None:
        """One token's event, when the answer is one item (a paced stream's common tick)."""
        if self._fast is not None:
            template, pieces, first = self._fast
            return template % (first + index, pieces[index])
        return self._items[0].token(index) if len(self._items) == 1 else None

    def deltas(self, start: int, stop: int) -> list[bytes]:
        """Events of tokens `start..stop-1`."""
        if self._fast is not None:
            template, pieces, first = self._fast
            return [template % (first + k, pieces[k]) for k in range(start, stop)]
        return [event for k in range(start, stop) for event in self._step(k)]

    def tail(self) -> list[bytes]:
        gen, seq = self._gen, self._tail_seq
        if gen.ending in ("error-event", "error-chunk"):
            return [
                named_event(
                    "error",
                    {
                        "type": "error",
                        "sequence_number": seq,
                        "code": "server_error",
                        "message": _ERROR_MESSAGE,
                        "param": None,
                    },
                )
            ]
        status = self.status
        if status == "failed":
            failed = self._response("failed", [], final=True)
            return [
                named_event(
                    "response.failed",
                    {"type": "response.failed", "sequence_number": seq, "response": failed},
                )
            ]
        events = self._items[-1].closing(self._item_status)
        final = self._final_event
        events.append(
            named_event(
                final,
                {
                    "type": final,
                    "sequence_number": seq + len(events),
                    "response": self._response(status, self._output(), final=True),
                },
            )
        )
        if self.done_after:
            events.append(DONE)
        return events

    def body(self) -> bytes:
        """The non-streaming answer: the final response object."""
        status = self.status
        output = [] if status == "failed" else self._output()
        return orjson.dumps(self._response(status, output, final=True))
