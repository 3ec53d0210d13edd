"""`ResponseAssembler`: every part of a stream, put back together in one model.

A stream's parts (visible text, refusal, reasoning and its summary, tool calls assembled from
their argument fragments, logprobs, finish reasons) arrive as `Delta`s of three wire formats.
They are collected per chat choice (for Responses, the whole output is choice 0) into
`Choice`s, and the final object is rebuilt in the shape of the endpoint called: what a
non-streaming call would have returned (`message.tool_calls`, `reasoning_content`, `refusal`,
`logprobs`, every choice). A Responses stream that ends with its own terminal response is
taken from it as the server wrote it.
"""

from __future__ import annotations

import time
from array import array
from dataclasses import dataclass, field
from typing import Any, Final

from engine._flat import Flat, triples
from engine.errors import ProtocolError
from engine.events import (
    CHOICE_CHUNKS,
    COMPLETION_CHUNK,
    DELTA_KINDS,
    NOT_JSON,
    TEXT_DELTA,
    Delta,
    Dialect,
    Ending,
    StreamEvent,
    Usage,
    delta_text,
    finish_reasons,
)

__all__ = ["MAX_RESPONSE_CHARS", "Choice", "ResponseAssembler", "ToolCall"]

# What one answer may hold in memory (text, reasoning, refusal and tool arguments together):
# far above any model's output, far below what an endless stream would take.
MAX_RESPONSE_CHARS = 64 * 1024 * 1024
# Fragments kept as they came cost ~50 bytes of object each, whatever their length: a flood
# of 3-character deltas would take 20 times its text. Every FOLD_PIECES of them are joined.
FOLD_PIECES: Final = 4096


class Pieces:
    """Text fragments, joined every FOLD_PIECES: memory follows the characters, not how
    finely the server cut them. `pieces` is the unjoined tail (the hot path appends to it)."""

    __slots__ = ("folded", "pieces")

    def __init__(self) -> None:
        self.pieces: list[str] = []
        self.folded: list[str] = []  # one string per FOLD_PIECES fragments

    def append(self, text: str) -> None:
        pieces = self.pieces
        pieces.append(text)
        if len(pieces) >= FOLD_PIECES:
            self.fold()

    def fold(self) -> None:
        self.folded.append("".join(self.pieces))
        self.pieces.clear()  # the same list: the hot path's alias stays valid

    def __bool__(self) -> bool:
        return bool(self.pieces or self.folded)

    def join(self) -> str:
        return "".join(self.folded) + "".join(self.pieces)

    def joined(self) -> str | None:
        """The text, or None when nothing came."""
        return self.join() if self else None


@dataclass(slots=True)
class ToolCall:
    """One function call: its id, name and the arguments joined from their fragments."""

    id: str | None
    name: str | None
    arguments: str = ""

    def as_chat(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


@dataclass(slots=True)
class Choice:
    """One answer: a chat choice, or (Responses) the whole output."""

    index: int
    text: str = ""
    refusal: str | None = None
    reasoning: str | None = None
    reasoning_summary: str | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)
    finish_reason: str | None = None
    logprobs: list[Any] | None = None


class _Parts:
    """What one choice has received so far (fragments, joined once at the end)."""

    __slots__ = (
        "calls",
        "finish_reason",
        "logprobs",
        "reasoning",
        "reasoning_field",
        "refusal",
        "summary",
        "text",
    )

    def __init__(self) -> None:
        self.text = Pieces()
        self.refusal = Pieces()
        self.reasoning = Pieces()
        self.summary = Pieces()
        self.calls: dict[int | str | None, ToolCall] = {}  # chat call index / Responses item id
        self.logprobs: list[Any] = []
        self.finish_reason: str | None = None
        self.reasoning_field = "reasoning_content"

    def choice(self, index: int, text: str) -> Choice:
        return Choice(
            index,
            text,
            self.refusal.joined(),
            self.reasoning.joined(),
            self.summary.joined(),
            list(self.calls.values()),
            self.finish_reason,
            self.logprobs or None,
        )


def _joined(parts: list[str]) -> str | None:
    return "".join(parts) if parts else None


