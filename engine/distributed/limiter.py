"""One global RPM/TPM limit for many actors: a limiter actor that leases grants in batches.

The limiter actor wraps `engine.limits.RateLimiter` (the sliding-window log, so "at most rpm
per window" is exact). Asking it for every request would cost one RPC per request, so each
shard's `LeasedLimiter` leases up to `lease_size` grants at once and settles actual token
usage later, piggybacked on its next lease (or flushed at the end).

Why a lease stays exact: a lease granted at t may be spent until t + ttl (the client drops
it after that, measured from when it *asked*, so no cross-machine clock is involved). Sends
from a lease therefore land in [t, t + ttl]. The actor runs its limiter on a clock slowed
by window / (window + ttl), so its log holds every grant for window + ttl real seconds: any
real window of `window_s` that contains a send can only see grants from the last
window + ttl, which the log caps at the limit. The price is ttl / (window + ttl) of
throughput (1.6 % for a 1 s ttl and a 60 s window).

Tokens: a lease books `count * tokens_each` estimated tokens; what the requests really used
(or their estimate, for a failed request) replaces that when settled, and a retired lease
gives back its unspent budget. Unspent *request* grants are not returned: the log cannot
shrink a request count, and lease sizes shrink by themselves when the limit binds (only
grants that are free at once join the first).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from engine.limits import WINDOW_S, RateLimiter, Reservation

if TYPE_CHECKING:
    from collections.abc import Callable

LEASE_SIZE: Final = 32
LEASE_TTL_S: Final = 1.0
KEEP_SETTLED_S: Final = 600.0  # a lease's reservations stay this long for late settlements


class _TryLimiter(RateLimiter):
    """RateLimiter plus a non-waiting grant, used to fill a lease beyond its first grant."""

    def try_acquire(self, estimated_tokens: int) -> Reservation | None:
        if self._turns or self._wait_s(estimated_tokens) > 0:
            return None
        return self._take(estimated_tokens)


@dataclass(slots=True)
class _Booked:
    reservations: list[Reservation]
    t: float


class RateLimitActor:
    """The one place a job's global limits live (run as an async Ray actor: a lease that
    waits for room does not block settlements or other leases)."""

    def __init__(
        self,
        rpm: float | None,
        tpm: float | None,
        *,
        window_s: float = WINDOW_S,
        lease_ttl_s: float = LEASE_TTL_S,
    ) -> None:
        scale = WINDOW_S / (window_s + lease_ttl_s)  # limiter seconds per real second

        async def sleep(limiter_s: float) -> None:
            await asyncio.sleep(limiter_s / scale)

        self._limiter = _TryLimiter(rpm, tpm, clock=lambda: time.monotonic() * scale, sleep=sleep)
        self._ids = itertools.count(1)
        self._booked: dict[int, _Booked] = {}

    async def lease(self, want: int, tokens_each: int, settle: dict[int, int]) -> tuple[int, int]:
        """Wait for one grant, add up to `want - 1` that are free now; -> (lease id, count)."""
        self.settle(settle)
        first = await self._limiter.acquire(tokens_each)
        now = time.monotonic()
        reservations = [first]
        while len(reservations) < want:
            more = self._limiter.try_acquire(tokens_each)
            if more is None:
                break
            reservations.append(more)
        lease_id = next(self._ids)
        self._booked[lease_id] = _Booked(reservations, now)
        return lease_id, len(reservations)

    def settle(self, totals: dict[int, int]) -> None:
        """Book each lease's real token total (absolute, so a repeated message is harmless)."""
        for lease_id, total in totals.items():
            booked = self._booked.get(lease_id)
            if booked is None:
                continue
            first, *rest = booked.reservations
            for reservation in rest:
                reservation.settle(0)
            first.settle(total)
        cutoff = time.monotonic() - KEEP_SETTLED_S
        while self._booked:
            oldest = next(iter(self._booked))
            if self._booked[oldest].t >= cutoff:
                break
            del self._booked[oldest]


@dataclass(slots=True)
class _Lease:
    lease_id: int
    left: int  # request grants not yet used
    budget: int  # estimated tokens not yet used
    expires: float  # client clock
    charged: int = 0  # tokens of the requests sent on it (estimate until settled)
    active: bool = True

    @property
    def total(self) -> int:
        return self.charged + (self.budget if self.active else 0)


class _LeasedReservation(Reservation):
    """A request's share of a lease: settling it corrects the lease's token total."""

    __slots__ = ("_lease", "_owner")

    def __init__(self, owner: LeasedLimiter, lease: _Lease, estimated: int) -> None:
        super().__init__(None, None, time.monotonic, estimated)
        self._owner = owner
        self._lease = lease

    def settle(self, actual_tokens: int) -> None:
        if actual_tokens < 0:
            raise ValueError(f"actual_tokens must be >= 0, got {actual_tokens}")
        self._lease.charged += actual_tokens - self.estimated_tokens
        self.estimated_tokens = actual_tokens
        self._owner.dirty[self._lease.lease_id] = self._lease


@dataclass(slots=True)
class _Stats:
    leases: int = 0
    grants: int = 0
    expired: int = 0  # grants dropped unused at the end of their lease
    rpc_wait_s: float = 0.0


class LeasedLimiter(RateLimiter):
    """Drop-in `RateLimiter` for one shard's runner, backed by the global `RateLimitActor`."""

    def __init__(
        self,
        actor: Any,
        *,
        lease_size: int = LEASE_SIZE,
        lease_ttl_s: float = LEASE_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(None, None)
        self._actor = actor
        self._lease_size = lease_size
        self._ttl_s = lease_ttl_s
        self._now = clock
        self._lease: _Lease | None = None
        self._lock = asyncio.Lock()
        self.dirty: dict[int, _Lease] = {}
        self.stats = _Stats()

    async def acquire(self, estimated_tokens: int) -> Reservation:
        if estimated_tokens < 0:
            raise ValueError(f"estimated_tokens must be >= 0, got {estimated_tokens}")
        async with self._lock:
            lease = self._lease
            if (
                lease is None
                or lease.left < 1
                or lease.budget < estimated_tokens
                or self._now() >= lease.expires
            ):
                lease = await self._renew(estimated_tokens)
            lease.left -= 1
            lease.budget -= estimated_tokens
            lease.charged += estimated_tokens
            return _LeasedReservation(self, lease, estimated_tokens)

    async def _renew(self, tokens_each: int) -> _Lease:
        self._retire()
        asked = self._now()
        settle = self._take_dirty()
        lease_id, count = await self._actor.lease.remote(self._lease_size, tokens_each, settle)
        self.stats.rpc_wait_s += self._now() - asked
        self.stats.leases += 1
        self.stats.grants += count
        self._lease = _Lease(lease_id, count, count * tokens_each, asked + self._ttl_s)
        return self._lease

    def _retire(self) -> None:
        lease, self._lease = self._lease, None
        if lease is not None:
            lease.active = False
            self.stats.expired += lease.left
            self.dirty[lease.lease_id] = lease

    def _take_dirty(self) -> dict[int, int]:
        totals = {lease_id: lease.total for lease_id, lease in self.dirty.items()}
        self.dirty.clear()
        return totals

    async def close(self) -> None:
        """Retire the current lease and send every pending settlement."""
        self._retire()
        if self.dirty:
            await self._actor.settle.remote(self._take_dirty())
