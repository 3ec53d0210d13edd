"""Datasets from files (every format, the skip count, errors with their place), the seeded
pick, corpus windows, and the token counters that cut prompts to a true-token length."""

from __future__ import annotations

import pickle
import random
import re
import sys
from typing import TYPE_CHECKING, Any

import orjson
import pytest

from engine.errors import ConfigError
from engine.loadtest import datasets
from engine.loadtest.datasets import (
    Conversation,
    Corpus,
    Dataset,
    load_corpus,
    load_dataset,
    pick,
    sample,
)
from engine.loadtest.prompts import TEMPLATE_OVERHEAD
from engine.loadtest.tokens import fit, load_tokenizer, prompt_length, word_counter

if TYPE_CHECKING:
    from pathlib import Path

    from engine.loadtest.tokens import TokenCounter

SHAREGPT = [
    {
        "id": "a",
        "conversations": [
            {"from": "system", "value": "Be brief."},
            {"from": "human", "value": "What is a stream?"},
            {"from": "gpt", "value": "A flow of events over time."},
            {"from": "human", "value": "And a token?"},
            {"from": "gpt", "value": "A piece"},
            {"from": "gpt", "value": "of text."},
            {"from": "human", "value": "Thanks"},
        ],
    },
    {"id": "b", "conversations": [{"from": "gpt", "value": "I speak first."}]},  # no user turn
    {"id": "c", "conversations": []},  # ShareGPT_V3 has these
    {
        "id": "d",
        "conversation": [  # the other spelling, role/content inside
            {"role": "assistant", "content": "Hello!"},  # before any user turn: dropped
            {"role": "user", "content": "Hi"},
            {"role": "tool", "content": "ignored"},
            {"role": "assistant", "content": "Hi there, how can I help"},
        ],
    },
    {
        "id": "e",
        "conversations": [
            {"from": "human", "value": "One"},
            {"from": "gpt", "value": "two words"},
            {"from": "human", "value": "  "},  # an empty turn ends it: nothing to send
            {"from": "gpt", "value": "lost"},
            {"from": "human", "value": "unreachable"},
        ],
    },
]


def write_lines(path: Path, records: list[Any]) -> Path:
    path.write_bytes(b"\n".join(orjson.dumps(record) for record in records) + b"\n")
    return path


def test_sharegpt_json(tmp_path: Path) -> None:
    path = tmp_path / "sharegpt.json"
    path.write_bytes(orjson.dumps(SHAREGPT, option=orjson.OPT_INDENT_2))
    found = load_dataset(path)
    assert isinstance(found, Dataset)
    assert isinstance(found, list)
    assert found.format == "sharegpt"
    assert found.skipped == 2
    assert list(found) == [
        Conversation("Be brief.", ("What is a stream?", "And a token?", "Thanks"), (6, 4, None)),
        Conversation(None, ("Hi",), (6,)),
        Conversation(None, ("One",), (2,)),
    ]
    assert "skipped 2" in repr(found)
    copied = pickle.loads(pickle.dumps(found))  # noqa: S301 - our own bytes
    assert (copied, copied.skipped, copied.format) == (found, 2, "sharegpt")


def test_chat_messages_jsonl_with_content_parts(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "chat.jsonl",
        [
            {
                "messages": [
                    {"role": "system", "content": [{"type": "text", "text": "You help."}]},
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "Look at this"},
                            {"type": "image_url", "image_url": {"url": "data:..."}},
                            {"type": "text", "text": "and say"},
                        ],
                    },
                    {"role": "assistant", "content": "It is a cat"},
                ]
            },
            {"messages": [{"role": "system", "content": "alone"}]},
            {"messages": [{"role": "user", "content": "second"}]},
        ],
    )
    found = load_dataset(path)
    assert isinstance(found, Dataset)
    assert found.format == "messages"
    assert found.skipped == 1
    assert found[0] == Conversation("You help.", ("Look at this\nand say",), (4,))
    assert found[1] == Conversation(None, ("second",), (None,))


def test_openai_batch_jsonl(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "batch.jsonl",
        [
            {
                "custom_id": "1",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": "m", "messages": [{"role": "user", "content": "chat"}]},
            },
            {
                "custom_id": "2",
                "url": "/v1/responses",
                "body": {"instructions": "Be kind.", "input": "responses"},
            },
            {
                "custom_id": "3",
                "url": "/v1/responses",
                "body": {
                    "input": [
                        {"role": "user", "content": [{"type": "input_text", "text": "items"}]}
                    ]
                },
            },
            {"custom_id": "4", "url": "/v1/completions", "body": {"prompt": "completion"}},
        ],
    )
    found = load_dataset(path)
    assert isinstance(found, Dataset)
    assert found.format == "batch"
    assert [(c.system, c.turns) for c in found] == [
        (None, ("chat",)),
        ("Be kind.", ("responses",)),
        (None, ("items",)),
        (None, ("completion",)),
    ]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("bad.json", '[{"conversations": []},\n {"conversations" []}]', "bad.json:2:19: not JSON"),
        ("bad.jsonl", '{"messages": []}\n\n{"messages": [}\n', "bad.jsonl:3: not JSON"),
        ("bad.jsonl", '{"messages": []}\n{"prompt": "x"}\n', "bad.jsonl:2: not a conversation"),
        ("bad.json", '[{"conversations": []}, 5]', "bad.json: item 2: not a conversation"),
        ("bad.json", '[{"conversations": ["hi"]}]', "bad.json: item 1: a message is an object"),
        ("bad.json", '{"conversations": [\n]}', "bad.json:1: not JSON"),
        ("bad.json", "[]", "bad.json: no conversation with a user turn (0 skipped)"),
        ("bad.jsonl", '{"messages": []}', "bad.jsonl: no conversation with a user turn (1 sk"),
        ("bad.json", '"a string"', "bad.json:1: not a conversation"),
    ],
)
def test_bad_datasets_say_where(tmp_path: Path, name: str, content: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        load_dataset(path)
    assert str(tmp_path) in str(info.value)


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"{tmp_path}/none.json: cannot read")):
        load_dataset(tmp_path / "none.json")


@pytest.mark.parametrize("chunk", [3, 4096])
def test_reply_word_counts_are_str_split_s(monkeypatch: pytest.MonkeyPatch, chunk: int) -> None:
    """The numpy count agrees with `len(text.split())`, Unicode spaces aside (documented)."""
    monkeypatch.setattr(datasets, "_COUNT_CHUNK", chunk)
    rng = random.Random(2)
    atoms = ["a", "bb", "é", "日本", " ", "  ", "\n", "\t", "\x1f", "\r\n", "\x00", "\ud800"]
    texts = ["".join(rng.choices(atoms, k=rng.randint(0, 30))) for _ in range(500)]
    texts += ["", " ", "word", "two\u00a0words"]
    expected = [len(text.split()) for text in texts[:-1]] + [1]  # NBSP: one word here
    assert datasets._word_counts(texts) == expected


CORPUS = "one two three four five\nsix seven  eight nine ten"


@pytest.mark.parametrize("name", ["corpus.txt", "corpus.md", "corpus"])
def test_plain_text_is_a_corpus(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text(CORPUS)
    found = load_dataset(path)
    assert isinstance(found, Corpus)
    assert found.words == CORPUS.split()


def test_a_txt_file_is_a_corpus_whatever_it_starts_with(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text('[{"conversations": []}] is JSON-looking text')
    assert isinstance(load_dataset(path), Corpus)


@pytest.mark.parametrize("words", [1, 3, 10, 25])
def test_corpus_windows_have_the_asked_word_count(tmp_path: Path, words: int) -> None:
    path = tmp_path / "c.txt"
    path.write_text(CORPUS)
    corpus = load_corpus(path)
    rng = random.Random(5)
    prompts = [corpus.prompt(rng, words) for _ in range(40)]
    assert all(len(prompt.split()) == words for prompt in prompts)
    starts = {prompt.split()[0] for prompt in prompts}
    assert len(starts) > 5  # a random start, not always the first word
    assert [corpus.prompt(random.Random(5), words) for _ in range(3)] == [prompts[0]] * 3


def test_corpus_window_wraps_past_the_end(tmp_path: Path) -> None:
    path = tmp_path / "c.txt"
    path.write_text(CORPUS)
    corpus = load_corpus(path)
    assert corpus.window(8, 5) == ["nine", "ten", "one", "two", "three"]
    assert corpus.window(2, 23)[-1] == "five"
    stream = corpus.stream(9)
    assert [next(stream) for _ in range(3)] == ["ten", "one", "two"]


def test_an_empty_corpus_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "empty.txt"
    path.write_text(" \n\t ")
    with pytest.raises(ConfigError, match=re.escape("empty.txt: the corpus has no words")):
        load_corpus(path)


def conversations(n: int) -> list[Conversation]:
    return [Conversation(None, (f"turn {i}",), (None,)) for i in range(n)]


@pytest.mark.parametrize("size", [1, 2, 3, 5, 16, 17, 100, 1000])
def test_pick_uses_each_conversation_once_per_pass(size: int) -> None:
    items = conversations(size)
    for seed in (0, 1, -9):
        first = [pick(items, seed, index).turns for index in range(size)]
        second = [pick(items, seed, index).turns for index in range(size, 2 * size)]
        assert sorted(first) == sorted(c.turns for c in items)
        assert sorted(second) == sorted(first)
        if size >= 16:
            assert first != second  # each pass in its own order
            assert first != [c.turns for c in items]  # and not the file's


def test_pick_is_the_same_for_a_seed_and_sample_agrees() -> None:
    items = conversations(50)
    chosen = sample(items, 120, seed=3)
    assert chosen == [pick(items, 3, index) for index in range(120)]
    assert chosen == sample(items, 120, seed=3)
    assert chosen != sample(items, 120, seed=4)
    with pytest.raises(ConfigError, match="no conversations"):
        pick([], 0, 0)


# --- token counters ------------------------------------------------------------------------

VOCAB = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "far", "#", "1", "2", "3"]


@pytest.fixture
def tokenizer_file(tmp_path: Path) -> Path:
    tokenizers = pytest.importorskip("tokenizers")
    vocab = {"[UNK]": 0} | {word: i for i, word in enumerate(VOCAB, 1)}
    tokenizer = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))  # noqa: S106
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    path = tmp_path / "tokenizer.json"
    tokenizer.save(str(path))
    return path


