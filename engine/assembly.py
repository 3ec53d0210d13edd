"""`ResponseAssembler`: every part of a stream, put back together as the official SDK does.

The rule (docs/sdk-parity.md): the final object equals what openai-python's stream helpers
assemble from the same bytes, field for field, fields the engine does not know included.

- Chat Completions: each choice's `message` is its deltas merged the SDK's way (strings
  joined, objects merged, indexed lists merged by `index`: `merge`), the choice's other keys
  and the envelope come from the first chunk, `usage` and `system_fingerprint` from later
  ones. Legacy completions are merged the same way (`text`, `logprobs`).
- Responses: the terminal response as the server wrote it; when it has no `output`, the
  output is rebuilt from the items (`response.output_item.done`, or an item's deltas).

Where the engine keeps what the SDK drops or raises on, docs/sdk-parity.md says so. The
per-choice `Choice` (text, refusal, reasoning, every kind of tool call, finish reason) is
read from that final object, in one shape for every wire format. A stream answered in
another wire format than the endpoint's (chat chunks on `/responses`) is converted.
"""

from __future__ import annotations

import time
from array import array
from typing import Any, Final

from engine._flat import Flat, triples
from engine.choices import (
    CLIENT_CALLS,
    Choice,
    ToolCall,
    choice_of_message,
    choice_of_output,
    filled,
    output_of,
    output_text,
    stand_in,
)
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
)
from engine.merge import Pieces, materialized, merge

__all__ = [
    "MAX_RESPONSE_CHARS",
    "NO_TERMINAL_EVENT",
    "Choice",
    "Pieces",
    "ResponseAssembler",
    "ToolCall",
]

# What one answer may hold in memory (text, reasoning, refusal and tool arguments together):
# far above any model's output, far below what an endless stream would take.
MAX_RESPONSE_CHARS = 64 * 1024 * 1024
FOLD_PIECES: Final = Pieces.FOLD  # fragments joined at once (see `Pieces`)
# `incomplete_reason` of a Responses stream that ended ([DONE]) without its terminal event:
# kept as a result, where the SDK raises.
NO_TERMINAL_EVENT: Final = "no_terminal_event"
_CHATTY = (Dialect.CHAT, Dialect.COMPLETIONS)
# A chat choice's keys the assembler reads itself; any other is carried.
_CHOICE_KEYS = frozenset({"index", "delta", "finish_reason", "logprobs"})
_COMPLETION_KEYS = frozenset({"index", "text", "finish_reason", "logprobs"})


class _ChoiceState:
    """A chat (or legacy) choice so far: its first chunk's keys, its merged message."""

    __slots__ = ("fields", "finish_reason", "logprobs", "message")

    def __init__(self, choice: dict[str, Any], body: str) -> None:
        # The first chunk's keys in their order, as openai-python keeps them (copied: later
        # chunks' unknown keys merge into them).
        self.fields: dict[str, Any] = {}
        merge(self.fields, {k: None if k == body else v for k, v in choice.items()})
        self.finish_reason: Any = None
        self.logprobs: Any = None
        self.message: dict[str, Any] = {}

    def add_logprobs(self, logprobs: Any, *, first: bool) -> None:
        """Chat's logprobs as the SDK gathers them: the first object, then its `content` and
        `refusal` lists extended."""
        if not isinstance(logprobs, dict):
            return
        mine = self.logprobs
        if mine is None:
            keys = logprobs if first else ("content", "refusal")
            self.logprobs = {k: _copied(logprobs.get(k)) for k in keys}
            return
        for key in ("content", "refusal"):
            entries = logprobs.get(key)
            if isinstance(entries, list) and entries:
                if isinstance(mine.get(key), list):
                    mine[key].extend(entries)
                else:
                    mine[key] = list(entries)