class ResponseAssembler:
    """Builds the final response object of a stream, in the shape of the endpoint called
    (see the module docstring); `choices` holds every part, for every wire format."""

    __slots__ = (
        "_left",
        "_parts",
        "created",
        "dialect",
        "first_text_ns",
        "max_chars",
        "meta",
        "parts",
        "shape",
        "terminal",
        "token_times_ns",
        "usage",
    )

    def __init__(
        self, shape: Dialect = Dialect.RESPONSES, max_chars: int = MAX_RESPONSE_CHARS
    ) -> None:
        self.shape = shape
        self.max_chars = max_chars
        self._left = max_chars  # counted down as fragments arrive
        self.parts = Pieces()  # choice 0's visible text
        # Arrival of every event that carried a token of any kind: TTFT and ITL for free
        # (8 bytes each: an int object would take 32 and its list slot 8 more).
        self.token_times_ns = array("q")
        self.first_text_ns: int | None = None  # the first visible text
        self.usage: Usage | None = None
        self.created: dict[str, Any] | None = None  # response object of response.created
        self.terminal: dict[str, Any] | None = None
        self.meta: dict[str, Any] = {}  # id/model/created of chat chunks
        self.dialect: Dialect | None = None
        self._parts: dict[int, _Parts] = {0: _Parts()}

    def __call__(self, event: StreamEvent) -> None:
        typ = event.type
        if typ == TEXT_DELTA:
            self._text(event.text_delta, event.received_ns)
        elif typ in CHOICE_CHUNKS:
            self.dialect = Dialect.COMPLETIONS if typ == COMPLETION_CHUNK else Dialect.CHAT
            self._choice_chunk(event)
        elif typ.startswith("response."):
            self.dialect = Dialect.RESPONSES
            if typ in DELTA_KINDS:
                self._add(event.deltas, event.received_ns, responses=True)
            elif typ == "response.output_item.added":
                self._item(event.data.get("item"))
            elif typ == "response.created":
                self.created = event.response  # read now: a malformed one is a ProtocolError
            elif event.is_terminal:
                self.terminal = event.response
                self.usage = event.usage

    def add_chunk(self, items: Flat, received_ns: int) -> None:
        """One chunk's events in the engine's flat layout (`engine._flat`), as `__call__`
        would see them, with no event built for a text delta: what `Engine.run` does when no
        other handler needs the events."""
        parts, times = self.parts.pieces, self.token_times_ns
        size = 0
        for raw, name, id_ in triples(items):  # the hot loop: one Responses delta per token
            if name == TEXT_DELTA:
                delta = delta_text(raw)
                if delta is not NOT_JSON:  # NOT_JSON: the event's own path raises for it
                    if delta:
                        parts.append(delta)
                        times.append(received_ns)
                        size += len(delta)
                    continue
            self(raw if name is None else StreamEvent(raw, name, id_, received_ns))
        if self.first_text_ns is None and size:
            self.first_text_ns = received_ns  # this chunk brought the first text
        if len(parts) >= FOLD_PIECES:
            self.parts.fold()
        self._left -= size
        if self._left < 0:
            self._too_big()

    def _text(self, delta: str | None, received_ns: int) -> None:
        """The hot path: one Responses text delta."""
        if delta:
            self.parts.append(delta)  # Pieces.append: folds as it goes
            self.token_times_ns.append(received_ns)
            if self.first_text_ns is None:
                self.first_text_ns = received_ns
            self._left -= len(delta)
            if self._left < 0:
                self._too_big()

    def _choice_chunk(self, event: StreamEvent) -> None:
        data = event.data
        if not self.meta:
            self.meta = {k: data[k] for k in ("id", "model", "created") if k in data}
        usage = Usage.from_payload(data.get("usage"))
        if usage is not None:
            self.usage = usage
        for index, reason in finish_reasons(data):
            self._choice(index).finish_reason = reason
        deltas = event.deltas
        self._add(deltas, event.received_ns, responses=False)
        if deltas and deltas[0].kind == "reasoning":  # the server's name for the field
            choices = data.get("choices")
            first = choices[0] if isinstance(choices, list) and choices else None
            delta = first.get("delta") if isinstance(first, dict) else None
            if isinstance(delta, dict) and "reasoning_content" not in delta:
                self._choice(deltas[0].index).reasoning_field = "reasoning"

    def _choice(self, index: int) -> _Parts:
        parts = self._parts.get(index)
        if parts is None:
            parts = self._parts[index] = _Parts()
        return parts

    def _add(self, deltas: tuple[Delta, ...], received_ns: int, *, responses: bool) -> None:
        """Sort fragments into their choices (all of a Responses output is choice 0)."""
        token = False
        for d in deltas:
            index = 0 if responses else d.index
            kind = d.kind
            if kind == "text":
                if index == 0:
                    self.parts.append(d.text)
                    if self.first_text_ns is None and d.text:
                        self.first_text_ns = received_ns
                else:
                    self._choice(index).text.append(d.text)
                if d.logprobs:
                    self._choice(index).logprobs.extend(d.logprobs)
            elif kind == "tool_call":
                parts = self._choice(index)
                key = d.item_id if responses else d.call_index
                call = parts.calls.get(key)
                if call is None:
                    call = parts.calls[key] = ToolCall(d.call_id, d.name)
                call.id = call.id or d.call_id
                call.name = call.name or d.name
                call.arguments += d.text
            else:
                getattr(
                    self._choice(index), "summary" if kind == "reasoning_summary" else kind
                ).append(d.text)
            token = token or bool(d.text or d.name)
            self._left -= len(d.text)
        if token:
            self.token_times_ns.append(received_ns)
        if self._left < 0:
            self._too_big()

    def _too_big(self) -> None:
        raise ProtocolError(
            f"the answer exceeds {self.max_chars} characters (max_response_chars)"
            "; an endless stream is cut here rather than exhaust memory"
        )

    def _item(self, item: Any) -> None:
        """A Responses function call announced: its call id and name, before the arguments."""
        if isinstance(item, dict) and item.get("type") == "function_call":
            key = item.get("id")
            self._choice(0).calls[str(key) if key is not None else None] = ToolCall(
                _str(item.get("call_id")), _str(item.get("name"))
            )

    # --- the results ---------------------------------------------------------------------

    @property
    def text(self) -> str:
        return self.parts.join()

    @property
    def choices(self) -> list[Choice]:
        """Every choice, by index; for Responses, the output (from the server's terminal
        response when it sent one)."""
        if self.terminal is not None and self.dialect is Dialect.RESPONSES:
            return [_choice_of_output(self.terminal.get("output"), self.text)]
        return [
            parts.choice(i, self.text if i == 0 else parts.text.join())
            for i, parts in sorted(self._parts.items())
        ]

    @property
    def ending(self) -> Ending:
        """How the stream ended (choice 0's finish reason, or the terminal response)."""
        finish = self._parts[0].finish_reason
        if self.terminal is None and (
            self.dialect in (Dialect.CHAT, Dialect.COMPLETIONS) or finish
        ):
            return Ending.from_finish(finish)
        ending = Ending.from_response(self.terminal)
        if ending.status == "completed" and self._made_tool_calls():
            return Ending("completed", None, "tool_calls")  # chat's word for it
        return ending

    def _made_tool_calls(self) -> bool:
        """Whether the output has a function call (without building the choices: a join of
        every part, which the answer's size makes expensive)."""
        if self.terminal is not None:
            return any(
                isinstance(item, dict) and item.get("type") == "function_call"
                for item in _list(self.terminal.get("output"))
            )
        return bool(self._parts[0].calls)

    def response(self, choices: list[Choice] | None = None) -> dict[str, Any]:
        """The final object: the server's terminal response, or assembled from the events.
        `choices`: what `choices` returned, when the caller has it already (no second join)."""
        if self.shape is not Dialect.RESPONSES:
            built = self.choices if choices is None else choices
            if self.shape is Dialect.CHAT:
                return self._chat_completion(built)
            return self._text_completion(built)
        if self.terminal is not None:
            return self.terminal
        return self._responses_object((self.choices if choices is None else choices)[0])

    def _meta(self) -> dict[str, Any]:
        if self.meta:
            return self.meta
        source = self.terminal or self.created or {}
        return {
            "id": source.get("id"),
            "model": source.get("model"),
            "created": source.get("created_at"),
        }

    def _finish(self, choice: Choice) -> str:
        if choice.index == 0:
            return self.ending.finish_reason or "stop"
        return choice.finish_reason or "stop"

    def _chat_completion(self, choices: list[Choice]) -> dict[str, Any]:
        meta = self._meta()
        out = []
        for choice in choices:
            message: dict[str, Any] = {
                "role": "assistant",
                # null beside a refusal or tool calls, as a non-streaming answer has it
                "content": choice.text
                if choice.text or not (choice.tool_calls or choice.refusal)
                else None,
                "refusal": choice.refusal,
            }
            if choice.reasoning is not None:
                field_name = self._parts.get(choice.index, self._parts[0]).reasoning_field
                message[field_name] = choice.reasoning
            if choice.tool_calls:
                message["tool_calls"] = [call.as_chat() for call in choice.tool_calls]
            out.append(
                {
                    "index": choice.index,
                    "message": message,
                    "finish_reason": self._finish(choice),
                    "logprobs": None if choice.logprobs is None else {"content": choice.logprobs},
                }
            )
        return {
            "id": meta.get("id"),
            "object": "chat.completion",
            "created": meta.get("created"),
            "model": meta.get("model"),
            "choices": out,
            "usage": None if self.usage is None else self.usage.as_chat(),
        }

    def _text_completion(self, choices: list[Choice]) -> dict[str, Any]:
        meta = self._meta()
        return {
            "id": meta.get("id"),
            "object": "text_completion",
            "created": meta.get("created"),
            "model": meta.get("model"),
            "choices": [
                {
                    "index": c.index,
                    "text": c.text,
                    "logprobs": None,
                    "finish_reason": self._finish(c),
                }
                for c in choices
            ],
            "usage": None if self.usage is None else self.usage.as_chat(),
        }

    def _responses_object(self, choice: Choice) -> dict[str, Any]:
        ending = self.ending
        status = ending.status
        base = dict(self.created or {})
        meta = self._meta()
        base.setdefault("id", meta.get("id") or "")
        base.setdefault("object", "response")
        base.setdefault("created_at", meta.get("created") or int(time.time()))
        base.setdefault("model", meta.get("model") or "")
        base["status"] = status
        base["incomplete_details"] = (
            None if ending.incomplete_reason is None else {"reason": ending.incomplete_reason}
        )
        base["output"] = _output_of(choice, status)
        base["usage"] = self.usage.as_dict() if self.usage else None
        return base


