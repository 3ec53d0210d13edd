"""Stream events of both dialects, decoded lazily.

`StreamEvent.type` comes from the SSE `event:` field when the server sends one (the Responses
API does), so a consumer that only looks at types never pays for JSON. Without an `event:`
field (Chat Completions, some gateways) the JSON is decoded once to learn the type, and kept.

The dialect is detected per stream from the bytes, not the URL: gateways answer `/responses`
with chat chunks, send `data: [DONE]` after `response.completed`, omit `sequence_number`, or
report `status: "incomplete"` inside `response.completed` (vLLM). `[DONE]` ends a stream
without being an event.

An incomplete response (`response.incomplete`, or `status: "incomplete"`: the output cap or a
content filter ended it) is a result, not an error, as chat's `finish_reason: "length"` is:
`ending` tells both in one vocabulary.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, fields
from enum import Enum, StrEnum
from typing import TYPE_CHECKING, Any, Final, Literal

import orjson

from engine import _flat
from engine._flat import Flat, triples
from engine.errors import (
    ErrorEvent,
    ProtocolError,
    ResponseFailed,
    StreamError,
    snippet,
)
from engine.sse import MAX_EVENT_BYTES, FlatSSEParser, SSEMessage

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Sequence

__all__ = [
    "CHAT_CHUNK",
    "COMPLETION_CHUNK",
    "Delta",
    "Dialect",
    "Ending",
    "EventDecoder",
    "StreamEvent",
    "Usage",
    "decode_json",
]

CHAT_CHUNK = "chat.completion.chunk"
COMPLETION_CHUNK = "text_completion"  # legacy /v1/completions
CHOICE_CHUNKS = frozenset({CHAT_CHUNK, COMPLETION_CHUNK})
TEXT_DELTA = "response.output_text.delta"
# Responses events that carry a token of some kind, and which kind (see `Delta`): every kind
# of output counts, for TTFT and ITL alike.
DELTA_KINDS = {
    TEXT_DELTA: "text",
    "response.refusal.delta": "refusal",
    "response.reasoning_text.delta": "reasoning",
    "response.reasoning_summary_text.delta": "reasoning_summary",
    "response.function_call_arguments.delta": "tool_call",
    "response.custom_tool_call_input.delta": "tool_call",
    "response.mcp_call_arguments.delta": "tool_call",
    "response.code_interpreter_call_code.delta": "tool_call",
    "response.shell_call_command.added": "tool_call",
    "response.shell_call_command.delta": "tool_call",
    "response.audio.delta": "audio",
    "response.audio.transcript.delta": "audio_transcript",
}
# The output item a Responses tool-call fragment writes into (its `Delta.call_type`).
CALL_ITEM_TYPES = {
    "response.function_call_arguments.delta": "function_call",
    "response.custom_tool_call_input.delta": "custom_tool_call",
    "response.mcp_call_arguments.delta": "mcp_call",
    "response.code_interpreter_call_code.delta": "code_interpreter_call",
    "response.shell_call_command.added": "shell_call",
    "response.shell_call_command.delta": "shell_call",
}
# A fragment's field when it is not `delta` (a shell command arrives whole, then grows).
_DELTA_FIELDS = {"response.shell_call_command.added": "command"}
# Where a fragment sits inside its item: a content part, a summary part, a shell command.
_PART_FIELDS = ("content_index", "summary_index", "command_index")
# Chat delta fields, in the kinds of `Delta`. Servers name reasoning two ways (llama.cpp and
# DeepSeek `reasoning_content`, vLLM and Ollama `reasoning`; OpenRouter adds
# `reasoning_details`): the first present is the token, the final message keeps every one.
_CHAT_FIELDS = (("content", "text"), ("refusal", "refusal"))
REASONING_FIELDS = ("reasoning_content", "reasoning")
_OTHER_CHAT_FIELDS = frozenset(
    {*REASONING_FIELDS, "reasoning_details", "audio", "function_call", "tool_calls"}
)
# The text of a whole output item's parts, by part type: an item that arrives whole is a token.
_PART_KINDS = {
    "output_text": ("text", "text"),
    "refusal": ("refusal", "refusal"),
    "reasoning_text": ("reasoning", "text"),
    "summary_text": ("reasoning_summary", "text"),
}
# A call item's input, under the field its type uses.
CALL_INPUT_FIELDS = ("arguments", "input", "code")
TERMINAL_TYPES = frozenset(
    {"response.completed", "response.failed", "response.incomplete", "error"}
)
_DONE = b"[DONE]"
# A Responses delta's text is read with one bare orjson call, which validates the whole object.
# A byte scan for `"delta":"` was faster but not exact: it accepted broken JSON (a trailing
# comma, a raw control character in the string, garbage between members) and took the first
# of duplicate keys where a JSON decoder takes the last, so a corrupt stream could end in
# silent success. No validator cheaper than orjson was found (a regex costs ~4x, splitting at
# quotes ~1x).
# Final: compiled (mypyc), a static rather than a lookup in the module's dict per call.
_loads: Final = orjson.loads
_JSONDecodeError: Final = orjson.JSONDecodeError


class Dialect(StrEnum):
    RESPONSES = "responses"
    CHAT = "chat"
    COMPLETIONS = "completions"  # legacy /v1/completions (`choices[].text`)


@dataclass(frozen=True, slots=True)
class Delta:
    """One token-bearing fragment of an event, the same for every wire format.

    `kind` is "text", "refusal", "reasoning", "reasoning_summary", "tool_call" (`text` is
    then the call's input fragment: function arguments, custom tool input, a shell command,
    code), "audio" (base64 data) or "audio_transcript"; `index` is the chat choice or the
    Responses output item, `part` the content, summary or command index inside that item.
    A tool call is named by `call_index` (chat; None when the server sent none) or `item_id`
    (Responses); its `call_id` and `name` come with its first fragment (chat) or its
    `response.output_item.added` (Responses); `call_type` is the wire's name for it: chat's
    "function" / "custom", "function_call" for chat's legacy `delta.function_call`, or the
    Responses item type ("function_call", "custom_tool_call", "shell_call", ...).
    """

    kind: str
    text: str
    index: int = 0
    call_index: int | None = None
    call_id: str | None = None
    name: str | None = None
    item_id: str | None = None
    logprobs: list[Any] | None = None
    part: int = 0
    call_type: str | None = None

    def __reduce__(self) -> tuple[type[Delta], tuple[Any, ...]]:
        return (Delta, _field_values(self))  # see SSEMessage.__reduce__


def _field_values(obj: Any) -> tuple[Any, ...]:
    """A dataclass's fields in order: its constructor's arguments, for `__reduce__`. Compiled
    (mypyc), unpickling and `copy` otherwise call the class with no argument, then set the
    fields, which a frozen dataclass refuses (docs/compiled.md)."""
    return tuple(getattr(obj, f.name) for f in fields(obj))


class _Sentinel(Enum):
    NOT_JSON = "not a JSON object"
    UNSET = "not computed yet"


NOT_JSON: Final = _Sentinel.NOT_JSON  # `delta_text`: take the general path, which raises
_UNSET: Final = _Sentinel.UNSET


def delta_text(raw: bytes) -> str | Literal[_Sentinel.NOT_JSON] | None:
    """The text of a Responses text-delta event from its raw data, with one bare orjson call
    (no wrappers, no isinstance chains): None when the object has no string `delta`,
    NOT_JSON when the data is not a JSON object at all (invalid JSON or UTF-8), so the caller
    takes the general path, which raises the ProtocolError. The decoded object is not kept:
    freed at once, it costs the garbage collector nothing."""
    try:
        data = _loads(raw)
    except _JSONDecodeError:
        return NOT_JSON
    if type(data) is not dict:
        return NOT_JSON
    value = data.get("delta")
    return value if type(value) is str else None


def decode_json(raw: bytes) -> Any:
    """orjson, with the spec's U+FFFD decoding as the fallback for invalid UTF-8."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        try:
            return orjson.loads(raw.decode("utf-8", "replace"))
        except orjson.JSONDecodeError as exc:
            raise ProtocolError(f"event data is not valid JSON ({exc})", raw=raw) from None