@pytest.fixture
def bpe_counter(tmp_path: Path) -> TokenCounter:
    """A byte-level BPE trained here on a few sentences: tokens that split words unevenly."""
    tokenizers = pytest.importorskip("tokenizers")
    tokenizer = tokenizers.Tokenizer(tokenizers.models.BPE())
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=300,
        show_progress=False,
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),  # every byte a token
    )
    tokenizer.train_from_iterator([CORPUS, " ".join(VOCAB) * 3, "streaming engines"], trainer)
    path = tmp_path / "bpe" / "tokenizer.json"
    path.parent.mkdir()
    tokenizer.save(str(path))
    return load_tokenizer(path.parent)  # a model directory holding tokenizer.json


def test_word_counter_is_the_mocks_count() -> None:
    counter = word_counter()
    assert counter.name == "words"
    assert counter.count("  the cat\nsat ") == 3
    assert prompt_length(counter, "the cat sat") == 3 + TEMPLATE_OVERHEAD
    assert counter.prefix("a b c d", 2) == "a b"


def test_tokenizer_counts_true_tokens(tokenizer_file: Path) -> None:
    counter = load_tokenizer(tokenizer_file)
    assert counter.name == str(tokenizer_file)
    assert counter.count("the cat sat") == 3
    assert counter.count("the cat #12") == 4  # "#" and "12" (unknown, one token)
    assert counter.prefix("the cat #12 sat", 3) == "the cat #"
    assert counter.prefix("the cat", 5) == "the cat"
    copied = pickle.loads(pickle.dumps(counter))  # noqa: S301 - a worker's copy
    assert copied.count("the cat #12 sat") == 5


@pytest.mark.parametrize("tokens", [1, 2, 3, 7, 40, 333])
def test_fit_hits_the_token_count(tokenizer_file: Path, tokens: int) -> None:
    counter = load_tokenizer(tokenizer_file)
    text = fit(counter, "#12 the cat sat on a mat", tokens)
    assert counter.count(text) == tokens
    assert text.startswith("#" if tokens == 1 else "#12")  # the distinct head survives
    words = fit(word_counter(), "#12 the cat sat", tokens)
    assert len(words.split()) == tokens


def test_fit_draws_on_a_word_stream(tmp_path: Path) -> None:
    path = tmp_path / "c.txt"
    path.write_text(CORPUS)
    corpus = load_corpus(path)
    text = fit(word_counter(), corpus.stream(8), 4)
    assert text == "nine ten one two"
    assert fit(word_counter(), iter(["only", "three", "words"]), 10) == "only three words"


def test_fit_with_bpe_is_at_most_one_token_off(bpe_counter: TokenCounter) -> None:
    source = "#7 " + CORPUS + " streaming engines ran far, naïve café 12345!? (ok)"
    assert bpe_counter.count(source) > 3 * len(source.split())  # words of several tokens
    offs = [
        bpe_counter.count(fit(bpe_counter, source, tokens)) - tokens for tokens in range(1, 200)
    ]
    assert all(abs(off) <= 1 for off in offs)
    assert offs.count(0) > 0.9 * len(offs)


def test_tokenizer_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("tokenizers")
    with pytest.raises(ConfigError, match="no such tokenizer file"):
        load_tokenizer(tmp_path / "missing.json")
    with pytest.raises(ConfigError, match="no such tokenizer file"):
        load_tokenizer(tmp_path)  # a directory without tokenizer.json
    bad = tmp_path / "bad.json"
    bad.write_text('{"version": "1.0"}')
    with pytest.raises(ConfigError, match=re.escape(f"{bad}: not a tokenizer.json")):
        load_tokenizer(bad)
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # as if not installed
    with pytest.raises(ConfigError, match=re.escape("pip install 'stream-engine[workloads]'")):
        load_tokenizer(bad)


class GreedyCut:
    """One token a letter, and a cut that keeps one letter too many, as a tokenizer's may when
    re-tokenizing the cut splits its last token."""

    name = "greedy"

    def count(self, text: str) -> int:
        return sum(char.isalpha() for char in text)

    def prefix(self, text: str, tokens: int) -> str:
        letters = 0
        for end, char in enumerate(text):
            letters += char.isalpha()
            if letters > tokens:
                return text[: end + 1]
        return text


def test_fit_re_cuts_when_the_cut_is_off() -> None:
    counter = GreedyCut()
    assert counter.count(counter.prefix("ab cd ef", 3)) == 4
    for tokens in (1, 3, 4, 7, 30):
        assert counter.count(fit(counter, "ab cd ef gh", tokens)) == tokens
