"""The mock's knobs: one frozen dataclass shared by the app, the runners and the CLI.

`MockConfig`'s defaults are the *tests'* (as fast as possible, no faults). A person meets the
mock with `SERVED`'s latency model instead, the same whether they start it alone
(`stream-engine mock`) or bench starts it for them: one model, so a number seen in one is the
number seen in the other.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Literal

from engine.errors import ConfigError
from engine.mock.faults import parse_fault
from engine.mock.prefix_cache import BLOCK_TOKENS

Distribution = Literal["constant", "exponential", "lognormal"]
DISTRIBUTIONS: tuple[Distribution, ...] = ("constant", "exponential", "lognormal")
LOGNORMAL_SIGMA = 0.5  # shape of the lognormal ITL; mu is chosen so the mean stays itl_ms
# How a Responses stream whose length the request's max_output_tokens set ends: OpenAI's
# response.incomplete, vLLM's response.completed with status "incomplete", or plain completed.
LimitEnding = Literal["incomplete", "vllm", "completed"]
LIMIT_ENDINGS: tuple[LimitEnding, ...] = ("incomplete", "vllm", "completed")
# Closing the connection after every response: silently (llama-server) or with Connection: close.
CloseAfterResponse = Literal["no", "silent", "announced"]
CLOSE_MODES: tuple[CloseAfterResponse, ...] = ("no", "silent", "announced")
# The chat delta field of reasoning tokens: llama.cpp and DeepSeek's, or vLLM's and Ollama's.
ReasoningField = Literal["reasoning_content", "reasoning"]
REASONING_FIELDS: tuple[ReasoningField, ...] = ("reasoning_content", "reasoning")


# The mock as a person meets it: a served model's pace (the first token after 200 ms, then
# 50 tokens/s) and answers of 128 tokens, for `stream-engine mock` and bench's embedded mock.
SERVED_TTFT_MS = 200.0
SERVED_ITL_MS = 20.0
SERVED_OUTPUT_TOKENS = 128
# No prefill cost and no prefix cache by default: the TTFT a person sets is the TTFT of every
# prompt, the same number bench's report quotes (docs/mock.md, "Prefill and prefix cache").
SERVED_PREFILL_MS_PER_1K = 0.0
PREFIX_CACHE_TOKENS = 1_000_000  # the cache's default capacity: a GPU's KV cache, roughly


@dataclass(frozen=True, slots=True)
class MockConfig:
    """Latency model, prefix cache, output length, reasoning, endings, faults, auth and
    connection handling of one mock endpoint."""

    ttft_ms: float = 0.0
    itl_ms: float = 0.0
    prefill_ms_per_1k: float = 0.0  # TTFT + this per 1,000 uncached input tokens
    prefix_cache: bool = False  # cache prompts' blocks (vLLM's automatic prefix caching)
    prefix_cache_tokens: int = PREFIX_CACHE_TOKENS  # its capacity, in whole blocks of 16
    jitter: float = 0.0  # relative: 0.1 draws each delay uniformly in ±10 %
    itl_distribution: Distribution = "constant"
    output_tokens: int = 16
    output_tokens_max: int | None = None  # set: length drawn uniformly in [output_tokens, max]
    max_concurrency: int | None = None  # generations beyond this queue (FIFO)
    faults: dict[str, float] = field(default_factory=dict)  # kind spec -> rate per request
    api_key: str | None = field(default=None, repr=False)  # never shown
    seed: int = 0
    retry_after_s: float = 0.05  # what a 429 tells the client to wait
    limit_ending: LimitEnding = "incomplete"  # Responses: the end of a stream the limit cut
    model: str = "mock-model"  # listed by GET /v1/models (any model name is accepted)
    close_after_response: CloseAfterResponse = "no"  # close the connection after each answer
    keepalive_timeout_s: float | None = None  # close idle keep-alive connections (None: aiohttp's)
    reasoning_tokens: int = 0  # reasoning before every chat / Responses answer (0: none)
    reasoning_field: ReasoningField = "reasoning_content"  # chat: the reasoning delta's field
    reasoning_summary: bool = False  # Responses: reasoning as summary events, not raw text

    def __post_init__(self) -> None:
        if min(self.ttft_ms, self.itl_ms, self.jitter, self.retry_after_s) < 0:
            raise ConfigError("latencies, jitter and retry_after_s must be >= 0")
        if not 0 <= self.prefill_ms_per_1k < math.inf:
            raise ConfigError("prefill_ms_per_1k must be >= 0 and finite")
        if self.prefix_cache_tokens < BLOCK_TOKENS:
            raise ConfigError(f"prefix_cache_tokens must be >= {BLOCK_TOKENS} (one block)")
        if self.jitter > 1:
            raise ConfigError("jitter is relative and must be <= 1")
        if self.itl_distribution not in DISTRIBUTIONS:
            raise ConfigError(f"itl_distribution must be one of {DISTRIBUTIONS}")
        if self.output_tokens < 0:
            raise ConfigError("output_tokens must be >= 0")
        if self.output_tokens_max is not None and self.output_tokens_max < self.output_tokens:
            raise ConfigError("output_tokens_max must be >= output_tokens")
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise ConfigError("max_concurrency must be >= 1")
        for spec, rate in self.faults.items():
            parse_fault(spec)
            if not 0 <= rate <= 1:
                raise ConfigError(f"fault rate for {spec!r} must be in [0, 1]")
        if sum(self.faults.values()) > 1 + 1e-9:
            raise ConfigError("fault rates add up to more than 1")
        if self.limit_ending not in LIMIT_ENDINGS:
            raise ConfigError(f"limit_ending must be one of {LIMIT_ENDINGS}")
        if self.close_after_response not in CLOSE_MODES:
            raise ConfigError(f"close_after_response must be one of {CLOSE_MODES}")
        if self.keepalive_timeout_s is not None and not self.keepalive_timeout_s > 0:
            raise ConfigError("keepalive_timeout_s must be > 0 (None: aiohttp's default)")
        if self.reasoning_tokens < 0:
            raise ConfigError("reasoning_tokens must be >= 0")
        if self.reasoning_field not in REASONING_FIELDS:
            raise ConfigError(f"reasoning_field must be one of {REASONING_FIELDS}")

    def to_argv(self) -> list[str]:
        """Flags that rebuild `config` in another process (all but the API key)."""
        tokens = str(self.output_tokens)
        if self.output_tokens_max is not None:
            tokens += f"-{self.output_tokens_max}"
        argv = [
            "--ttft-ms",
            repr(self.ttft_ms),
            "--itl-ms",
            repr(self.itl_ms),
            "--prefill-ms-per-1k",
            repr(self.prefill_ms_per_1k),
            "--prefix-cache-tokens",
            str(self.prefix_cache_tokens),
            "--jitter",
            repr(self.jitter),
            "--itl-distribution",
            self.itl_distribution,
            "--output-tokens",
            tokens,
            "--seed",
            str(self.seed),
            "--retry-after",
            repr(self.retry_after_s),
            "--model",
            self.model,
            "--faults",
            ",".join(f"{spec}={rate!r}" for spec, rate in self.faults.items()),
            "--limit-ending",
            self.limit_ending,
            "--close-after-response",
            self.close_after_response,
            "--reasoning-tokens",
            str(self.reasoning_tokens),
            "--reasoning-field",
            self.reasoning_field,
        ]
        if self.reasoning_summary:
            argv.append("--reasoning-summary")
        if self.prefix_cache:
            argv.append("--prefix-cache")
        if self.max_concurrency is not None:
            argv += ["--max-concurrency", str(self.max_concurrency)]
        if self.keepalive_timeout_s is not None:
            argv += ["--keepalive-timeout", repr(self.keepalive_timeout_s)]
        return argv

    def delay_rng(self) -> random.Random:
        """The latency model's RNG: seeded apart from the fault draw, so adding a fault rate
        does not change the delays (and a test can replay them)."""
        return random.Random(self.seed + 1)

    def output_length(self, seed: int) -> int:
        """The natural answer length: fixed, or spread evenly over the range by the text seed."""
        if self.output_tokens_max is None:
            return self.output_tokens
        return self.output_tokens + seed % (self.output_tokens_max - self.output_tokens + 1)


def parse_fault_rates(text: str) -> dict[str, float]:
    """`"429=0.05,500=0.02,disconnect:3=0.01"` -> `{"429": 0.05, ...}` (CLI and env form)."""
    rates: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        spec, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"fault rate {item!r} is not KIND=RATE")
        try:
            rates[spec.strip()] = float(value)
        except ValueError:
            raise ConfigError(f"fault rate {item!r} is not a number") from None
    return rates


def parse_token_range(text: str) -> tuple[int, int | None]:
    """`"128"` -> (128, None); `"64-512"` -> (64, 512): the CLI's --output-tokens."""
    low, sep, high = text.partition("-")
    try:
        return int(low), (int(high) if sep else None)
    except ValueError:
        raise ConfigError(f"--output-tokens {text!r} is not N or MIN-MAX") from None


class DelaySampler:
    """Draws TTFT and inter-token delays (seconds) from the configured model."""

    __slots__ = ("_itl_s", "_jitter", "_kind", "_mu", "_rng")

    def __init__(self, config: MockConfig, itl_ms: float, rng: random.Random) -> None:
        self._itl_s = itl_ms / 1000
        self._jitter = config.jitter
        self._kind = config.itl_distribution
        self._rng = rng
        self._mu = math.log(self._itl_s) - LOGNORMAL_SIGMA**2 / 2 if self._itl_s > 0 else 0.0

    @property
    def is_constant(self) -> bool:
        """Constant pacing lets the server count due tokens with one division."""
        return self._kind == "constant" and self._jitter == 0

    @property
    def itl_s(self) -> float:
        return self._itl_s

    def jittered(self, seconds: float) -> float:
        if self._jitter == 0 or seconds == 0:
            return seconds
        return seconds * self._rng.uniform(1 - self._jitter, 1 + self._jitter)

    def next_itl(self) -> float:
        if self._itl_s == 0:
            return 0.0
        if self._kind == "exponential":
            base = self._rng.expovariate(1 / self._itl_s)
        elif self._kind == "lognormal":
            base = self._rng.lognormvariate(self._mu, LOGNORMAL_SIGMA)
        else:
            base = self._itl_s
        return self.jittered(base)