@dataclass(slots=True)
class Usage:
    """Token usage, normalised across dialects."""

    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int = 0  # of the input, served from the prompt cache
    reasoning_tokens: int = 0  # of the output, spent reasoning (not in the visible text)

    @classmethod
    def from_payload(cls, usage: Any) -> Usage | None:
        """From a Responses `usage` or a Chat `usage` object (prompt/completion tokens)."""
        if not isinstance(usage, dict):
            return None
        inp = _count(usage.get("input_tokens", usage.get("prompt_tokens")))
        out = _count(usage.get("output_tokens", usage.get("completion_tokens")))
        cached = _detail(usage, "input_tokens_details", "prompt_tokens_details", "cached_tokens")
        reasoning = _detail(
            usage, "output_tokens_details", "completion_tokens_details", "reasoning_tokens"
        )
        return cls(inp, out, _count(usage.get("total_tokens")) or inp + out, cached, reasoning)

    def as_dict(self) -> dict[str, Any]:
        """The Responses API's shape."""
        return {
            "input_tokens": self.input_tokens,
            "input_tokens_details": {"cached_tokens": self.cached_tokens},
            "output_tokens": self.output_tokens,
            "output_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
            "total_tokens": self.total_tokens,
        }

    def as_chat(self) -> dict[str, Any]:
        """The Chat Completions API's shape."""
        return {
            "prompt_tokens": self.input_tokens,
            "completion_tokens": self.output_tokens,
            "total_tokens": self.total_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
            "completion_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
        }


