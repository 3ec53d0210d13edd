"""`Choice` and `ToolCall`: an answer's parts in one shape for every wire format.

They are read from the final object (`choice_of_message`: a chat message; `choice_of_output`:
a Responses output), so they never disagree with it. The Responses output items a stream left
unfinished (no `response.output_item.done`) are filled in from their fragments here
(`filled`), and a choice of another wire format is written as items (`output_of`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, TypeVar

from engine.events import REASONING_FIELDS, Delta, call_input

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = [
    "CLIENT_CALLS",
    "Choice",
    "ToolCall",
    "call_of",
    "choice_of_message",
    "choice_of_output",
    "filled",
    "output_of",
    "output_text",
    "stand_in",
]

_T = TypeVar("_T")
# Responses calls the client must run: a completed response with one ends in `tool_calls`.
CLIENT_CALLS: Final = frozenset(
    {
        "function_call",
        "custom_tool_call",
        "shell_call",
        "local_shell_call",
        "computer_call",
        "apply_patch_call",
    }
)
# Where a Responses call item keeps the input its fragments build.
_CALL_FIELDS = {
    "function_call": "arguments",
    "custom_tool_call": "input",
    "mcp_call": "arguments",
    "code_interpreter_call": "code",
}
# A fragment of an unfinished item: ((kind, part index), its text).
Fragments = list[tuple[tuple[str, int], str]]


@dataclass(slots=True)
class ToolCall:
    """One call of any kind: its id, name, input (function arguments, custom tool input,
    a shell call's action as JSON) and `type`, the wire's name for it (chat's "function" /
    "custom", "function_call" for chat's legacy `function_call`, or the Responses item type:
    "function_call", "custom_tool_call", "shell_call", ...)."""

    id: str | None
    name: str | None
    arguments: str = ""
    type: str = "function"

    def as_chat(self) -> dict[str, Any]:
        """The call as a chat `message.tool_calls` entry (converting a Responses item)."""
        if self.type in ("custom", "custom_tool_call"):
            return {
                "id": self.id,
                "type": "custom",
                "custom": {"name": self.name, "input": self.arguments},
            }
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


@dataclass(slots=True)
class Choice:
    """One answer: a chat choice, or (Responses) the whole output. `logprobs` is the list of
    token entries (chat, Responses) or the legacy endpoint's logprobs object."""

    index: int
    text: str = ""
    refusal: str | None = None
    reasoning: str | None = None
    reasoning_summary: str | None = None  # summary parts joined by a blank line
    tool_calls: list[ToolCall] = field(default_factory=list)
    finish_reason: str | None = None
    logprobs: list[Any] | dict[str, Any] | None = None


def choice_of_message(
    index: int, message: dict[str, Any], finish_reason: str | None, logprobs: Any
) -> Choice:
    """A chat choice, read from its final message (every kind of call in it)."""
    calls: list[ToolCall] = []
    legacy = message.get("function_call")
    if isinstance(legacy, dict):
        calls.append(_chat_call(legacy, None, "function_call"))
    for call in _list(message.get("tool_calls")):
        if isinstance(call, dict):
            kind = _str_or(call.get("type"), "custom" if "custom" in call else "function")
            body = call.get(kind)
            calls.append(
                _chat_call(body if isinstance(body, dict) else {}, _str(call.get("id")), kind)
            )
    content = logprobs.get("content") if isinstance(logprobs, dict) else None
    return Choice(
        index,
        _str_or(message.get("content"), ""),
        _str_or(message.get("refusal"), None),
        _chat_reasoning(message),
        None,
        calls,
        finish_reason,
        content or None,
    )


def filled(
    item: dict[str, Any],
    text: str,
    frags: Fragments,
    parts: dict[int, dict[str, Any]],
    annotations: dict[int, list[Any]],
) -> dict[str, Any]:
    """An item never done: its `output_item.added` (or stand-in) with what its fragments
    said; `text` is a message's share of the text deltas, `parts` its content parts added."""
    item = dict(item)
    kind = item.get("type")
    if kind == "message":
        item["content"] = _message_content(text, frags, parts, annotations)
    elif kind == "reasoning":
        for name, part_type, frag_kind in (
            ("content", "reasoning_text", "reasoning"),
            ("summary", "summary_text", "reasoning_summary"),
        ):
            found = [{"type": part_type, "text": t} for (k, _), t in frags if k == frag_kind]
            item[name] = found or _list(item.get(name))
    elif kind == "shell_call":
        commands = [t for (k, _), t in frags if k == "tool_call"]
        if commands:
            action = item.get("action")
            item["action"] = {**(action if isinstance(action, dict) else {}), "commands": commands}
    elif kind in _CALL_FIELDS:
        name = _CALL_FIELDS[kind]
        item[name] = _str_or(item.get(name), "") + "".join(t for _, t in frags)
    return item


def _message_content(
    text: str,
    frags: Fragments,
    parts: dict[int, dict[str, Any]],
    annotations: dict[int, list[Any]],
) -> list[dict[str, Any]]:
    parts = {ci: dict(p) for ci, p in parts.items()}
    for (kind, ci), refusal in frags:
        if kind == "refusal":
            parts.setdefault(ci, {"type": "refusal"})["refusal"] = refusal
    texts = [ci for ci in sorted(parts) if parts[ci].get("type") == "output_text"]
    if text and not texts:
        ci = 0 if 0 not in parts else max(parts) + 1
        parts[ci] = {"type": "output_text", "logprobs": []}
        texts = [ci]
    for ci in texts:
        part = parts[ci]
        part["text"] = _str_or(part.get("text"), "") + (text if ci == texts[0] else "")
        part["annotations"] = annotations.get(ci, _list(part.get("annotations")))
    return [parts[ci] for ci in sorted(parts)]


def _str(value: Any) -> str | None:
    return None if value is None else str(value)


def _str_or(value: Any, default: _T) -> str | _T:
    return value if isinstance(value, str) else default


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _chat_call(body: dict[str, Any], call_id: str | None, kind: str) -> ToolCall:
    """A merged chat call: a function's arguments, a custom tool's input."""
    return ToolCall(call_id, _str(body.get("name")), call_input(body), kind)


def _chat_reasoning(message: dict[str, Any]) -> str | None:
    """A chat message's reasoning, under the first name the server used for it."""
    for name in REASONING_FIELDS:
        text = message.get(name)
        if isinstance(text, str):
            return text
    details = [
        text
        for entry in _list(message.get("reasoning_details"))
        if isinstance(entry, dict)
        for text in (entry.get("text"), entry.get("summary"))
        if isinstance(text, str)
    ]
    return "".join(details) if details else None


def stand_in(d: Delta) -> dict[str, Any]:
    """The item a delta belongs to when its `output_item.added` never came."""
    item_id = d.item_id or ""
    if d.kind in ("text", "refusal"):
        return {
            "id": item_id,
            "type": "message",
            "status": "in_progress",
            "content": [],
            "role": "assistant",
        }
    if d.kind.startswith("reasoning"):
        return {"id": item_id, "type": "reasoning", "summary": [], "content": []}
    return {"id": item_id, "type": d.call_type or "function_call", "status": "in_progress"}


def output_text(item: dict[str, Any]) -> str:
    """A message item's visible text (the SDK's `output_text`)."""
    return "".join(
        part["text"]
        for part in _list(item.get("content"))
        if isinstance(part, dict)
        and part.get("type") == "output_text"
        and isinstance(part.get("text"), str)
    )


def call_of(item: dict[str, Any]) -> ToolCall | None:
    """The call an output item makes, if it is one (`*_call`, any tool)."""
    kind = item.get("type")
    if not isinstance(kind, str) or not kind.endswith("_call"):
        return None
    name = _str(item.get("name")) or kind.removesuffix("_call")
    return ToolCall(_str(item.get("call_id") or item.get("id")), name, call_input(item), kind)


def choice_of_output(output: list[Any], deltas: Callable[[], str]) -> Choice:
    """The one choice of a Responses output. Its text is the SDK's `output_text`, or the text
    deltas' when the output holds no message (a gateway's empty `output`)."""
    choice = Choice(0)
    texts: list[str] = []
    refusal: list[str] = []
    reasoning: list[str] = []
    summary: list[str] = []
    logprobs: list[Any] = []
    has_message = False
    for item in output:
        if not isinstance(item, dict):
            continue
        call = call_of(item)
        if call is not None:
            choice.tool_calls.append(call)
            continue
        has_message = has_message or item.get("type") == "message"
        for part in _list(item.get("content")) + _list(item.get("summary")):
            if not isinstance(part, dict):
                continue
            ptype = part.get("type")
            if ptype == "output_text":
                texts.append(_str_or(part.get("text"), ""))
                logprobs.extend(_list(part.get("logprobs")))
            elif ptype == "refusal":
                refusal.append(_str_or(part.get("refusal"), ""))
            elif ptype == "reasoning_text":
                reasoning.append(_str_or(part.get("text"), ""))
            elif ptype == "summary_text":
                summary.append(_str_or(part.get("text"), ""))
    choice.text = "".join(texts) if has_message else deltas()
    choice.refusal = "".join(refusal) if refusal else None
    choice.reasoning = "".join(reasoning) if reasoning else None
    choice.reasoning_summary = "\n\n".join(summary) if summary else None
    choice.logprobs = logprobs or None
    return choice


def output_of(choice: Choice, status: str) -> list[dict[str, Any]]:
    """Responses output items for a choice of another wire format: reasoning, message, calls."""
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
                "logprobs": choice.logprobs if isinstance(choice.logprobs, list) else [],
            }
        )
    if choice.refusal is not None:
        content.append({"type": "refusal", "refusal": choice.refusal})
    if content:
        items.append(
            {"type": "message", "id": "", "status": status, "role": "assistant", "content": content}
        )
    for call in choice.tool_calls:
        custom = call.type in ("custom", "custom_tool_call")
        items.append(
            {
                "type": "custom_tool_call" if custom else "function_call",
                "id": "",
                "call_id": call.id,
                "name": call.name,
                "input" if custom else "arguments": call.arguments,
                "status": "completed",
            }
        )
    return items
