"""The Responses API (`POST /v1/responses`): the real event sequence, as bytes.

    response.created, response.in_progress, response.output_item.added,
    response.content_part.added, response.output_text.delta x n, response.output_text.done,
    response.content_part.done, response.output_item.done, response.completed

A stream whose length the request's `max_output_tokens` set ends as `limit_ending` says:
OpenAI's `response.incomplete` (the item and the response `incomplete`, `incomplete_details`),
vLLM's `response.completed` whose response is `incomplete` (the item `completed`), or a plain
`response.completed`.

The deltas come from one per-request bytes template (`%d` for the sequence number, `%b` for the
token's pre-rendered JSON string); everything else is rendered with orjson once per request.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import orjson

from engine.mock.sse_writer import DONE, named_event
from engine.mock.text import VOCAB_JSON, Generation, new_id

if TYPE_CHECKING:
    from engine.mock.config import LimitEnding

HEAD_EVENTS = 4  # created, in_progress, output_item.added, content_part.added
_ERROR_MESSAGE = "The server had an error while processing your request. (mock fault)"


def _usage(gen: Generation) -> dict[str, Any]:
    return {
        "input_tokens": gen.input_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": gen.output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": gen.input_tokens + gen.output_tokens,
    }


class ResponsesStream:
    """One Responses answer: head events, delta events by index range, tail events, or a body."""

    __slots__ = ("_gen", "_id", "_instructions", "_item_id", "_limit_ending", "_template",
                 "done_after", "n")
    head_events = HEAD_EVENTS

    def __init__(self, gen: Generation, instructions: Any = None, *, done_after: bool = False,
                 limit_ending: LimitEnding = "incomplete") -> None:
        self._gen = gen
        # Only a length the request's limit set (and no fault ending) ends the limit's way.
        limited = gen.stopped_by_limit and gen.ending is None
        self._limit_ending: LimitEnding | None = limit_ending if limited else None
        self._id = new_id("resp_")
        self._item_id = new_id("msg_")
        self._instructions = instructions if isinstance(instructions, str) else None
        self.done_after = done_after
        self.n = gen.output_tokens
        self._template = (
            b"event: response.output_text.delta\n"
            b'data: {"type":"response.output_text.delta","sequence_number":%d,"item_id":"'
            + self._item_id.encode()
            + b'","output_index":0,"content_index":0,"delta":%b,"logprobs":[]}\n\n'
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
        """vLLM marks the message `completed` even when the response is incomplete."""
        if self.status == "completed" or self._limit_ending == "vllm":
            return "completed"
        return "incomplete"

    def _response(self, status: str, output: list[Any], *, final: bool) -> dict[str, Any]:
        """The `response` object; fields and order follow what the real API sends."""
        gen = self._gen
        incomplete = {"reason": "max_output_tokens"} if status == "incomplete" and final else None
        error = {"code": "server_error", "message": _ERROR_MESSAGE} if status == "failed" else None
        return {
            "id": self._id, "object": "response", "created_at": gen.created, "status": status,
            "background": False,
            "completed_at": int(time.time()) if status == "completed" else None,
            "error": error, "incomplete_details": incomplete,
            "instructions": self._instructions, "max_output_tokens": gen.max_output_tokens,
            "max_tool_calls": None, "model": gen.model, "output": output,
            "parallel_tool_calls": True, "previous_response_id": None, "prompt_cache_key": None,
            "reasoning": {"effort": None, "summary": None}, "safety_identifier": None,
            "service_tier": "default", "store": True, "temperature": 1.0,
            "text": {"format": {"type": "text"}, "verbosity": "medium"}, "tool_choice": "auto",
            "tools": [], "top_logprobs": 0, "top_p": 1.0, "truncation": "disabled",
            "usage": _usage(gen) if final else None, "user": None, "metadata": {},
        }

    def _part(self, text: str) -> dict[str, Any]:
        return {"type": "output_text", "annotations": [], "logprobs": [], "text": text}

    def _item(self, status: str, content: list[Any]) -> dict[str, Any]:
        return {"id": self._item_id, "type": "message", "status": status, "content": content,
                "role": "assistant"}

    def head(self) -> list[bytes]:
        started = self._response("in_progress", [], final=False)
        return [
            *(named_event(name, {"type": name, "sequence_number": seq, "response": started})
              for seq, name in enumerate(("response.created", "response.in_progress"))),
            named_event("response.output_item.added", {
                "type": "response.output_item.added", "sequence_number": 2, "output_index": 0,
                "item": self._item("in_progress", [])}),
            named_event("response.content_part.added", {
                "type": "response.content_part.added", "sequence_number": 3,
                "item_id": self._item_id, "output_index": 0, "content_index": 0,
                "part": self._part("")}),
        ]

    def delta(self, index: int) -> bytes:
        """One delta event: what a paced stream sends per tick."""
        return self._template % (HEAD_EVENTS + index, VOCAB_JSON[self._gen.tokens[index]])

    def deltas(self, start: int, stop: int) -> list[bytes]:
        """Delta events `start..stop-1`: the hot path, one bytes `%` per event."""
        template, tokens, vocab = self._template, self._gen.tokens, VOCAB_JSON
        return [template % (HEAD_EVENTS + k, vocab[tokens[k]]) for k in range(start, stop)]

    def tail(self) -> list[bytes]:
        gen, seq = self._gen, HEAD_EVENTS + self.n
        if gen.ending == "error-event":
            return [named_event("error", {"type": "error", "sequence_number": seq,
                                          "code": "server_error", "message": _ERROR_MESSAGE,
                                          "param": None})]
        status = self.status
        if status == "failed":
            failed = self._response("failed", [], final=True)
            return [named_event("response.failed", {"type": "response.failed",
                                                    "sequence_number": seq, "response": failed})]
        text = gen.text
        item = self._item(self._item_status, [self._part(text)])
        where = {"item_id": self._item_id, "output_index": 0, "content_index": 0}
        events = [
            named_event("response.output_text.done", {
                "type": "response.output_text.done", "sequence_number": seq, **where,
                "text": text, "logprobs": []}),
            named_event("response.content_part.done", {
                "type": "response.content_part.done", "sequence_number": seq + 1, **where,
                "part": self._part(text)}),
            named_event("response.output_item.done", {
                "type": "response.output_item.done", "sequence_number": seq + 2,
                "output_index": 0, "item": item}),
            named_event(final := self._final_event, {
                "type": final, "sequence_number": seq + 3,
                "response": self._response(status, [item], final=True)}),
        ]
        if self.done_after:
            events.append(DONE)
        return events

    def body(self) -> bytes:
        """The non-streaming answer: the final response object."""
        status = self.status
        if status == "failed":
            return orjson.dumps(self._response("failed", [], final=True))
        item = self._item(self._item_status, [self._part(self._gen.text)])
        return orjson.dumps(self._response(status, [item], final=True))