class StreamEvent:
    """One event of a stream. `received_ns` is the perf_counter_ns of its chunk's arrival.

    Built from the parser's `(raw, event, id)` and the chunk's arrival time, usually only when
    the consumer takes it (see `EventDecoder`).
    """

    __slots__ = ("cached_delta", "cached_deltas", "decoded", "id", "raw", "received_ns", "type")

    def __init__(
        self,
        raw: bytes,
        event: str = "message",
        id: str | None = None,  # noqa: A002
        received_ns: int = 0,
    ) -> None:
        self.raw = raw
        self.id = id
        self.type = event  # the SSE event name until the decoder reads an untyped event's JSON
        self.received_ns = received_ns
        self.decoded: Any = None
        # text_delta, computed once: several handlers ask for it.
        self.cached_delta: str | Literal[_Sentinel.UNSET] | None = _UNSET
        self.cached_deltas: tuple[Delta, ...] | None = None

    def __repr__(self) -> str:
        return f"<StreamEvent {self.type} at {self.received_ns} ns: {snippet(self.raw, 60)}>"

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled and copied whole (its decoded data and deltas too), alike compiled and not
        (compiled, the default would call the class with no argument)."""
        state = (self.decoded, self.cached_delta, self.cached_deltas)
        return (_rebuilt_event, (self.raw, self.type, self.id, self.received_ns, *state))

    @property
    def data(self) -> dict[str, Any]:
        """The event's JSON object, decoded on first use."""
        data = self.decoded
        if data is None:
            data = decode_json(self.raw)
            if not isinstance(data, dict):  # not kept: every later read raises too
                raise ProtocolError("event data is not a JSON object", raw=self.raw)
            self.decoded = data
        return data  # type: ignore[no-any-return]

    @property
    def text_delta(self) -> str | None:
        """The text this event adds to the output (Responses delta or chat content), or None."""
        cached = self.cached_delta
        if cached is not _UNSET:
            return cached
        if self.type == TEXT_DELTA and self.decoded is None:
            fast = delta_text(self.raw)  # the fast path, once per token
            if fast is not NOT_JSON:
                self.cached_delta = fast
                return fast
        delta = self.cached_delta = self._text_delta()
        return delta

    def _text_delta(self) -> str | None:
        typ = self.type
        if typ == TEXT_DELTA:
            delta = self.data.get("delta")
            return delta if isinstance(delta, str) else None
        if typ in _WHOLE_TYPES:  # the text of items that arrived whole (see EventDecoder)
            texts = [d.text for d in self.cached_deltas or () if d.kind == "text"]
            return "".join(texts) if texts else None
        if typ in CHOICE_CHUNKS:
            choices = _choices(self.data)
            if choices:
                first = choices[0]
                if isinstance(first, dict) and first.get("index", 0) == 0:
                    if typ == COMPLETION_CHUNK:
                        content = first.get("text")
                    else:
                        delta = first.get("delta")
                        content = delta.get("content") if isinstance(delta, dict) else None
                    return content if isinstance(content, str) else None
        return None

    @property
    def deltas(self) -> tuple[Delta, ...]:
        """Every token-bearing fragment of this event (text, refusal, reasoning, tool-call
        arguments), for every choice or output item, decoded once."""
        deltas = self.cached_deltas
        if deltas is None:
            deltas = self.cached_deltas = self._deltas()
        return deltas

    @property
    def has_token(self) -> bool:
        """Whether the event carries a token of any kind (text, reasoning, a tool call...)."""
        if self.type == TEXT_DELTA:
            return bool(self.text_delta)
        return any(d.text or d.name for d in self.deltas)

    def _deltas(self) -> tuple[Delta, ...]:
        """Built into a list, not yielded: this runs once per chat chunk."""
        typ = self.type
        kind = DELTA_KINDS.get(typ)
        if kind is not None:
            data = self.data
            text = data.get(_DELTA_FIELDS.get(typ, "delta"))
            if not isinstance(text, str):
                return ()
            logprobs = data.get("logprobs")
            return (
                Delta(
                    kind,
                    text,
                    _int(data.get("output_index")),
                    item_id=_str_or_none(data.get("item_id")),
                    logprobs=logprobs if isinstance(logprobs, list) and logprobs else None,
                    part=_part(data),
                    call_type=CALL_ITEM_TYPES.get(typ),
                ),
            )
        if typ == ITEM_ADDED:  # a call's name, the model's first token of it (as in chat)
            data = self.data
            return _call_named(data.get("item"), _int(data.get("output_index")))
        if typ not in CHOICE_CHUNKS:
            return ()
        found: list[Delta] = []
        for choice in _choices(self.data):
            if not isinstance(choice, dict):
                continue
            index = _int(choice.get("index"))
            if typ == COMPLETION_CHUNK:
                text = choice.get("text")
                if isinstance(text, str) and text:
                    found.append(Delta("text", text, index))
                continue
            delta = choice.get("delta")
            if isinstance(delta, dict):
                _chat_deltas(delta, index, choice.get("logprobs"), found)
        return tuple(found)

    @property
    def sequence_number(self) -> int | None:
        seq = self.data.get("sequence_number")
        return seq if isinstance(seq, int) else None

    @property
    def is_terminal(self) -> bool:
        """True for the event that ends a Responses stream (completed, failed, ...)."""
        return self.type in TERMINAL_TYPES

    @property
    def response(self) -> dict[str, Any] | None:
        """The `response` object carried by `response.*` lifecycle events."""
        response = self.data.get("response") if self.type.startswith("response.") else None
        return response if isinstance(response, dict) else None

    @property
    def usage(self) -> Usage | None:
        """Normalised usage, from `response.completed`-like events or a chat usage chunk."""
        if self.type in CHOICE_CHUNKS:
            return Usage.from_payload(self.data.get("usage"))
        response = self.response
        return Usage.from_payload(response.get("usage")) if response else None

    def error(self) -> StreamError | None:
        """The typed failure this event reports, if any (`error`, `response.failed`)."""
        typ = self.type
        if typ == "error" or (typ in CHOICE_CHUNKS and _chunk_error(self.data)):
            err = _error_object(self.data.get("error", self.data))
            message = _str_or_none(err.get("message"))
            return ErrorEvent(
                f"server sent an error event: {message or err}",
                data=self.data,
                code=_str_or_none(err.get("code")),
                server_message=message,
            )
        if typ not in TERMINAL_TYPES:
            return None
        response = self.response or {}
        status = response.get("status")
        if typ == "response.failed" or status == "failed":
            err = _error_object(response.get("error"))
            message = _str_or_none(err.get("message"))
            return ResponseFailed(
                f"response failed: {message or err or 'no reason given'}",
                data=self.data,
                code=_str_or_none(err.get("code")),
                server_message=message,
            )
        return None

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready view for writers: type, arrival time and the decoded data."""
        return {"type": self.type, "received_ns": self.received_ns, "data": self.data}


def _rebuilt_event(
    raw: bytes,
    typ: str,
    id_: str | None,
    received_ns: int,
    decoded: Any,
    cached_delta: str | Literal[_Sentinel.UNSET] | None,
    cached_deltas: tuple[Delta, ...] | None,
) -> StreamEvent:
    """A StreamEvent from what `StreamEvent.__reduce__` kept."""
    event = StreamEvent(raw, typ, id_, received_ns)
    event.decoded = decoded
    event.cached_delta = cached_delta
    event.cached_deltas = cached_deltas
    return event


# How a stream ended, in both vocabularies: chat's finish_reason and the Responses
# incomplete_details.reason (OpenAI's own mapping: "length" is "max_output_tokens").
_INCOMPLETE_BY_FINISH = {"length": "max_output_tokens", "content_filter": "content_filter"}
_FINISH_BY_INCOMPLETE = {v: k for k, v in _INCOMPLETE_BY_FINISH.items()}


@dataclass(frozen=True, slots=True)
class Ending:
    """How a stream ended: `status` "completed" or "incomplete", the Responses
    `incomplete_reason` and chat's `finish_reason`, each filled for both dialects."""

    status: str = "completed"
    incomplete_reason: str | None = None
    finish_reason: str | None = None

    def __reduce__(self) -> tuple[type[Ending], tuple[Any, ...]]:
        return (Ending, _field_values(self))  # see Delta

    @classmethod
    def from_finish(cls, finish_reason: str | None) -> Ending:
        """From a chat `finish_reason` ("length" and "content_filter" are incomplete)."""
        reason = _INCOMPLETE_BY_FINISH.get(finish_reason or "")
        return cls("incomplete" if reason else "completed", reason, finish_reason)

    @classmethod
    def from_response(cls, response: dict[str, Any] | None) -> Ending:
        """From a Responses object's `status` and `incomplete_details`."""
        response = response or {}
        if response.get("status") != "incomplete":
            return cls("completed", None, "stop")
        details = response.get("incomplete_details")
        reason = _str_or_none(details.get("reason") if isinstance(details, dict) else details)
        return cls("incomplete", reason, _FINISH_BY_INCOMPLETE.get(reason or "", reason))