def _str(value: Any) -> str | None:
    return None if value is None else str(value)


def _output_of(choice: Choice, status: str) -> list[dict[str, Any]]:
    """Responses output items for an assembled choice: reasoning, message, function calls."""
    items: list[dict[str, Any]] = []
    if choice.reasoning is not None or choice.reasoning_summary is not None:
        items.append(
            {
                "type": "reasoning",
                "id": "",
                "summary": []
                if choice.reasoning_summary is None
                else [{"type": "summary_text", "text": choice.reasoning_summary}],
                "content": []
                if choice.reasoning is None
                else [{"type": "reasoning_text", "text": choice.reasoning}],
            }
        )
    content: list[dict[str, Any]] = []
    if choice.text or not (choice.refusal or choice.tool_calls):
        content.append(
            {
                "type": "output_text",
                "text": choice.text,
                "annotations": [],
                "logprobs": choice.logprobs or [],
            }
        )
    if choice.refusal is not None:
        content.append({"type": "refusal", "refusal": choice.refusal})
    if content:
        items.append(
            {"type": "message", "id": "", "status": status, "role": "assistant", "content": content}
        )
    items.extend(
        {
            "type": "function_call",
            "id": "",
            "call_id": call.id,
            "name": call.name,
            "arguments": call.arguments,
            "status": "completed",
        }
        for call in choice.tool_calls
    )
    return items