class ResponseAssembler:
    """Builds the final response object of a stream, in the shape of the endpoint called
    (see the module docstring); `choices` holds every part, for every wire format."""

    __slots__ = (
        "_annotations",
        "_choices",
        "_chunks",
        "_done",
        "_fragments",
        "_items",
        "_joined",
        "_left",
        "_parts_added",
        "created",
        "dialect",
        "first_text_ns",
        "max_chars",
        "meta",
        "parts",
        "raw_usage",
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
        self.parts = Pieces()  # Responses: every output_text delta
        # Arrival of every event that carried a token of any kind: TTFT and ITL for free
        # (8 bytes each: an int object would take 32 and its list slot 8 more).
        self.token_times_ns = array("q")
        self.first_text_ns: int | None = None  # the first visible text
        self.usage: Usage | None = None
        self.raw_usage: Any = None  # chat: the latest `usage` as the server sent it
        self.created: dict[str, Any] | None = None  # response object of response.created
        self.terminal: dict[str, Any] | None = None
        self.meta: dict[str, Any] = {}  # chat: the first chunk's envelope
        self.dialect: Dialect | None = None
        self._choices: dict[int, _ChoiceState] = {}
        self._chunks = 0  # chat chunks taken: the joined messages below are of this many
        self._joined: tuple[int, dict[int, dict[str, Any]]] | None = None
        # Responses: items by output index, those done, and the fragments of the others.
        self._items: dict[int, dict[str, Any]] = {}
        self._done: set[int] = set()
        self._fragments: dict[tuple[int, str, int], Pieces] = {}
        self._parts_added: dict[tuple[int, int], dict[str, Any]] = {}
        self._annotations: dict[tuple[int, int], list[Any]] = {}

    def __call__(self, event: StreamEvent) -> None:
        typ = event.type
        if typ == TEXT_DELTA:
            self._text(event.text_delta, event.received_ns)
        elif typ in CHOICE_CHUNKS:
            self.dialect = Dialect.COMPLETIONS if typ == COMPLETION_CHUNK else Dialect.CHAT
            self._choice_chunk(event)
        elif typ.startswith("response."):
            self.dialect = Dialect.RESPONSES
            self._responses_event(event)

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

    def _tokens(self, deltas: tuple[Delta, ...], received_ns: int, size: int) -> None:
        """An event's fragments: its arrival is a token's when any carries one."""
        for d in deltas:  # a loop, not any(): this runs once per chat chunk
            if d.text or d.name:
                self.token_times_ns.append(received_ns)
                if self.first_text_ns is None and any(e.kind == "text" and e.text for e in deltas):
                    self.first_text_ns = received_ns
                break
        self._left -= size
        if self._left < 0:
            self._too_big()

    def _too_big(self) -> None:
        raise ProtocolError(
            f"the answer exceeds {self.max_chars} characters (max_response_chars)"
            "; an endless stream is cut here rather than exhaust memory"
        )

    # --- chat and legacy completions -----------------------------------------------------

    def _choice_chunk(self, event: StreamEvent) -> None:
        data = event.data
        self._chunks += 1
        if not self.meta:
            self.meta = {k: v for k, v in data.items() if k not in ("choices", "obfuscation")}
        elif data.get("system_fingerprint") is not None:
            self.meta["system_fingerprint"] = data["system_fingerprint"]
        usage = data.get("usage")
        if usage is not None:
            self.raw_usage = usage
            self.usage = Usage.from_payload(usage)
        legacy = self.dialect is Dialect.COMPLETIONS
        size = 0
        choices = data.get("choices")
        for choice in choices if isinstance(choices, list) else ():
            if isinstance(choice, dict):
                size += self._merge_choice(choice, legacy=legacy)
        self._tokens(event.deltas, event.received_ns, size)

    def _merge_choice(self, choice: dict[str, Any], *, legacy: bool) -> int:
        """One choice of a chunk into its state; returns the characters it added."""
        index = choice.get("index")
        index = index if type(index) is int else 0
        state = self._choices.get(index)
        first = state is None
        if state is None:
            state = self._choices[index] = _ChoiceState(choice, "text" if legacy else "delta")
        known = _COMPLETION_KEYS if legacy else _CHOICE_KEYS
        if legacy:
            body: dict[str, Any] = {k: choice[k] for k in ("text", "logprobs") if k in choice}
        else:
            delta = choice.get("delta")
            body = delta if isinstance(delta, dict) else {}
            logprobs = choice.get("logprobs")
            if logprobs is not None:
                state.add_logprobs(logprobs, first=first)
        size = merge(state.message, body)
        reason = choice.get("finish_reason")
        if reason:
            state.finish_reason = reason
        if not first and not choice.keys() <= known:  # carried where the SDK drops them
            size += merge(state.fields, {k: v for k, v in choice.items() if k not in known})
        return size

    def _messages(self) -> dict[int, dict[str, Any]]:
        """Each choice's merged message, joined once however often it is asked for (the
        choices and the response share its strings)."""
        joined = self._joined
        if joined is None or joined[0] != self._chunks:
            messages = {i: materialized(s.message) for i, s in self._choices.items()}
            joined = self._joined = (self._chunks, messages)
        return joined[1]

    def _state_choice(self, index: int, state: _ChoiceState) -> Choice:
        """A chat or legacy choice, read from its merged message."""
        message = self._messages()[index]
        if self.dialect is Dialect.COMPLETIONS:
            text = message.get("text")
            return Choice(
                index,
                text if isinstance(text, str) else "",
                finish_reason=state.finish_reason,
                logprobs=message.get("logprobs"),
            )
        return choice_of_message(index, message, state.finish_reason, state.logprobs)

    def _choices_response(self) -> dict[str, Any]:
        """The chat.completion (or text_completion) openai-python assembles."""
        legacy = self.dialect is Dialect.COMPLETIONS
        out: dict[str, Any] = materialized(self.meta)
        out["object"] = "text_completion" if legacy else "chat.completion"
        choices = []
        messages = self._messages()
        for index, state in sorted(self._choices.items()):
            choice = materialized(state.fields)
            message = dict(messages[index])  # a copy of the dict, not of its strings
            choice["finish_reason"] = state.finish_reason
            if legacy:
                choice["text"] = message.get("text") or ""
                choice["logprobs"] = message.get("logprobs")
            else:
                del choice["delta"]
                message.setdefault("content", None)
                message.setdefault("refusal", None)
                choice["logprobs"] = state.logprobs
                choice["message"] = message
            choices.append(choice)
        out["choices"] = choices
        out["usage"] = self.raw_usage
        return out

    # --- Responses -------------------------------------------------------------------------

    def _responses_event(self, event: StreamEvent) -> None:
        typ = event.type
        if typ in DELTA_KINDS:
            self._fragment(event)
        elif typ == "response.output_item.added":
            data = event.data
            item = data.get("item")
            if isinstance(item, dict):
                self._items[_index(data.get("output_index"))] = item
            self._tokens(event.deltas, event.received_ns, 0)  # a call's name
        elif typ == "response.output_item.done":
            data = event.data
            item = data.get("item")
            if isinstance(item, dict):
                index = _index(data.get("output_index"))
                self._items[index] = item
                self._done.add(index)
            self._whole(event)
        elif typ == "response.content_part.added":
            data = event.data
            part = data.get("part")
            if isinstance(part, dict):
                where = (_index(data.get("output_index")), _index(data.get("content_index")))
                self._parts_added[where] = part
        elif typ == "response.output_text.annotation.added":
            data = event.data
            where = (_index(data.get("output_index")), _index(data.get("content_index")))
            self._annotations.setdefault(where, []).append(data.get("annotation"))
        elif typ == "response.created":
            self.created = event.response  # read now: a malformed one is a ProtocolError
        elif event.is_terminal:
            self.terminal = event.response
            self.usage = event.usage
            self._whole(event)

    def _fragment(self, event: StreamEvent) -> None:
        """A Responses delta other than text: kept per item, for an item never done."""
        deltas = event.deltas
        size = 0
        for d in deltas:
            size += len(d.text)
            if d.kind.startswith("audio"):
                continue  # a token, but no part of any output item
            key = (d.index, d.kind, d.part)
            pieces = self._fragments.get(key)
            if pieces is None:
                pieces = self._fragments[key] = Pieces()
                if d.index not in self._items:  # a delta without its item: a stand-in
                    self._items[d.index] = stand_in(d)
            pieces.append(d.text)
        self._tokens(deltas, event.received_ns, size)

    def _whole(self, event: StreamEvent) -> None:
        """Items that came whole, with no delta before them: their text and token."""
        deltas = event.cached_deltas
        if deltas:
            for d in deltas:
                if d.kind == "text":
                    self.parts.append(d.text)
            self._tokens(deltas, event.received_ns, sum(len(d.text) for d in deltas))

    def _output(self) -> list[Any]:
        """The final output: the terminal response's, else rebuilt from the items."""
        terminal = self.terminal
        if terminal is not None and isinstance(terminal.get("output"), list):
            return terminal["output"]  # type: ignore[no-any-return]
        return self._rebuilt_output()

    def _rebuilt_output(self) -> list[Any]:
        """The items as `response.output_item.done` gave them; an item never done is its
        `output_item.added` with its deltas in (the message's text: what the done ones do
        not hold)."""
        items = dict(self._items)
        messages = [i for i in sorted(items) if items[i].get("type") == "message"]
        text = self.parts.join()
        if text and not messages:
            index = max(items, default=-1) + 1
            items[index] = stand_in(Delta("text", "", index))
            messages.append(index)
        done_text = "".join(output_text(items[i]) for i in messages if i in self._done)
        rest = text.removeprefix(done_text)
        open_messages = [i for i in messages if i not in self._done]
        last = open_messages[-1] if open_messages else None
        return [
            items[i] if i in self._done else self._filled(i, items[i], rest if i == last else "")
            for i in sorted(items)
        ]

    def _filled(self, index: int, item: dict[str, Any], text: str) -> dict[str, Any]:
        """An item never done, with what its fragments said."""
        frags = sorted(
            (key[1:], pieces.join()) for key, pieces in self._fragments.items() if key[0] == index
        )
        parts = {ci: part for (i, ci), part in self._parts_added.items() if i == index}
        notes = {ci: found for (i, ci), found in self._annotations.items() if i == index}
        return filled(item, text, frags, parts, notes)

    # --- the results ---------------------------------------------------------------------

    @property
    def text(self) -> str:
        """Choice 0's visible text."""
        return self.choices[0].text

    @property
    def choices(self) -> list[Choice]:
        """Every choice, by index; for Responses, the output (see `_output`)."""
        if self.dialect in _CHATTY:
            return [self._state_choice(i, s) for i, s in sorted(self._choices.items())] or [
                Choice(0)
            ]
        return [choice_of_output(self._output(), self.parts.join)]

    @property
    def ending(self) -> Ending:
        """How the stream ended: choice 0's finish reason, or the terminal response (none:
        incomplete, `NO_TERMINAL_EVENT`)."""
        if self.dialect in _CHATTY:
            state = self._choices.get(0)
            return Ending.from_finish(None if state is None else state.finish_reason)
        if self.terminal is None:
            return Ending("incomplete", NO_TERMINAL_EVENT, None)
        ending = Ending.from_response(self.terminal)
        if ending.status == "completed" and any(
            isinstance(item, dict) and item.get("type") in CLIENT_CALLS for item in self._output()
        ):
            return Ending("completed", None, "tool_calls")  # chat's word for it
        return ending

    def response(self, choices: list[Choice] | None = None) -> dict[str, Any]:
        """The final object in the shape of the endpoint called (see the module docstring).
        `choices`: what `choices` returned, when the caller has it already."""
        chatty = self.dialect in _CHATTY
        if self.shape is Dialect.RESPONSES:
            if chatty:  # chat chunks on /responses: converted
                return self._responses_object((self.choices if choices is None else choices)[0])
            return self._responses_response()
        if chatty and (self.shape is Dialect.CHAT) == (self.dialect is Dialect.CHAT):
            return self._choices_response()
        built = self.choices if choices is None else choices
        if self.shape is Dialect.CHAT:
            return self._chat_completion(built)
        return self._text_completion(built)

    def _responses_response(self) -> dict[str, Any]:
        terminal = self.terminal
        if terminal is not None:
            if isinstance(terminal.get("output"), list):
                return terminal
            return {**terminal, "output": self._rebuilt_output()}
        base = dict(self.created or {})
        base.setdefault("id", "")
        base.setdefault("object", "response")
        base.setdefault("created_at", int(time.time()))
        base.setdefault("status", "in_progress")  # what the server last said
        base.setdefault("model", "")
        base.setdefault("incomplete_details", None)
        base["output"] = self._rebuilt_output()
        base.setdefault("usage", None)
        return base

    # --- another wire format than the endpoint's -----------------------------------------

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
        """A Responses stream as a chat.completion."""
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
                message["reasoning_content"] = choice.reasoning
            if choice.tool_calls:
                message["tool_calls"] = [call.as_chat() for call in choice.tool_calls]
            logprobs = choice.logprobs
            out.append(
                {
                    "index": choice.index,
                    "message": message,
                    "finish_reason": self._finish(choice),
                    "logprobs": {"content": logprobs} if isinstance(logprobs, list) else None,
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
        """Another wire format's stream as a text_completion."""
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
        """A chat stream (chat chunks on `/responses`) as a Responses object."""
        ending = self.ending
        meta = self._meta()
        return {
            "id": meta.get("id") or "",
            "object": "response",
            "created_at": meta.get("created") or int(time.time()),
            "model": meta.get("model") or "",
            "status": ending.status,
            "incomplete_details": None
            if ending.incomplete_reason is None
            else {"reason": ending.incomplete_reason},
            "output": output_of(choice, ending.status),
            "usage": self.usage.as_dict() if self.usage else None,
        }


def _index(value: Any) -> int:
    return value if type(value) is int else 0


def _copied(value: Any) -> Any:
    return list(value) if isinstance(value, list) else value