def finish_reasons(data: dict[str, Any]) -> tuple[tuple[int, str], ...]:
    """A chat chunk's (choice index, finish_reason) pairs, for the decoder and the assembler
    alike. Most chunks have none: they get the shared empty tuple, no allocation."""
    found: tuple[tuple[int, str], ...] = ()
    for choice in _choices(data):
        if isinstance(choice, dict) and choice.get("finish_reason"):
            found += ((_int(choice.get("index")), str(choice["finish_reason"])),)
    return found


def _chat_deltas(delta: dict[str, Any], index: int, logprobs: Any, found: list[Delta]) -> None:
    """The fragments of one chat choice's `delta`, added to `found`: text, refusal,
    reasoning, audio and every kind of call (tool calls of any type, legacy `function_call`)."""
    for field, kind in _CHAT_FIELDS:
        text = delta.get(field)
        if isinstance(text, str) and text:
            entries = logprobs.get(field) if isinstance(logprobs, dict) else None
            found.append(
                Delta(
                    kind,
                    text,
                    index,
                    logprobs=entries if isinstance(entries, list) and entries else None,
                )
            )
    if _OTHER_CHAT_FIELDS.isdisjoint(delta):
        return  # the usual chunk: text only
    reasoning = _reasoning_text(delta)
    if reasoning:
        found.append(Delta("reasoning", reasoning, index))
    audio = delta.get("audio")
    if isinstance(audio, dict):
        for field, kind in (("data", "audio"), ("transcript", "audio_transcript")):
            text = audio.get(field)
            if isinstance(text, str) and text:
                found.append(Delta(kind, text, index))
    legacy = delta.get("function_call")
    if isinstance(legacy, dict):
        found.append(_call_delta(legacy, index, None, None, "function_call"))
    calls = delta.get("tool_calls")
    for call in calls if isinstance(calls, list) else ():
        if not isinstance(call, dict):
            continue
        call_type = call.get("type")
        if not isinstance(call_type, str):
            call_type = "custom" if "custom" in call else "function"
        body = call.get(call_type)
        call_index = call.get("index")
        found.append(
            _call_delta(
                body if isinstance(body, dict) else {},
                index,
                call_index if type(call_index) is int else None,
                _str_or_none(call.get("id")),
                call_type,
            )
        )


