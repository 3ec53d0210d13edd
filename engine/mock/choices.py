"""What Chat Completions and legacy Completions streams share: choices, token by token.

Each chunk carries one choice. At paced step k every choice that has a k-th token sends it (in
index order: real servers decode the choices of one request as a batch), a choice that ends
before the others sends its `finish_reason` chunk right after its last token, and the tail
closes the rest, then the usage chunk (`choices: []`, only with `stream_options.include_usage`)
and `data: [DONE]`. A subclass says how a segment's tokens look in its dialect (`_frames`).

Every token chunk is prefix + the token's pre-rendered bytes + suffix, the prefix and suffix cut
once per answer from a chunk rendered with a placeholder (`sse_writer.SLOT`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from engine.mock.faults import error_object
from engine.mock.sse_writer import DONE, cut_at_slots, data_event, named_event
from engine.mock.text import new_id

if TYPE_CHECKING:
    from engine.mock.text import Choice, Generation, Segment

GATEWAY_ERROR = "Provider disconnected (mock)"


@dataclass(slots=True)
class Frame:
    """How `count` tokens of a segment look: the choice object, with SLOT where the token goes
    (and a second SLOT for `extras`, one value per token: logprobs)."""

    choice: dict[str, Any]
    count: int
    extras: list[bytes] | None = None


@dataclass(slots=True)
class _Run:
    """Tokens `start..stop-1` of a choice: prefix + piece + suffix each."""

    start: int
    stop: int
    prefix: bytes
    pieces: list[bytes]
    suffix: bytes


def finish_reason(choice: Choice, ending: str | None) -> str:
    if choice.stopped_by_limit or ending == "incomplete":
        return "length"
    if choice.legacy_call:
        return "function_call"
    return "tool_calls" if choice.calls else "stop"


class ChoiceStream:
    """One answer of a choice-based dialect: head chunks, token steps, tail, or a body."""

    __slots__ = ("_envelope", "_fast", "_gen", "_lengths", "_runs", "head_events", "n")
    id_prefix = "chatcmpl-"
    body_object = "chat.completion"  # the non-streaming answer's `object`

    def __init__(self, gen: Generation) -> None:
        self._gen = gen
        self._envelope = self._make_envelope(new_id(self.id_prefix))
        self._runs = [self._choice_runs(c, choice) for c, choice in enumerate(gen.choices)]
        self._lengths = [choice.tokens for choice in gen.choices]
        self.n = max(self._lengths, default=0)
        self.head_events = len(self._heads())
        runs = self._runs[0]
        # One choice of one run (a plain answer): the hot path, two concatenations per token.
        self._fast = (
            (runs[0].prefix, runs[0].pieces, runs[0].suffix)
            if len(self._runs) == 1 and len(runs) == 1
            else None
        )

    # --- what a dialect says ------------------------------------------------------------------

    def _make_envelope(self, stream_id: str) -> dict[str, Any]:
        raise NotImplementedError

    def _head(self, index: int, choice: Choice) -> dict[str, Any] | None:  # noqa: ARG002
        """The choice's first chunk, sent at once (before the first token), if any."""
        return None

    def _frames(self, index: int, choice: Choice, segment: Segment) -> list[Frame]:
        raise NotImplementedError

    def _finish(self, index: int, reason: str) -> dict[str, Any]:
        raise NotImplementedError

    def _usage(self) -> dict[str, Any]:
        raise NotImplementedError

    def _body_choice(self, index: int, choice: Choice, reason: str) -> dict[str, Any]:
        raise NotImplementedError

    # --- shared -------------------------------------------------------------------------------

    def _chunk(self, choices: list[Any]) -> bytes:
        usage = {"usage": None} if self._gen.include_usage else {}
        return data_event({**self._envelope, "choices": choices, **usage})

    def _choice_runs(self, index: int, choice: Choice) -> list[_Run]:
        runs, start = [], 0
        for segment in choice.segments:
            taken = 0
            for frame in self._frames(index, choice, segment):
                prefix, mids, suffix = cut_at_slots(self._chunk([frame.choice]))
                pieces = segment.json[taken : taken + frame.count]
                if frame.extras is not None:  # token + the bytes between the slots + its extra
                    pieces = [p + mids[0] + x for p, x in zip(pieces, frame.extras, strict=True)]
                runs.append(_Run(start, start + len(pieces), prefix, pieces, suffix))
                start += len(pieces)
                taken += frame.count
        return runs

    def _heads(self) -> list[bytes]:
        heads = (self._head(c, choice) for c, choice in enumerate(self._gen.choices))
        return [self._chunk([head]) for head in heads if head is not None]

    def _token(self, index: int, k: int) -> bytes:
        for run in self._runs[index]:
            if k < run.stop:
                return run.prefix + run.pieces[k - run.start] + run.suffix
        raise IndexError(k)

    def _finish_chunk(self, index: int) -> bytes:
        reason = finish_reason(self._gen.choices[index], self._gen.ending)
        return self._chunk([self._finish(index, reason)])

    def _step(self, k: int) -> list[bytes]:
        events = []
        for index, length in enumerate(self._lengths):
            if k < length:
                events.append(self._token(index, k))
                if k == length - 1 < self.n - 1:  # done before the others
                    events.append(self._finish_chunk(index))
        return events

    def head(self) -> list[bytes]:
        return self._heads()

    def delta(self, index: int) -> bytes | None:
        """Step `index` when it is a single event (one choice), else None."""
        if self._fast is not None:
            prefix, pieces, suffix = self._fast
            return prefix + pieces[index] + suffix
        return self._token(0, index) if len(self._runs) == 1 else None

    def deltas(self, start: int, stop: int) -> list[bytes]:
        """The events of steps `start..stop-1`."""
        if self._fast is not None:
            prefix, pieces, suffix = self._fast
            return [prefix + pieces[k] + suffix for k in range(start, stop)]
        return [event for k in range(start, stop) for event in self._step(k)]

    def tail(self) -> list[bytes]:
        if self._gen.ending in ("error-event", "failed"):
            # A mid-stream error, then the stream ends without [DONE].
            return [named_event("error", {"error": error_object(500)})]
        if self._gen.ending == "error-chunk":
            # A gateway's (OpenRouter's) way: the error inside a chunk, then [DONE].
            error = {"code": 502, "message": GATEWAY_ERROR}
            chunk = {**self._envelope, "error": error, "choices": [self._finish(0, "error")]}
            return [data_event(chunk), DONE]
        events = [
            self._finish_chunk(index)
            for index, length in enumerate(self._lengths)
            if length in (0, self.n)
        ]
        if self._gen.include_usage:
            events.append(data_event({**self._envelope, "choices": [], "usage": self._usage()}))
        events.append(DONE)
        return events

    def body(self) -> bytes:
        """The non-streaming answer: every choice whole, and the usage."""
        gen = self._gen
        choices = [
            self._body_choice(c, choice, finish_reason(choice, gen.ending))
            for c, choice in enumerate(gen.choices)
        ]
        return orjson.dumps(
            {
                **self._envelope,
                "object": self.body_object,
                "choices": choices,
                "usage": self._usage(),
            }
        )
