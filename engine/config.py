"""Values the engine and its tools share, with no I/O: time limits, the retry policy, and
the environment's defaults (the conventions every OpenAI client follows).

Everything here is a plain, picklable value: options, the load tester and the batch runner
import it without importing the client (and aiohttp with it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Final

__all__ = [
    "COMMAND_TIMEOUTS",
    "DEFAULT_BASE_URL",
    "RetryPolicy",
    "Timeouts",
    "env_api_key",
    "env_base_url",
]

DEFAULT_BASE_URL: Final = "https://api.openai.com/v1"


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Each phase's limit in seconds (None: no limit), per call or per engine. Measured from
    the request start, except `idle_s` (the longest gap between two chunks of the body) and
    `connect_s` (one TCP connect; waiting for a free connection of the pool does not count)."""

    connect_s: float | None = 10.0
    first_byte_s: float | None = 120.0
    first_token_s: float | None = None
    idle_s: float | None = 120.0
    total_s: float | None = None


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with full jitter; `Retry-After` wins when the server sends it."""

    max_retries: int = 2
    base_s: float = 0.5
    cap_s: float = 20.0
    max_retry_after_s: float = 60.0
    mid_stream: bool = False  # also a stream broken after its first event (see the module)


# The commands' limits (run, batch, bench): a dead stream ends within minutes, whatever it
# does: no headers within 60 s, no first token within 300 s, no event for 60 s (comments do
# not count), each attempt; with the default two retries, a server that stalls every attempt
# fails in at most 3 x 60 s plus backoff.
COMMAND_TIMEOUTS: Final = Timeouts(
    connect_s=10.0, first_byte_s=60.0, first_token_s=300.0, idle_s=60.0, total_s=None
)


def env_base_url() -> str | None:
    """`OPENAI_BASE_URL`, the convention every OpenAI client follows (None when unset)."""
    return os.environ.get("OPENAI_BASE_URL") or None


def env_api_key() -> str | None:
    """`OPENAI_API_KEY` (None when unset). Prefer it to a flag: argv shows in `ps`."""
    return os.environ.get("OPENAI_API_KEY") or None
