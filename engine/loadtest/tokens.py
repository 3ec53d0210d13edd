"""Counting a prompt's tokens: in words, as the mock counts them, or with the model's own
tokenizer (`tokenizer.json`, through the optional `tokenizers` package), so that a workload's
input lengths are the lengths a real server sees.

A counter counts a text's own tokens; the chat template's tokens around it are the caller's
to add (`template_tokens`; `prompt_length` for a one-message prompt, as the mock counts it).
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from engine.errors import ConfigError
from engine.loadtest.prompts import MESSAGE_OVERHEAD, REPLY_OVERHEAD

if TYPE_CHECKING:
    from collections.abc import Iterable

    from tokenizers import Encoding, Tokenizer

INSTALL_HINT = "pip install 'stream-engine[workloads]'"
_NUDGES = 3  # re-cuts after the first, when re-tokenizing the cut moved its count


class TokenCounter(Protocol):
    """How many tokens a text is, and where to cut it to hold a given number."""

    @property
    def name(self) -> str: ...  # what a report shows: "words" or the tokenizer's path

    def count(self, text: str) -> int: ...

    def prefix(self, text: str, tokens: int) -> str:
        """The start of `text` holding `tokens` tokens (all of it when it holds fewer)."""
        ...


class WordCounter:
    """One token per whitespace-separated word: the mock's count, and the default."""

    __slots__ = ()

    @property
    def name(self) -> str:
        return "words"

    def count(self, text: str) -> int:
        return len(text.split())

    def prefix(self, text: str, tokens: int) -> str:
        return " ".join(text.split()[:tokens])


class TokenizerCounter:
    """A `tokenizers.Tokenizer`'s count, special tokens left out (the template adds them)."""

    __slots__ = ("_last", "_last_text", "_name", "_tokenizer")

    def __init__(self, tokenizer: Tokenizer, name: str) -> None:
        # A tokenizer.json may carry truncation or padding settings: either would bend the count.
        tokenizer.no_truncation()
        tokenizer.no_padding()
        self._tokenizer = tokenizer
        self._name = name
        self._last_text: str | None = None
        self._last: Encoding | None = None

    @property
    def name(self) -> str:
        return self._name

    def count(self, text: str) -> int:
        return len(self._encode(text))

    def prefix(self, text: str, tokens: int) -> str:
        encoding = self._encode(text)
        if len(encoding) <= tokens:
            return text
        if tokens <= 0:
            return ""
        return text[: encoding.offsets[tokens - 1][1]]  # offsets index the original text

    def _encode(self, text: str) -> Encoding:
        # `fit` counts a text, then cuts the same one: one encoding serves both (the encode
        # is most of fit's time, ~1 ms per thousand tokens).
        if text is not self._last_text or self._last is None:
            self._last = self._tokenizer.encode(text, add_special_tokens=False)
            self._last_text = text
        return self._last


def word_counter() -> TokenCounter:
    return WordCounter()


def load_tokenizer(path: str | Path) -> TokenCounter:
    """A counter from a `tokenizer.json`, or a model directory that holds one."""
    try:
        from tokenizers import Tokenizer  # noqa: PLC0415 - optional: only --tokenizer needs it
    except ImportError:
        raise ConfigError(f"a tokenizer needs the tokenizers package: {INSTALL_HINT}") from None
    file = Path(path)
    if file.is_dir():
        file /= "tokenizer.json"
    if not file.is_file():
        raise ConfigError(f"{file}: no such tokenizer file (a tokenizer.json or its directory)")
    try:
        tokenizer = Tokenizer.from_file(str(file))
    except Exception as exc:  # the Rust side raises a bare Exception for a bad file
        raise ConfigError(f"{file}: not a tokenizer.json ({exc})") from None
    return TokenizerCounter(tokenizer, str(path))


def template_tokens(messages: int) -> int:
    """The chat template's tokens around a prompt of `messages` messages, as the mock counts."""
    return MESSAGE_OVERHEAD * messages + REPLY_OVERHEAD


def prompt_length(counter: TokenCounter, text: str) -> int:
    """A one-message prompt's tokens: the text's and the chat template's, as the mock counts."""
    return counter.count(text) + template_tokens(1)


def fit(counter: TokenCounter, text_source: str | Iterable[str], tokens: int) -> str:
    """A text of `tokens` tokens by `counter`, from `text_source`'s words: a string (its words
    repeated from the start if it is short of tokens) or a stream of words (e.g.
    `Corpus.stream`; a finite one that runs out gives a shorter text).

    Words are added until the text holds enough, then it is cut at the token boundary. Exact
    when re-tokenizing the cut text gives the same tokens (a word-level count always; a BPE
    one nearly always); otherwise the closest of a few re-cuts, which is one token off at most
    for tokenizers that split or merge only the token at the cut."""
    want = max(1, tokens)
    stream = iter(
        itertools.cycle(text_source.split()) if isinstance(text_source, str) else text_source
    )
    words: list[str] = []
    take = want  # most tokenizers give a word one token or more
    while True:
        more = list(itertools.islice(stream, take))
        words += more
        text = " ".join(words)
        have = counter.count(text)
        if have >= want or not more:
            break
        # more words, as many as the words so far say the missing tokens need, and a margin
        take = math.ceil((want - have) * len(words) / max(have, 1)) + 8
    if have <= want:
        return text
    best, best_off = text, have - want
    cut = want
    for _ in range(1 + _NUDGES):
        candidate = counter.prefix(text, cut)
        off = counter.count(candidate) - want
        if abs(off) < abs(best_off):
            best, best_off = candidate, off
        if off == 0 or cut - off < 0:
            break
        cut -= off
    return best
