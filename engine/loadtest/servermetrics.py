"""Scrape the server's Prometheus `/metrics` during a bench run, on the run's own clock.

The client sees latency; the server's metrics say why (a queue forming, the KV cache full, the
batch saturated). `ServerMetricsScraper` GETs the endpoint every `interval_s` in a background
task and stamps each scrape with `time.perf_counter_ns()` (CLOCK_MONOTONIC, the clock of every
request record), so `document(origin_ns)` returns series whose `t_s` is directly comparable to
the records' offsets from the measured window's start.

Each server names its metrics differently (vLLM `vllm:`, llama-server `llamacpp:`, SGLang
`sglang:`); the tables below map them to one set of names. Parsing is prometheus_client's and
runs in a thread: a vLLM exposition (~650 lines) costs ~15 ms of CPU, which must not stall the
event loop that is timing the load. Schema and mapping: docs/server-metrics.md.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Self
from urllib.parse import urlsplit, urlunsplit

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from engine.network import NetworkOptions, pool_ssl
from engine.redaction import redact, secret_values, url_credentials

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

__all__ = [
    "GAUGES",
    "HISTOGRAMS",
    "RATES",
    "ServerMetricsScraper",
    "Snapshot",
    "build_document",
    "metrics_url",
    "snapshot",
]

# Normalised name -> the servers' names, in order of preference: the first one a server exposes
# is used for the whole run (vLLM renamed some between versions; a transitional version may
# expose both, and they must not be added together).
GAUGES: Final[dict[str, tuple[str, ...]]] = {
    "requests_running": (
        "vllm:num_requests_running",
        "sglang:num_running_reqs",
        "llamacpp:requests_processing",
    ),
    "requests_waiting": (
        "vllm:num_requests_waiting",
        "sglang:num_queue_reqs",
        "llamacpp:requests_deferred",
    ),
    "kv_cache_usage": (
        "vllm:kv_cache_usage_perc",
        "vllm:gpu_cache_usage_perc",
        "sglang:token_usage",
        "llamacpp:kv_cache_usage_ratio",
    ),
}
# Fractions (0..1): averaged across label sets (engines), where counts are summed.
MEAN_GAUGES: Final = frozenset({"kv_cache_usage"})
# Counters (sample names as prometheus_client reports them: always with `_total`) -> rates.
RATES: Final[dict[str, tuple[str, ...]]] = {
    "prompt_tokens_per_s": (
        "vllm:prompt_tokens_total",
        "sglang:prompt_tokens_total",
        "llamacpp:prompt_tokens_total",
    ),
    "generation_tokens_per_s": (
        "vllm:generation_tokens_total",
        "sglang:generation_tokens_total",
        "llamacpp:tokens_predicted_total",
    ),
}
HISTOGRAMS: Final[dict[str, tuple[str, ...]]] = {
    "server_ttft_s": ("vllm:time_to_first_token_seconds", "sglang:time_to_first_token_seconds"),
    "server_itl_s": (
        "vllm:inter_token_latency_seconds",
        "vllm:time_per_output_token_seconds",
        "sglang:inter_token_latency_seconds",
        "sglang:time_per_output_token_seconds",
    ),
    "server_e2e_s": ("vllm:e2e_request_latency_seconds", "sglang:e2e_request_latency_seconds"),
}
SERVERS: Final = (("vllm:", "vllm"), ("sglang:", "sglang"), ("llamacpp:", "llama.cpp"))
INF_LE: Final = "+Inf"  # the last bucket's bound in JSON (Prometheus' spelling; JSON has no inf)
MAX_ERRORS: Final = 5  # distinct messages kept: enough to see what failed, bounded on a long run
MIN_TIMEOUT_S: Final = 0.5  # a busy server answers /metrics between decode steps
MAX_BODY: Final = 16 * 1024 * 1024  # far above any real exposition (vLLM's is ~60 KB)
ERROR_BODY_CHARS: Final = 200

_SCALARS: Final = frozenset(name for names in (*GAUGES.values(), *RATES.values()) for name in names)
_HISTOGRAMS: Final = frozenset(name for names in HISTOGRAMS.values() for name in names)


@dataclass(frozen=True, slots=True)
class Histogram:
    """A cumulative histogram merged across label sets: `cumulative[i]` counts values <= bounds[i]
    (the last bound is +inf)."""

    bounds: tuple[float, ...]
    cumulative: tuple[float, ...]
    sum: float
    count: float

    def at(self, bound: float) -> float:
        """Observations <= `bound`, read off the step function (exact at this one's bounds)."""
        i = bisect.bisect_right(self.bounds, bound) - 1
        return self.cumulative[i] if i >= 0 else 0.0


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What one successful scrape said, reduced to the mapped families (the rest by name)."""

    t_ns: int
    families: frozenset[str]
    values: dict[str, list[float]]  # mapped gauge/counter sample name -> one value per label set
    histograms: dict[str, Histogram]  # mapped histogram family -> merged across label sets


def _merge(parts: Sequence[Histogram]) -> Histogram:
    """Label sets' histograms summed bound by bound (the union of their bounds)."""
    bounds = tuple(sorted({b for h in parts for b in h.bounds}))
    return Histogram(
        bounds,
        tuple(sum(h.at(b) for h in parts) for b in bounds),
        sum(h.sum for h in parts),
        sum(h.count for h in parts),
    )


def _histogram(samples: Iterable[Any]) -> Histogram | None:
    """One family's samples -> its label sets' histograms merged (None: no buckets)."""
    sets: dict[tuple[tuple[str, str], ...], dict[str, Any]] = {}
    for s in samples:
        key = tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
        part = sets.setdefault(key, {"buckets": {}, "sum": 0.0, "count": None})
        if s.name.endswith("_bucket") and "le" in s.labels:
            part["buckets"][float(s.labels["le"])] = float(s.value)
        elif s.name.endswith("_sum"):
            part["sum"] = float(s.value)
        elif s.name.endswith("_count"):
            part["count"] = float(s.value)
    parts = []
    for part in sets.values():
        buckets: dict[float, float] = part["buckets"]
        if not buckets:
            continue
        bounds = tuple(sorted(buckets))
        count = part["count"] if part["count"] is not None else buckets[bounds[-1]]
        parts.append(Histogram(bounds, tuple(buckets[b] for b in bounds), part["sum"], count))
    return _merge(parts) if parts else None


def snapshot(text: str, t_ns: int) -> Snapshot:
    """Parse one exposition (prometheus_client's parser; raises ValueError on garbage)."""
    families: set[str] = set()
    values: dict[str, list[float]] = {}
    histograms: dict[str, Histogram] = {}
    for family in text_string_to_metric_families(text):
        families.add(family.name)
        if family.type == "histogram":
            if family.name in _HISTOGRAMS and (hist := _histogram(family.samples)):
                histograms[family.name] = hist
            continue
        for s in family.samples:
            if s.name in _SCALARS:
                values.setdefault(s.name, []).append(float(s.value))
    if not families:
        raise ValueError("no metric family in the response")
    return Snapshot(t_ns, frozenset(families), values, histograms)


def _source(snaps: Sequence[Snapshot], candidates: Sequence[str], table: str) -> str | None:
    """The first candidate any scrape exposed: one source for the whole run."""
    for name in candidates:
        for snap in snaps:
            if name in (snap.histograms if table == "histogram" else snap.values):
                return name
    return None


def _gauge(values: Sequence[float], mean: bool) -> float:
    return sum(values) / len(values) if mean else sum(values)


def _series(
    snaps: Sequence[Snapshot],
    origin_ns: int,
    name: str,
    source: str,
) -> list[list[float]]:
    points = []
    for snap in snaps:
        vals = [v for v in snap.values.get(source, ()) if math.isfinite(v)]
        if vals:
            points.append([(snap.t_ns - origin_ns) / 1e9, _gauge(vals, name in MEAN_GAUGES)])
    return points


def _rates(snaps: Sequence[Snapshot], origin_ns: int, source: str) -> list[list[float]]:
    """Per-second increase over each interval between successive scrapes, stamped at its end.

    A counter that went down was reset (the server restarted): it counted from 0 since."""
    points = []
    prev: tuple[int, float] | None = None
    for snap in snaps:
        vals = [v for v in snap.values.get(source, ()) if math.isfinite(v)]
        if not vals:
            continue
        now = (snap.t_ns, sum(vals))
        if prev is not None and now[0] > prev[0]:
            delta = now[1] - prev[1] if now[1] >= prev[1] else now[1]
            points.append([(now[0] - origin_ns) / 1e9, delta / ((now[0] - prev[0]) / 1e9)])
        prev = now
    return points


def _delta(base: Histogram | None, end: Histogram) -> dict[str, Any]:
    """The observations made between two scrapes, per bucket (not cumulative)."""
    if base is None or end.count < base.count:  # absent then, or reset since: all are new
        base = Histogram((math.inf,), (0.0,), 0.0, 0.0)
    bounds = sorted({*end.bounds, *(b for b in base.bounds if b <= end.bounds[-1])})
    cumulative = [max(end.at(b) - base.at(b), 0.0) for b in bounds]
    counts = [round(c - p) for c, p in zip(cumulative, [0.0, *cumulative[:-1]], strict=True)]
    return {
        "le": [b if math.isfinite(b) else INF_LE for b in bounds],
        "counts": counts,
        "sum": end.sum - base.sum,
        "count": round(end.count - base.count),
    }


def build_document(snaps: Sequence[Snapshot], origin_ns: int) -> dict[str, Any]:
    """Series, rates and histogram deltas from successful scrapes (pure: no I/O, no clock).

    Histograms count what was observed from the last scrape at or before `origin_ns` (the
    first scrape if none was) to the last scrape: the measured window, not the warm-up."""
    snaps = sorted(snaps, key=lambda s: s.t_ns)
    series: dict[str, list[list[float]]] = {}
    sources: dict[str, str] = {}
    for name, candidates in GAUGES.items():
        if src := _source(snaps, candidates, "value"):
            sources[name] = src
            series[name] = _series(snaps, origin_ns, name, src)
    for name, candidates in RATES.items():
        if src := _source(snaps, candidates, "value"):
            sources[name] = src
            series[name] = _rates(snaps, origin_ns, src)
    histograms: dict[str, dict[str, Any]] = {}
    if snaps:
        before = [s for s in snaps if s.t_ns <= origin_ns]
        base, end = (before[-1] if before else snaps[0]), snaps[-1]
        for name, candidates in HISTOGRAMS.items():
            src = _source(snaps, candidates, "histogram")
            if src is None or src not in end.histograms:
                continue
            sources[name] = src
            histograms[name] = {
                **_delta(base.histograms.get(src), end.histograms[src]),
                "from_s": (base.t_ns - origin_ns) / 1e9,
                "to_s": (end.t_ns - origin_ns) / 1e9,
            }
    names = sorted({n for s in snaps for n in s.families})
    server = next(
        (label for prefix, label in SERVERS if any(n.startswith(prefix) for n in names)), "unknown"
    )
    return {
        "server": server,
        "series": series,
        "histograms": histograms,
        "sources": sources,
        "raw_names": names,
    }


def metrics_url(base_url: str) -> str:
    """The server's /metrics from an OpenAI base URL: `http://h:8000/v1` -> `http://h:8000/metrics`."""
    root = base_url.rstrip("/").removesuffix("/v1")
    return f"{root}/metrics"


def _public_url(url: str) -> str:
    """`url` without user:password (never in a report)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def _describe(exc: BaseException) -> str:
    """One line naming an aiohttp error: its type and message (never its repr or args, which
    may carry the request's headers)."""
    text = exc.message if isinstance(exc, aiohttp.ClientResponseError) else str(exc)
    text = " ".join(str(text).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class _BadStatus(Exception):
    """The server answered /metrics with something other than 200 (its message says what)."""


@dataclass(slots=True)
class _Tally:
    attempts: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    snaps: list[Snapshot] = field(default_factory=list)


class ServerMetricsScraper:
    """`async with ServerMetricsScraper(url):` scrapes `url` every `interval_s` until exit.

    A first scrape is taken on entry (the baseline, before any load) and a last one on exit.
    A failed scrape is counted and its message kept; it never raises: the server's metrics
    are an aid to the run, never a reason for it to fail."""

    def __init__(
        self,
        url: str,
        interval_s: float = 1.0,
        *,
        headers: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
        network: NetworkOptions | None = None,
    ) -> None:
        if not interval_s > 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s!r}")
        self.url = url
        self.interval_s = float(interval_s)
        self.timeout_s = timeout_s if timeout_s is not None else max(interval_s, MIN_TIMEOUT_S)
        self._headers = dict(headers or {})
        # The load's way to the server (`--proxy`, `--ca-bundle`, ...): /metrics is on it too.
        self._network = network or NetworkOptions()
        # Every header value is treated as a credential (a long one, at least) in messages.
        self._secrets = tuple(
            sorted(
                {
                    *secret_values(None, self._headers),
                    *(v for v in self._headers.values() if len(v) >= 8),
                    *url_credentials(self._network.proxy),
                },
                key=len,
                reverse=True,
            )
        )
        self._tally = _Tally()
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def scrapes(self) -> int:
        """Scrapes completed so far (failed ones included; one cut off by the exit is not)."""
        return self._tally.attempts

    @property
    def failed(self) -> int:
        return self._tally.failed

    async def __aenter__(self) -> Self:
        # A new connection per scrape: a server that closes idle keep-alive connections
        # (llama-server does) must not turn into a failed scrape. Proxy and TLS as the
        # engine's (HTTP(S)_PROXY too: trust_env), so /metrics is reached the load's way.
        options = self._network.engine_options()
        self._session = aiohttp.ClientSession(
            headers=self._headers,
            connector=aiohttp.TCPConnector(force_close=True, ssl=pool_ssl(options["ssl"])),
            timeout=aiohttp.ClientTimeout(total=self.timeout_s),
            proxy=options["proxy"],
            trust_env=True,
        )
        await self.scrape()
        self._task = asyncio.create_task(self._loop(), name="server-metrics")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        try:
            await self.scrape()
        finally:
            if self._session is not None:
                await self._session.close()
                self._session = None

    async def _loop(self) -> None:
        """Scrape on a fixed grid; ticks missed by a slow scrape are skipped, not bunched."""
        step = int(self.interval_s * 1e9)
        next_ns = time.perf_counter_ns() + step
        while True:
            delay = (next_ns - time.perf_counter_ns()) / 1e9
            if delay > 0:
                await asyncio.sleep(delay)
            await self.scrape()
            now = time.perf_counter_ns()
            while next_ns <= now:
                next_ns += step

    async def scrape(self) -> None:
        """One GET, stamped at the midpoint of request and response; a failure is recorded."""
        session = self._session
        if session is None:
            raise RuntimeError("the scraper is not running (use `async with`)")
        tally = self._tally
        try:
            sent = time.perf_counter_ns()
            text = await self._fetch(session)
            t_ns = (sent + time.perf_counter_ns()) // 2
            snap = await asyncio.to_thread(snapshot, text, t_ns)
        except _BadStatus as exc:
            self._fail(str(exc))
        except TimeoutError:
            self._fail(f"no answer within {self.timeout_s:g} s")
        except aiohttp.ClientError as exc:
            self._fail(_describe(exc))
        except ValueError as exc:
            self._fail(f"not a Prometheus exposition: {' '.join(str(exc).split())}"[:300])
        except Exception as exc:
            self._fail(f"{type(exc).__name__}: {exc}")
        else:
            tally.attempts += 1
            tally.snaps.append(snap)

    async def _fetch(self, session: aiohttp.ClientSession) -> str:
        async with session.get(self.url, allow_redirects=False) as resp:
            if resp.status != 200:
                head = await resp.content.read(ERROR_BODY_CHARS)
                snippet = " ".join(head.decode("utf-8", "replace").split())
                raise _BadStatus(
                    f"HTTP {resp.status}: {snippet}" if snippet else f"HTTP {resp.status}"
                )
            chunks, size = [], 0
            async for chunk in resp.content.iter_chunked(64 * 1024):
                size += len(chunk)
                if size > MAX_BODY:
                    raise ValueError(f"response larger than {MAX_BODY} bytes")
                chunks.append(chunk)
            return b"".join(chunks).decode("utf-8", "replace")

    def _fail(self, message: str) -> None:
        tally = self._tally
        tally.attempts += 1
        tally.failed += 1
        message = redact(message, self._secrets)
        if len(tally.errors) < MAX_ERRORS and message not in tally.errors:
            tally.errors.append(message)

    def document(self, origin_ns: int) -> dict[str, Any]:
        """The JSON-ready section; `t_s` is seconds from `origin_ns` (negative before it)."""
        tally = self._tally
        return {
            "url": redact(_public_url(self.url), self._secrets),
            "interval_s": self.interval_s,
            "scrapes": tally.attempts,
            "failed": tally.failed,
            "errors": list(tally.errors),
            **build_document(tally.snaps, origin_ns),
        }