def _call_delta(
    body: dict[str, Any], index: int, call_index: int | None, call_id: str | None, kind: str
) -> Delta:
    """A chat call's fragment: its `arguments` (function) or `input` (custom)."""
    text = next((v for f in CALL_INPUT_FIELDS if isinstance(v := body.get(f), str)), "")
    return Delta(
        "tool_call",
        text,
        index,
        call_index=call_index,
        call_id=call_id,
        name=_str_or_none(body.get("name")),
        call_type=kind,
    )


def _reasoning_text(delta: dict[str, Any]) -> str:
    """A chat delta's reasoning token: the first field a server used, else the text of
    OpenRouter's `reasoning_details` entries."""
    for field in REASONING_FIELDS:
        text = delta.get(field)
        if isinstance(text, str) and text:
            return text
    return "".join(
        text
        for entry in _list(delta.get("reasoning_details"))
        if isinstance(entry, dict)
        for text in (entry.get("text"), entry.get("summary"))
        if isinstance(text, str)
    )


def item_deltas(item: Any, index: int) -> tuple[Delta, ...]:
    """A whole Responses output item as the fragments its deltas would have carried: for a
    stream that sends items whole (no delta), whose output is then still a token."""
    if not isinstance(item, dict):
        return ()
    item_id = _str_or_none(item.get("id"))
    kind = item.get("type")
    if isinstance(kind, str) and kind.endswith("_call"):
        return (
            Delta(
                "tool_call",
                call_input(item),
                index,
                call_id=_str_or_none(item.get("call_id")),
                name=_str_or_none(item.get("name")),
                item_id=item_id,
                call_type=kind,
            ),
        )
    found: list[Delta] = []
    for field in ("content", "summary"):
        for part_index, part in enumerate(_list(item.get(field))):
            known = _PART_KINDS.get(str(part.get("type"))) if isinstance(part, dict) else None
            if known is not None:
                text = part.get(known[1])
                if isinstance(text, str) and text:
                    found.append(Delta(known[0], text, index, item_id=item_id, part=part_index))
    return tuple(found)


