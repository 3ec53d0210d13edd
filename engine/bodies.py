"""Request bodies: the one-prompt body, in each endpoint's own names for the prompt and the
output cap, for `run` and `bench` alike (sending adds `stream`)."""

from __future__ import annotations

from typing import Any, Final

from engine.events import Dialect

__all__ = ["MAX_TOKENS_FIELDS", "messages_body", "prompt_body"]

# Each endpoint's name for the output cap.
MAX_TOKENS_FIELDS: Final = {
    Dialect.RESPONSES: "max_output_tokens",
    Dialect.CHAT: "max_completion_tokens",
    Dialect.COMPLETIONS: "max_tokens",
}


def prompt_body(
    endpoint: Dialect, model: str, prompt: str, max_tokens: int | None
) -> dict[str, Any]:
    """A one-user-message body in the endpoint's own names for the prompt and the output cap
    (`max_tokens`; None: no cap), for `run` and `bench` alike; sending adds `stream`."""
    return messages_body(endpoint, model, [{"role": "user", "content": prompt}], max_tokens)


def messages_body(
    endpoint: Dialect, model: str, messages: list[dict[str, str]], max_tokens: int | None
) -> dict[str, Any]:
    """A conversation's body (system, user and assistant messages in order): chat's
    `messages`, the Responses `input` list, or legacy completions' one prompt of the messages'
    texts joined by blank lines (it has no roles)."""
    body: dict[str, Any]
    if endpoint is Dialect.COMPLETIONS:  # legacy /v1/completions: a bare prompt
        body = {"model": model, "prompt": "\n\n".join(m["content"] for m in messages)}
    elif endpoint is Dialect.CHAT:
        body = {"model": model, "messages": messages}
    else:
        body = {"model": model, "input": [_input_item(m) for m in messages]}
    if max_tokens is not None:
        body[MAX_TOKENS_FIELDS[endpoint]] = max_tokens
    return body


def _input_item(message: dict[str, str]) -> dict[str, Any]:
    """A Responses input item: an answer goes back as the output message it came as (typed,
    its text an `output_text` part, as the SDK sends `response.output` back; llama-server
    refuses an untyped assistant item), any other message as it is."""
    if message["role"] != "assistant":
        return message
    part = {"type": "output_text", "text": message["content"]}
    return {"type": "message", "role": "assistant", "content": [part]}
