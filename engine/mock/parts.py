"""The deterministic content of the parts beyond plain text: tool calls (function, custom,
legacy), refusal, reasoning, audio, annotations, logprobs.

Everything here is a pure function of a seed (and the request's tool schema), so the same
request gets the same calls, arguments and logprobs on any machine, and a test can predict them.
"""

from __future__ import annotations

import base64
import random
import re
import zlib
from typing import TYPE_CHECKING, Any

import orjson

from engine.mock.text import VOCAB, WORDS, Segment, generate_tokens, new_id

if TYPE_CHECKING:
    from collections.abc import Callable

# Said token by token when the request forces a refusal (x-mock-output: refusal).
REFUSAL = ("I'm", " sorry", ",", " but", " I", " can't", " help", " with", " that", ".")
REASONING_SALT = 0x9E3779B9  # reasoning is drawn from another window of the table than the text
CUSTOM_INPUT_TOKENS = 6
_FRAGMENT = re.compile(r" ?\w+|\s+|[^\w\s]+")  # words (with their space), blanks, punctuation
_MAX_DEPTH = 4  # nested object schemas deeper than this get {}


def reasoning_segment(seed: int, count: int) -> Segment:
    return Segment.of_tokens("reasoning", generate_tokens(seed + REASONING_SALT, count))


def refusal_segment() -> Segment:
    return Segment.of_pieces("refusal", list(REFUSAL))


_SCALARS: dict[str, Callable[[random.Random], Any]] = {  # JSON Schema type -> a drawn value
    "integer": lambda rng: rng.randint(1, 100),
    "number": lambda rng: round(rng.uniform(0, 100), 2),
    "boolean": lambda rng: rng.random() < 0.5,
    "null": lambda _rng: None,
    "string": lambda rng: " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 3))),
}


def _type(schema: dict[str, Any]) -> str:
    kind = schema.get("type")
    if isinstance(kind, list):  # ["string", "null"]: the first that is not null
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None and "properties" in schema:
        return "object"
    return kind if isinstance(kind, str) else "string"


def _value(schema: Any, rng: random.Random, depth: int) -> Any:
    """A value that fits `schema` (JSON Schema, the subset tool parameters use)."""
    schema = schema if isinstance(schema, dict) else {}
    alternatives = schema.get("anyOf") or schema.get("oneOf")
    if isinstance(alternatives, list):
        return _value(alternatives[0], rng, depth)
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    kind = _type(schema)
    if kind == "object":
        properties = schema.get("properties")
        if depth >= _MAX_DEPTH or not isinstance(properties, dict):
            properties = {}
        return {name: _value(sub, rng, depth + 1) for name, sub in properties.items()}
    if kind == "array":
        return [_value(schema.get("items"), rng, depth + 1) for _ in range(rng.randint(1, 2))]
    return _SCALARS.get(kind, _SCALARS["string"])(rng)


def tool_arguments(parameters: Any, seed: int, name: str) -> str:
    """The call's arguments: a JSON object with a value for every property of the schema."""
    value = _value(parameters, random.Random(f"{seed}|{name}"), 0)
    return orjson.dumps(value if isinstance(value, dict) else {}).decode()


def fragments(arguments: str) -> list[str]:
    """`{"city":"Paris"}` -> `{"`, `city`, `":"`, `Paris`, `"}`: what a model streams."""
    return _FRAGMENT.findall(arguments)


def custom_input(seed: int, name: str) -> str:
    """A custom tool's free-form input: a few words of the token table."""
    tokens = generate_tokens(zlib.crc32(f"{seed}|{name}".encode()), CUSTOM_INPUT_TOKENS)
    return "".join(VOCAB[t] for t in tokens).strip()


def call_segment(
    name: str, parameters: Any, seed: int, index: int, call_type: str = "function"
) -> Segment:
    """One call: the naming token (`""`), then its input's fragments (a function's JSON
    arguments, a custom tool's free text). Chat's legacy `function_call` has no id."""
    text = (
        custom_input(seed + index, name)
        if call_type == "custom"
        else tool_arguments(parameters, seed + index, name)
    )
    return Segment.of_pieces(
        "tool_call",
        ["", *fragments(text)],
        name=name,
        call_id="" if call_type == "function_call" else new_id("call_")[:29],
        call_index=index,
        call_type=call_type,
    )


def audio_segment(tokens: list[int]) -> Segment:
    """A spoken answer: its transcript's tokens, each with its own audio (`audio_data`)."""
    return Segment.of_tokens("audio", tokens)


def audio_data(token: str) -> str:
    """A token's audio: base64 of its UTF-8 bytes, NUL-padded to whole base64 groups, so the
    chunks of an answer joined decode too (as the real API's chunks of one audio do)."""
    raw = token.encode()
    return base64.b64encode(raw + b"\0" * (-len(raw) % 3)).decode()


def url_citation(index: int, end: int, *, chat: bool) -> dict[str, Any]:
    """Annotation `index` of an answer `end` characters long, in either API's shape."""
    cite = {
        "url": f"https://example.com/source-{index}",
        "title": f"Source {index}",
        "start_index": 0,
        "end_index": end,
    }
    if chat:
        return {"type": "url_citation", "url_citation": cite}
    return {"type": "url_citation", **cite}


def logprob(token: str) -> float:
    """The token's log probability: a fixed function of its text, in (-4, 0]."""
    return -(zlib.crc32(token.encode()) % 4000) / 1000


def _alternatives(token: str, count: int) -> list[tuple[str, float]]:
    """`count` (token, logprob) pairs: the token itself first (the most likely), then other
    vocabulary tokens, each less likely than the last."""
    others = [v for v in VOCAB if v != token]
    start, chosen = zlib.crc32(token.encode()), logprob(token)
    # 7 and len(others) are coprime: no token twice.
    return [(token, chosen)][:count] + [
        (others[(start + 7 * j) % len(others)], round(chosen - j * 0.75, 3))
        for j in range(1, count)
    ]


def chat_logprob(token: str, top: int) -> dict[str, Any]:
    """Chat's `ChatCompletionTokenLogprob`: token, logprob, bytes, top_logprobs."""
    return {
        "token": token,
        "logprob": logprob(token),
        "bytes": list(token.encode()),
        "top_logprobs": [
            {"token": t, "logprob": lp, "bytes": list(t.encode())}
            for t, lp in _alternatives(token, top)
        ],
    }


def delta_logprob(token: str, top: int) -> dict[str, Any]:
    """The Responses `output_text.delta` entry: token, logprob, top_logprobs (no bytes)."""
    return {
        "token": token,
        "logprob": logprob(token),
        "top_logprobs": [{"token": t, "logprob": lp} for t, lp in _alternatives(token, top)],
    }


def text_logprob(token: str, top: int) -> dict[str, Any]:
    """The Responses `output_text` part's entry (done event, final item): with bytes."""
    return {
        "token": token,
        "bytes": list(token.encode()),
        "logprob": logprob(token),
        "top_logprobs": [
            {"token": t, "bytes": list(t.encode()), "logprob": lp}
            for t, lp in _alternatives(token, top)
        ],
    }


def legacy_logprobs(pieces: list[str], top: int) -> list[dict[str, Any]]:
    """The legacy endpoint's `logprobs` of each token (its chunk's): parallel lists of one
    entry, `text_offset` counting the answer's characters before it."""
    out, offset = [], 0
    for token in pieces:
        out.append(
            {
                "tokens": [token],
                "token_logprobs": [logprob(token)],
                "top_logprobs": [dict(_alternatives(token, top))],
                "text_offset": [offset],
            }
        )
        offset += len(token)
    return out