def _call_named(item: Any, index: int) -> tuple[Delta, ...]:
    """The fragment of a call item announced with its name (`output_item.added`)."""
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        return ()
    kind = item.get("type")
    if not isinstance(kind, str) or not kind.endswith("_call"):
        return ()
    return (
        Delta(
            "tool_call",
            "",
            index,
            call_id=_str_or_none(item.get("call_id")),
            name=item["name"],
            item_id=_str_or_none(item.get("id")),
            call_type=kind,
        ),
    )


def call_input(item: dict[str, Any]) -> str:
    """What the model wrote for a call item: its arguments, input or code, else its action
    (a shell call's commands, a search's query) as JSON."""
    for field in CALL_INPUT_FIELDS:
        text = item.get(field)
        if isinstance(text, str):
            return text
    action = item.get("action")
    return "" if action is None else orjson.dumps(action).decode()


def _part(data: dict[str, Any]) -> int:
    """A Responses fragment's place inside its item (content, summary or command index)."""
    for field in _PART_FIELDS:
        value = data.get(field)
        if type(value) is int:
            return value
    return 0


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _choices(data: dict[str, Any]) -> list[Any]:
    """A chat chunk's `choices`; an odd shape from a server (null, an object) counts as none."""
    choices = data.get("choices")
    return choices if isinstance(choices, list) else []


def _chunk_error(data: dict[str, Any]) -> bool:
    """Whether a chat chunk carries an `error` (OpenRouter and other gateways end a stream
    that way, with `finish_reason: "error"`): as openai-python, any value but null counts."""
    return bool(data.get("error"))


def _error_object(value: Any) -> dict[str, Any]:
    """A server's error field as a dict: a bare string (or number) is its message."""
    if isinstance(value, dict):
        return value
    return {} if value is None else {"message": str(value)}


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def _int(value: Any) -> int:
    """An index from a server: anything but an int counts as 0."""
    return value if type(value) is int else 0


