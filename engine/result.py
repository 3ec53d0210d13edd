"""`StreamResult`: what `Engine.run` returns, a plain value (the batch runner writes it, the
load tester records it; neither needs the client for it)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Sequence

    from engine.choices import Choice, ToolCall
    from engine.events import Dialect, Usage

__all__ = ["StreamResult"]


@dataclass(slots=True)
class StreamResult:
    """What `Engine.run` returns. `response` has the shape of the endpoint called: a
    Responses object for `/responses`, a `chat.completion` for `/chat/completions`.

    How the stream ended is told the same way for both wire formats: `status` is
    "completed" or "incomplete" (the output cap or a content filter stopped it: a result,
    not an error), `incomplete_reason` the Responses reason (`max_output_tokens`,
    `content_filter`) and `finish_reason` chat's (`stop`, `length`, `content_filter`, ...)."""

    text: str
    usage: Usage | None
    response: dict[str, Any]
    events: int  # number of events the stream delivered
    http_status: int
    request_id: str | None
    custom_id: str | None
    dialect: Dialect | None
    attempts: int
    started_ns: int
    first_byte_ns: int | None
    first_token_ns: int | None
    finished_ns: int
    # Arrival of every token-bearing event: a compact `array('q')` (8 bytes each).
    token_times_ns: Sequence[int] = field(default_factory=list)
    status: str = "completed"
    incomplete_reason: str | None = None
    finish_reason: str | None = None
    # Sent again on a fresh connection because a pooled one was dead on arrival (a server
    # that closes kept-alive connections): transparent, not a retry (see `attempts`).
    reconnects: int = 0
    first_text_ns: int | None = None  # the first visible text (after any reasoning/tool call)
    # The last attempt's way out (`engine.transport`): when it had its connection (the request
    # is written next), how long it waited for a free one, what a new one cost (0: reused).
    sent_ns: int = 0
    pool_wait_ns: int = 0
    connect_ns: int = 0
    choices: list[Choice] = field(default_factory=list)  # every part of every choice

    @property
    def ttft_s(self) -> float | None:
        """Request start to the first token of any kind: text, reasoning, refusal or a tool
        call (what a user of a reasoning or tool-calling model waits for first)."""
        if self.first_token_ns is None:
            return None
        return (self.first_token_ns - self.started_ns) / 1e9

    @property
    def ttft_text_s(self) -> float | None:
        """Request start to the first visible text."""
        if self.first_text_ns is None:
            return None
        return (self.first_text_ns - self.started_ns) / 1e9

    @property
    def tool_calls(self) -> list[ToolCall]:
        """The first choice's tool calls (id, name, arguments joined from their fragments)."""
        return self.choices[0].tool_calls if self.choices else []

    @property
    def reasoning(self) -> str | None:
        """The first choice's reasoning text, if the server streamed any."""
        return self.choices[0].reasoning if self.choices else None

    @property
    def refusal(self) -> str | None:
        return self.choices[0].refusal if self.choices else None

    @property
    def e2e_s(self) -> float:
        return (self.finished_ns - self.started_ns) / 1e9

    @property
    def itl_s(self) -> list[float]:
        """Every gap between consecutive tokens (of any kind)."""
        t = self.token_times_ns
        return [(b - a) / 1e9 for a, b in itertools.pairwise(t)]
