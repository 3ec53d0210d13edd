"""Request bodies: synthetic prompts of a target length, or bodies read from a JSONL file.

Synthetic prompts are seeded random words with a distinct start per request, so a server's
prefix cache cannot turn the test into a cache benchmark (vLLM's random dataset does the
same). Length is counted the way the mock counts input tokens (one token per word plus the
chat-template overhead); on a real tokenizer it is close, and the report shows the usage the
server returned, not this estimate.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import orjson

from engine.bodies import prompt_body
from engine.errors import ConfigError
from engine.events import Dialect
from engine.loadtest.config import MIN_PRIME_TOKENS, LoadConfig

TEMPLATE_OVERHEAD = 6  # one user message (3) plus the reply priming (3)
_WORDS = (  # noqa: SIM905  (a sentence reads better than a 40-item list)
    "time stream token engine server client model latency queue window signal budget river "
    "mountain garden number letter question answer system network memory paper water light "
    "history future market energy picture music table winter summer forest ocean city road"
).split()


def synthetic_prompt(index: int, input_tokens: int, rng: random.Random) -> str:
    words = max(1, input_tokens - TEMPLATE_OVERHEAD)
    head = [f"#{index}"]  # distinct first token: no shared prefix between requests
    return " ".join(head + rng.choices(_WORDS, k=words - 1))


def make_body(config: LoadConfig, prompt: str, output_tokens: int) -> dict[str, Any]:
    """A streaming body in the configured dialect, always capped at `output_tokens`, and with
    `config.ignore_eos` asking for that length itself as vLLM takes it (`ignore_eos`, and
    `min_tokens` for servers that honour only that): a cap alone is a ceiling, and a model
    that stops early would run a lighter load than the one asked for."""
    body = prompt_body(Dialect(config.endpoint), config.model, prompt, output_tokens)
    if config.ignore_eos:
        body["ignore_eos"] = True
        body["min_tokens"] = output_tokens
    return body


def load_bodies(path: str | Path, model: str | None = None) -> list[dict[str, Any]]:
    """Request bodies from JSONL: plain bodies, or OpenAI Batch lines (their `body`)."""
    bodies: list[dict[str, Any]] = []
    with Path(path).open("rb") as file:
        for number, line in enumerate(file, 1):
            if not line.strip():
                continue
            try:
                item = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise ConfigError(f"{path}:{number}: not JSON ({exc})") from None
            if isinstance(item, dict) and isinstance(item.get("body"), dict):
                item = item["body"]
            if not isinstance(item, dict):
                raise ConfigError(f"{path}:{number}: a request body must be a JSON object")
            if model is not None:
                item.setdefault("model", model)
            bodies.append(item)
    if not bodies:
        raise ConfigError(f"{path}: no request bodies")
    return bodies


class PromptSource:
    """Body number `i` of a run: deterministic for a seed, so workers can share one plan."""

    __slots__ = ("_bodies", "_config", "_seed")

    def __init__(self, config: LoadConfig) -> None:
        self._config = config
        self._seed = config.seed
        self._bodies = (
            load_bodies(config.prompts_file, config.model) if config.prompts_file else None
        )

    def body(self, index: int) -> dict[str, Any]:
        if self._bodies is not None:
            return self._bodies[index % len(self._bodies)]
        rng = random.Random(self._seed * 1_000_003 + index)
        prompt = synthetic_prompt(index, self._config.input_tokens, rng)
        return make_body(self._config, prompt, self._config.output_tokens)

    def primer(self, index: int) -> dict[str, Any]:
        """A short request that only opens a connection (warm-up)."""
        return make_body(self._config, f"warm-up {index}", MIN_PRIME_TOKENS)