def _detail(usage: dict[str, Any], responses: str, chat: str, name: str) -> int:
    """A count inside `*_tokens_details`, under either API's name for the object."""
    details = usage.get(responses, usage.get(chat))
    return _count(details.get(name)) if isinstance(details, dict) else 0


def _count(value: Any) -> int:
    """A token count; anything but a non-negative whole number (a string, a bool) counts 0."""
    if type(value) is float and value.is_integer():  # 5.0 from a loose server; not inf/nan
        value = int(value)
    return value if type(value) is int and value >= 0 else 0


# Event names the reader must look into; any other typed event passes through untouched.
_SPECIAL = TERMINAL_TYPES | CHOICE_CHUNKS | {"message"}
# Until a stream's first fragment, an item that arrives whole is looked into too: its output
# is the first token (a server that sends no deltas, or a built-in tool's call).
ITEM_DONE = "response.output_item.done"
ITEM_ADDED = "response.output_item.added"
_SPECIAL_BEFORE_FRAGMENT = _SPECIAL | {ITEM_DONE}
_FRAGMENT_TYPES = frozenset(DELTA_KINDS)
# Events whose fragments, when they have any, are their items' whole output.
_WHOLE_TYPES = TERMINAL_TYPES | {ITEM_DONE}


def events_of(items: Flat, received_ns: int) -> Iterator[StreamEvent]:
    """The StreamEvents of one chunk (the engine's flat layout: `engine._flat`), each built
    when it is taken."""
    for raw, name, id_ in triples(items):
        yield raw if name is None else StreamEvent(raw, name, id_, received_ns)


