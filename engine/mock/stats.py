"""Counters a test or benchmark reads back: what the mock saw and what it injected."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.mock.faults import FaultSet


@dataclass(slots=True)
class MockStats:
    """Requests per path, faults per kind, streams active/max, events written, last body.

    Plain ints mutated on the server's loop; reading them from another thread is fine for
    counters (each update is one bytecode-level assignment under the GIL).
    """

    requests: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    streams_active: int = 0
    streams_max: int = 0
    events_sent: int = 0
    last_body: Any = None

    def stream_started(self) -> None:
        self.streams_active += 1
        self.streams_max = max(self.streams_max, self.streams_active)

    def stream_ended(self) -> None:
        self.streams_active -= 1

    def count_faults(self, faults: FaultSet) -> None:
        for kind in faults.kinds:
            self.faults[kind] += 1

    def snapshot(self) -> dict[str, Any]:
        """A JSON-able copy (served at GET /mock/stats for MockProcess)."""
        return {
            "requests": dict(self.requests), "faults": dict(self.faults),
            "streams_active": self.streams_active, "streams_max": self.streams_max,
            "events_sent": self.events_sent, "last_body": self.last_body,
        }

    @classmethod
    def from_snapshot(cls, data: dict[str, Any]) -> MockStats:
        return cls(requests=Counter(data["requests"]), faults=Counter(data["faults"]),
                   streams_active=data["streams_active"], streams_max=data["streams_max"],
                   events_sent=data["events_sent"], last_body=data["last_body"])
