"""Counters a test or benchmark reads back: what the mock saw and what it injected."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.mock.faults import FaultSet
    from engine.mock.prefix_cache import PrefixCache
    from engine.mock.text import Generation


@dataclass(slots=True)
class MockStats:
    """Requests per path, faults per kind, streams active/max, queueing, events written, pacing
    lateness, connections closed, input and cached tokens, last body.

    Plain numbers mutated on the server's loop; reading them from another thread is fine for
    counters (each update is one bytecode-level assignment under the GIL).
    """

    requests: Counter[str] = field(default_factory=Counter)  # accepted past the key check
    faults: Counter[str] = field(default_factory=Counter)
    unauthorized: int = 0  # 401s: no or wrong API key
    streams_active: int = 0  # holding a generation slot now
    streams_max: int = 0
    waiting: int = 0  # waiting for a generation slot now (max_concurrency)
    queued: int = 0  # requests that had to wait for a slot, in total
    events_sent: int = 0  # SSE events handed to the transport, counted as they are written
    ticker_fires: int = 0  # wake-ups of the shared pacing timer
    ticker_lag_s_total: float = 0.0  # sum over wake-ups of (now - earliest due deadline)
    ticker_lag_s_max: float = 0.0  # > a few ms: the server could not keep up with the schedule
    ticker_early: int = 0  # wake-ups before the earliest deadline (re-armed once: few)
    backpressured: int = 0  # due writes deferred because a client's socket buffer was full
    closed_after_response: int = 0  # connections closed by close_after_response
    input_tokens: int = 0  # of the requests answered (not those a status or reset replaced)
    cached_tokens: int = 0  # of those, the prefix cache's hits (or x-mock-cached-tokens')
    prefix_cache_blocks: int = 0  # held now
    prefix_cache_evicted_blocks: int = 0  # evicted at capacity, in total
    last_body: Any = None

    def stream_started(self) -> None:
        self.streams_active += 1
        self.streams_max = max(self.streams_max, self.streams_active)

    def stream_ended(self) -> None:
        self.streams_active -= 1

    def wait_started(self) -> None:
        self.waiting += 1
        self.queued += 1

    def wait_ended(self) -> None:
        self.waiting -= 1

    def count_prompt(self, gen: Generation, cache: PrefixCache | None) -> None:
        self.input_tokens += gen.input_tokens
        self.cached_tokens += gen.cached_tokens
        if cache is not None:
            self.prefix_cache_blocks = len(cache)
            self.prefix_cache_evicted_blocks = cache.evicted_blocks

    def count_faults(self, faults: FaultSet) -> None:
        for kind in faults.kinds:
            self.faults[kind] += 1

    def snapshot(self) -> dict[str, Any]:
        """A JSON-able copy (served at GET /mock/stats for MockProcess)."""
        data = {name: getattr(self, name) for name in self.__dataclass_fields__}
        data["requests"], data["faults"] = dict(self.requests), dict(self.faults)
        return data

    @classmethod
    def from_snapshot(cls, data: dict[str, Any]) -> MockStats:
        fields = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        fields["requests"], fields["faults"] = Counter(data["requests"]), Counter(data["faults"])
        return cls(**fields)