class EventDecoder:
    """Turns one stream's SSE messages into StreamEvents and tracks its dialect and end.

    The engine's reader calls `scan`, which leaves most events as the parser made them:
    bytes and strings in a flat list. A chunk's events wait in the queue until the consumer
    runs, and objects that wait are what the cyclic garbage collector counts, traverses and
    promotes (a StreamEvent per event built here cost a fifth of the client's CPU on fast
    streams, with 25 ms full collections). The consumer builds each StreamEvent as it hands it
    on, so an event that a handler drops is freed at once. `decode` is the eager form.
    """

    __slots__ = ("dialect", "done", "finish_reason", "fragment_seen", "terminal")

    def __init__(self) -> None:
        self.dialect: Dialect | None = None
        self.finish_reason: str | None = None  # chat: the last chunk's reason, once seen
        self.done = False  # `data: [DONE]` seen
        self.terminal: StreamEvent | None = None  # also a chat chunk carrying an `error`
        # A fragment event (a delta) seen: whole items need no look any more.
        self.fragment_seen = False

    @property
    def finished(self) -> bool:
        """The stream has said its last word: a terminal event, or [DONE]."""
        return self.done or self.terminal is not None

    def parser(self, max_event_bytes: int = MAX_EVENT_BYTES) -> FlatSSEParser:
        """An SSE parser whose messages come as one flat list, ready for `scan`."""
        return FlatSSEParser(max_event_bytes)

    def decode(
        self, messages: Sequence[SSEMessage | StreamEvent], received_ns: int
    ) -> list[StreamEvent]:
        """Stamp, type and check the messages of one chunk (`SSEMessage`s, or events);
        drops `[DONE]`."""
        flat = _flat.flatten(
            [(m.raw, m.event if isinstance(m, SSEMessage) else m.type, m.id) for m in messages]
        )
        return list(events_of(self.scan(flat, received_ns), received_ns))

    def scan(self, messages: Flat, received_ns: int) -> Flat:
        """`decode`, lazily, for the engine's reader: a chunk in the engine's own layout
        (`engine._flat`, what `parser()` returns) in which only the events it had to read are
        built. May return `messages` itself."""
        names = _flat.names(messages)
        if not self.fragment_seen and _FRAGMENT_TYPES.isdisjoint(names):
            special = _SPECIAL_BEFORE_FRAGMENT.intersection(names)
        else:  # a fragment in this chunk is as early as an item in it: no look needed
            self.fragment_seen = True
            special = _SPECIAL.intersection(names)
        # Events before the first special one pass as they are (all of them, usually).
        plain = min(map(names.index, special)) if special else len(names)
        if self.dialect is None:
            for i, name in enumerate(itertools.islice(names, plain)):
                # None: built already
                if self._detect(_flat.built(messages, i).type if name is None else name):
                    break
        if not special:
            return messages
        passing, looked = _flat.split(messages, plain)
        return passing + self._look(looked, received_ns)

    def first_token(self, events: Flat, received_ns: int) -> bool:
        """Whether a chunk (what `scan` returned) holds a token of any kind (text, reasoning,
        a tool call): the reader's TTFT. The events it had to build stay in the chunk."""
        for i, event in enumerate(events_of(events, received_ns)):
            _flat.put(events, i, event)  # built: the consumer takes it as it is
            if event.has_token:
                return True
        return False

    def _look(self, messages: Flat, received_ns: int) -> Flat:
        """The events from the first one that needs a look (a terminal, [DONE], untyped)."""
        out: Flat = []
        for raw, name, id_ in triples(messages):
            typ = raw.type if name is None else name  # None: an event built already
            watch = _SPECIAL if self.fragment_seen else _SPECIAL_BEFORE_FRAGMENT
            if typ in watch and name is not None:
                if typ == "message" and raw == _DONE:
                    self.done = True  # ends the stream; not an event
                    continue
                event = StreamEvent(raw, name, id_, received_ns)
                if typ == "message":
                    self._untyped(event)
                    typ = event.type
                if typ in TERMINAL_TYPES and self.terminal is None:
                    self.terminal = event
                    if not self.fragment_seen:
                        response = event.response or {}
                        self._whole(event, enumerate(_list(response.get("output"))))
                elif typ in CHOICE_CHUNKS:
                    self._chunk(event)
                elif not self.fragment_seen:
                    if typ == ITEM_DONE:
                        data = event.data
                        self._whole(event, [(_int(data.get("output_index")), data.get("item"))])
                    elif typ in _FRAGMENT_TYPES:  # an untyped delta (llama.cpp)
                        self.fragment_seen = True
                out += (event, None, None)
            else:
                out += (raw, name, id_)
            if self.dialect is None:
                self._detect(typ)
        return out

    def _chunk(self, event: StreamEvent) -> None:
        """A chat chunk: an `error` in it ends the stream as an error; else its finish."""
        data = event.data
        if _chunk_error(data):
            if self.terminal is None:
                self.terminal = event
        elif self.finish_reason is None:
            ends = finish_reasons(data)
            if ends:
                self.finish_reason = ends[0][1]  # the first choice to end

    def _whole(self, event: StreamEvent, items: Iterable[tuple[int, Any]]) -> None:
        """Items that arrived whole before any fragment: their output is the event's
        fragments (the stream's first token, and its text)."""
        deltas = tuple(d for index, item in items for d in item_deltas(item, index))
        if any(d.text or d.name for d in deltas):
            event.cached_deltas = deltas
            self.fragment_seen = True

    def _detect(self, typ: str) -> bool:
        """Set the dialect if this event type tells it; whether it did."""
        if typ == CHAT_CHUNK:
            self.dialect = Dialect.CHAT
            self.fragment_seen = True  # no whole items in a chat stream
        elif typ == COMPLETION_CHUNK:
            self.dialect = Dialect.COMPLETIONS
            self.fragment_seen = True
        elif typ.startswith("response."):
            self.dialect = Dialect.RESPONSES
        else:
            return False
        return True

    @staticmethod
    def _untyped(event: StreamEvent) -> None:
        """An event without an `event:` field: its type is in the JSON (decoded once)."""
        raw = event.raw
        data = decode_json(raw)
        if not isinstance(data, dict):
            raise ProtocolError("event data is not a JSON object", raw=raw)
        typ = data.get("type")
        if not isinstance(typ, str):
            if data.get("object") in CHOICE_CHUNKS:
                typ = data["object"]
            elif "error" in data:
                typ = "error"
            else:
                raise ProtocolError("event has neither a type nor a known object", raw=raw)
        event.type = typ
        event.decoded = data