def _choice_of_output(output: Any, text: str) -> Choice:
    """The one choice of a Responses output, read from the server's own items."""
    choice = Choice(0, text)
    refusal: list[str] = []
    reasoning: list[str] = []
    summary: list[str] = []
    logprobs: list[Any] = []
    for item in output if isinstance(output, list) else ():
        if not isinstance(item, dict):
            continue
        kind = item.get("type")
        if kind == "function_call":
            choice.tool_calls.append(
                ToolCall(
                    _str(item.get("call_id")),
                    _str(item.get("name")),
                    str(item.get("arguments") or ""),
                )
            )
            continue
        for part in _list(item.get("content")) + _list(item.get("summary")):
            if not isinstance(part, dict):
                continue
            ptype = part.get("type")
            if ptype == "refusal":
                refusal.append(str(part.get("refusal") or ""))
            elif ptype == "reasoning_text":
                reasoning.append(str(part.get("text") or ""))
            elif ptype == "summary_text":
                summary.append(str(part.get("text") or ""))
            elif ptype == "output_text":
                logprobs.extend(_list(part.get("logprobs")))
    choice.refusal = _joined(refusal)
    choice.reasoning = _joined(reasoning)
    choice.reasoning_summary = _joined(summary)
    choice.logprobs = logprobs or None
    return choice


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []
