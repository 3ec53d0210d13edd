"""Request texts and bodies: synthetic prompts of a target length, a load's body in its
dialect, and bodies read from a JSONL file (what each request of a run *is* lives in
`engine.loadtest.workload`).

Synthetic prompts are seeded random words with a distinct start per request, so a server's
prefix cache cannot turn the test into a cache benchmark (vLLM's random dataset does the
same). Length is counted the way the mock counts input tokens (one token per word plus the
chat-template overhead); on a real tokenizer it is close, and the report shows the usage the
server returned, not this estimate.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.bodies import messages_body
from engine.errors import ConfigError
from engine.events import Dialect
from engine.loadtest.jsonlines import json_lines

if TYPE_CHECKING:
    import random

    from engine.loadtest.config import LoadConfig

MESSAGE_OVERHEAD = 3  # the tokens a chat template adds per message (the mock counts so)
REPLY_OVERHEAD = 3  # and the reply's priming
TEMPLATE_OVERHEAD = MESSAGE_OVERHEAD + REPLY_OVERHEAD  # a one-message prompt's whole overhead
_WORDS = (  # noqa: SIM905  (a sentence reads better than a 40-item list)
    "time stream token engine server client model latency queue window signal budget river "
    "mountain garden number letter question answer system network memory paper water light "
    "history future market energy picture music table winter summer forest ocean city road"
).split()


def synthetic_prompt(index: int, input_tokens: int, rng: random.Random) -> str:
    """A one-message prompt of `input_tokens` as the mock counts (words plus the template)."""
    return synthetic_text(f"#{index}", input_tokens - TEMPLATE_OVERHEAD, rng)


def synthetic_text(head: str, words: int, rng: random.Random) -> str:
    """`words` words: `head` (distinct per request, so no two share a prefix by chance), then
    seeded random words."""
    return " ".join([head, *rng.choices(_WORDS, k=max(1, words) - 1)])


def make_body(
    config: LoadConfig, messages: list[dict[str, str]], output_tokens: int
) -> dict[str, Any]:
    """A streaming body in the configured dialect, always capped at `output_tokens`, and with
    `config.ignore_eos` asking for that length itself as vLLM takes it (`ignore_eos`, and
    `min_tokens` for servers that honour only that): a cap alone is a ceiling, and a model
    that stops early would run a lighter load than the one asked for."""
    body = messages_body(Dialect(config.endpoint), config.model, messages, output_tokens)
    if config.ignore_eos:
        body["ignore_eos"] = True
        body["min_tokens"] = output_tokens
    return body


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def load_bodies(path: str | Path, model: str | None = None) -> list[dict[str, Any]]:
    """Request bodies from JSONL: plain bodies, or OpenAI Batch lines (their `body`)."""
    bodies: list[dict[str, Any]] = []
    with Path(path).open("rb") as file:
        for number, line in json_lines(file, str(path)):
            batch_line = isinstance(line, dict) and isinstance(line.get("body"), dict)
            item = line["body"] if batch_line else line
            if not isinstance(item, dict):
                raise ConfigError(f"{path}:{number}: a request body must be a JSON object")
            if model is not None:
                item.setdefault("model", model)
            bodies.append(item)
    if not bodies:
        raise ConfigError(f"{path}: no request bodies")
    return bodies
