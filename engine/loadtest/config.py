"""`LoadConfig`: everything one load test needs, frozen and picklable (it crosses processes).

The load shape follows from the fields: `rate` set means an open loop (requests leave on a
schedule whatever the endpoint does); otherwise a closed loop of `concurrency` users, each
sending its next request when the previous one ends. `sweep` runs several of both.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal
from urllib.parse import urlsplit

from engine.config import COMMAND_TIMEOUTS, Timeouts
from engine.errors import ConfigError
from engine.network import NetworkOptions
from engine.redaction import redact, secret_values, url_credentials

Endpoint = Literal["responses", "chat", "completions"]
Arrival = Literal["constant", "poisson"]
SLO_METRICS = ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms")
AUTO_WORKERS = 0  # `workers=AUTO_WORKERS`: one per STREAMS_PER_WORKER streams, at most one a core
MIN_PRIME_TOKENS = 16  # the Responses API rejects max_output_tokens below 16
# Settings only an open loop has: a closed loop's report does not list them.
OPEN_LOOP_ONLY = ("rate", "arrival", "burstiness", "spin_ms")
# APIs that refuse a field they do not know ("Unrecognized request argument supplied"):
# OpenAI's own and Azure OpenAI. A load sent there gets the cap alone; see `asks_length`.
STRICT_HOSTS = ("api.openai.com", ".openai.azure.com")


def asks_length(base_url: str) -> bool:
    """Whether a load against `base_url` asks for its answers' length by default (vLLM's
    `ignore_eos` and `min_tokens` beside the cap): a cap alone lets a model stop early, and
    then the load is not the one asked for. vLLM, SGLang and the mock honour the fields,
    llama-server and most gateways ignore what they do not know; only the strict APIs above
    refuse them, so there the cap is sent alone and answers may end early."""
    host = (urlsplit(base_url).hostname or "").lower()
    return not any(host == h or (h.startswith(".") and host.endswith(h)) for h in STRICT_HOSTS)


@dataclass(frozen=True, slots=True)
class LoadConfig:
    """One load test. Times in seconds unless the name says otherwise."""

    base_url: str
    api_key: str | None = field(default=None, repr=False)  # never written to any report
    endpoint: Endpoint = "responses"
    model: str = "mock-model"
    concurrency: int = 16  # closed loop users (and the sweep's saturation point)
    rate: float | None = None  # open loop: requests per second
    arrival: Arrival = "poisson"
    burstiness: float = 1.0  # gamma shape of inter-arrivals; 1 = Poisson, <1 burstier
    requests: int | None = None  # stop after this many measured requests ...
    duration_s: float | None = 10.0  # ... or after this long (whichever is set; both: first)
    warmup_s: float = 1.0  # load before the measured window, excluded from results
    input_tokens: int = 128
    output_tokens: int = 64
    prompts_file: str | None = None  # JSONL of request bodies instead of synthetic prompts
    # Workloads (docs/workloads.md). Lengths as distributions: the spec text as given
    # (engine.loadtest.lengths: "256-1024", "mean=512,stdev=128,min=32,max=2048", a
    # histogram file); None: the fixed input_tokens / output_tokens above (which then hold
    # the distribution's mean, for everything that needs one number).
    input_lengths: str | None = None
    output_lengths: str | None = None
    tokenizer: str | None = None  # tokenizer.json: prompt lengths in true tokens (tokenizers)
    dataset: str | None = None  # ShareGPT JSON, chat-messages JSONL or a .txt corpus
    shared_prefix_tokens: int = 0  # > 0: every prompt starts with one of prefix_groups ...
    prefix_groups: int = 1  # ... system prompts of this many tokens
    turns: int = 1  # > 1: multi-turn sessions, each turn carrying the previous answers
    think_s: float = 0.0  # a session's pause between an answer and its next turn
    rate_series: str | None = None  # open loop: "10:30s,50:60s" steps, "10-50:60s" ramps
    trace_file: str | None = None  # open loop: replay a trace's timestamps and lengths
    trace_speedup: float = 1.0  # the trace's clock runs this many times faster
    cancel_rate: float = 0.0  # this share of requests is cancelled by the client ...
    cancel_after_s: float = 1.0  # ... this long after it was sent
    slice_s: float | None = None  # results also per slice of this many seconds
    # Ask for exactly `output_tokens` (vLLM's ignore_eos and min_tokens beside the cap);
    # None: `asks_length(base_url)`, resolved at construction.
    ignore_eos: bool | None = None
    slo: dict[str, float] = field(default_factory=dict)
    workers: int = 1  # AUTO_WORKERS (0): chosen from the load and the usable cores at run time
    max_connections: int | None = None  # None: concurrency (closed) or 4096 (open)
    # Each request's phase limits, the commands' own (engine.config): a dead stream ends within
    # minutes whatever it does, so every request the run sends ends with a result.
    timeouts: Timeouts = COMMAND_TIMEOUTS
    # Proxy and TLS as paths and flags (an SSLContext does not pickle): every Engine of the
    # run, in every worker process or Ray actor, builds its own from them.
    network: NetworkOptions = field(default_factory=NetworkOptions)
    # After the last send, how long requests still in flight may take before they are cut off
    # and counted as failed "Unfinished" (None: wait for each within its own limits).
    grace_s: float | None = 30.0
    retries: int = 0  # a load test counts 429s and 5xx; it does not hide them by retrying
    seed: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    spin_ms: float = 1.0  # open loop: yield-spin this long before each send (timer granularity)
    lag_threshold_ms: float = 5.0  # loop lag p99 above this: the client was the bottleneck
    cpu_threshold: float = 0.9  # fraction of one core
    canary: bool = True  # read a stamped canary stream in every worker (client read delay)
    read_delay_threshold_ms: float = 2.0  # canary read delay p99 above this: client-bound
    sweep_steps: int = 0  # > 0: run a sweep with this many rates between the two extremes
    label: str = ""
    facts: dict[str, Any] = field(default_factory=dict)  # e.g. the embedded mock's model

    def __post_init__(self) -> None:
        if self.ignore_eos is None:  # frozen: resolved once, so every copy and report agrees
            object.__setattr__(self, "ignore_eos", asks_length(self.base_url))
        self._check_workload()
        if self.rate is None and self.scheduled:
            # A series or a trace is an open loop; `rate` holds its peak, which sizes the
            # priming and the workers (resolved once, like ignore_eos).
            from engine.loadtest.shapes import peak_rate  # noqa: PLC0415 - shapes imports us

            object.__setattr__(self, "rate", peak_rate(self))
        if self.concurrency < 1:
            raise ConfigError("concurrency must be >= 1")
        if self.rate is not None and not (self.rate > 0 and math.isfinite(self.rate)):
            raise ConfigError("rate must be a positive number of requests per second")
        if self.burstiness <= 0:
            raise ConfigError("burstiness must be > 0")
        if self.requests is None and self.duration_s is None and not self.scheduled:
            raise ConfigError("give a request count or a duration")
        if self.requests is not None and self.requests < 1:
            raise ConfigError("requests must be >= 1")
        if self.duration_s is not None and self.duration_s <= 0:
            raise ConfigError("duration must be > 0")
        if self.warmup_s < 0 or self.spin_ms < 0:
            raise ConfigError("warm-up and spin must be >= 0")
        if self.grace_s is not None and self.grace_s < 0:
            raise ConfigError("grace must be >= 0 (None: no limit)")
        if self.input_tokens < 1 or self.output_tokens < 1:
            raise ConfigError("input and output tokens must be >= 1")
        if self.workers < 0:
            raise ConfigError("workers must be >= 1, or AUTO_WORKERS (0) for auto")
        if self.endpoint not in ("responses", "chat", "completions"):
            raise ConfigError("endpoint must be 'responses', 'chat' or 'completions'")
        if self.arrival not in ("constant", "poisson"):
            raise ConfigError("arrival must be 'constant' or 'poisson'")
        unknown = set(self.slo) - set(SLO_METRICS)
        if unknown:
            raise ConfigError(f"unknown SLO metric(s) {sorted(unknown)}; known: {SLO_METRICS}")

    def _check_workload(self) -> None:
        if self.shared_prefix_tokens < 0 or self.prefix_groups < 1:
            raise ConfigError("shared prefix tokens must be >= 0 and prefix groups >= 1")
        if self.turns < 1 or self.think_s < 0:
            raise ConfigError("turns must be >= 1 and think time >= 0")
        if not 0 <= self.cancel_rate <= 1 or self.cancel_after_s < 0:
            raise ConfigError("cancel rate must be within 0-1 and cancel-after >= 0")
        if not (self.trace_speedup > 0 and math.isfinite(self.trace_speedup)):
            raise ConfigError("trace speed-up must be a positive number")
        if self.slice_s is not None and not self.slice_s > 0:
            raise ConfigError("slice must be > 0 seconds")
        if self.rate_series and self.trace_file:
            raise ConfigError("give a rate series or a trace, not both")
        if self.prompts_file and self.dataset:
            raise ConfigError("give request bodies (--prompts) or a dataset, not both")
        if self.prompts_file and self.turns > 1:
            raise ConfigError("a file of request bodies has no turns: --turns needs a dataset")

    @property
    def scheduled(self) -> bool:
        """Whether a rate series or a trace sets the arrivals (and so the run's length)."""
        return bool(self.rate_series or self.trace_file)

    @property
    def open_loop(self) -> bool:
        return self.rate is not None

    @property
    def asked_tokens(self) -> int | None:
        """The length every answer is asked for (`ignore_eos` on synthetic prompts); None
        when the load sends a cap alone or a file's own bodies."""
        return self.output_tokens if self.ignore_eos and not self.prompts_file else None

    @property
    def pool_size(self) -> int:
        if self.max_connections is not None:
            return self.max_connections
        return 4096 if self.open_loop else self.concurrency

    def with_(self, **changes: Any) -> LoadConfig:
        """A modified copy (sweep segments, worker shares)."""
        return replace(self, **changes)

    def public(self) -> dict[str, Any]:
        """The configuration as reports show it: everything but the API key (and a proxy's
        password)."""
        data = asdict(self)
        data.pop("api_key")
        data["headers"] = sorted(self.headers)  # names only: a header may carry a secret
        proxy = self.network.proxy
        if proxy:
            data["network"]["proxy"] = redact(
                proxy, secret_values(None, extra=url_credentials(proxy))
            )
        data["mode"] = "open" if self.open_loop else "closed"
        data["api_key_set"] = bool(self.api_key)
        return data


def parse_slo(text: str) -> dict[str, float]:
    """`"ttft_ms=500,tpot_ms=50"` -> {"ttft_ms": 500.0, "tpot_ms": 50.0}."""
    slo: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or name not in SLO_METRICS:
            raise ConfigError(f"SLO {item!r} must be METRIC=MS with METRIC in {SLO_METRICS}")
        try:
            slo[name] = float(value)
        except ValueError:
            raise ConfigError(f"SLO {item!r}: {value!r} is not a number") from None
    return slo


def split_evenly(total: int, parts: int, index: int) -> int:
    """Share `index` of `total` split into `parts` near-equal integers (sums exactly)."""
    return total // parts + (1 if index < total % parts else 0)
