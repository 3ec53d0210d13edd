"""The mock's prefill cost and prefix cache, over real HTTP on 127.0.0.1: a shared system
prompt is reported as cached and skips its prefill, the same text elsewhere does not hit, a
conversation's next turn hits the whole previous turn, the LRU evicts at capacity, and without
the cache nothing is cached; the flags' round trip and the usage fields' exact shape.

Timing is asserted only as lower bounds (no first token before its prefill) or as a wide
difference of medians (a cached prompt's TTFT is lower by at least 250 ms of 400 expected),
so a busy machine cannot fail them; no sleeps.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from dataclasses import dataclass
from itertools import chain
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson
import pytest

from engine.cli.mock import add_arguments, config_from_args
from engine.cli.mock import main as mock_main
from engine.errors import ConfigError
from engine.mock import MockConfig, MockProcess
from engine.mock.prefix_cache import BLOCK_TOKENS, PrefixCache
from engine.mock.text import count_input_tokens, prompt_runs

if TYPE_CHECKING:
    from tests.conftest import MockFactory

PREFILL_MS_PER_1K = 200.0
SHARED_WORDS = 2000  # the system prompt: 2,000 words, 400 ms of prefill at 200 ms per 1k
SAMPLES = 5
CHAT_USAGE = {"include_usage": True}


def words(tag: str, count: int) -> str:
    """`count` distinct words, all starting with `tag` (another tag: another text)."""
    return " ".join(f"{tag}{i}" for i in range(count))


def blocks_of(tokens: int) -> int:
    """`tokens` rounded down to whole blocks: what a cache can hold of them."""
    return tokens // BLOCK_TOKENS * BLOCK_TOKENS


@dataclass(slots=True)
class Reply:
    ttft_ms: float  # from sending to the first text delta
    usage: dict[str, Any]
    text: str


def chat_body(messages: list[dict[str, Any]]) -> dict[str, Any]:
    return {"model": "m", "messages": messages, "stream": True, "stream_options": CHAT_USAGE}


def resp_body(items: list[dict[str, Any]], instructions: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "m", "input": items, "stream": True}
    if instructions is not None:
        body["instructions"] = instructions
    return body


def _text_delta(event: dict[str, Any]) -> str | None:
    if event.get("type") == "response.output_text.delta":
        return str(event["delta"])
    choices = event.get("choices")
    if choices and choices[0]["delta"].get("content"):
        return str(choices[0]["delta"]["content"])
    return None


async def send(base_url: str, body: dict[str, Any], **headers: str) -> Reply:
    """One streamed request (chat with `messages`, else Responses): TTFT, usage, text."""
    path = "/chat/completions" if "messages" in body else "/responses"
    first: float | None = None
    usage: dict[str, Any] = {}
    text: list[str] = []
    async with aiohttp.ClientSession() as session:
        sent = time.perf_counter()
        async with session.post(base_url + path, data=orjson.dumps(body), headers=headers) as resp:
            assert resp.status == 200, await resp.text()
            async for line in resp.content:
                if not line.startswith(b"data: {"):
                    continue
                event = orjson.loads(line[6:])
                delta = _text_delta(event)
                if delta is not None:
                    first = first or time.perf_counter()
                    text.append(delta)
                usage = event.get("usage") or (event.get("response") or {}).get("usage") or usage
    assert first is not None, "no text delta"
    return Reply((first - sent) * 1000, usage, "".join(text))


def cached_of(reply: Reply) -> int:
    details = reply.usage.get("prompt_tokens_details") or reply.usage["input_tokens_details"]
    return int(details["cached_tokens"])


def input_of(reply: Reply) -> int:
    return int(reply.usage.get("prompt_tokens") or reply.usage["input_tokens"])


def chat_turn(system: str, user: str) -> dict[str, Any]:
    return chat_body([{"role": "system", "content": system}, {"role": "user", "content": user}])


def resp_turn(system: str, user: str) -> dict[str, Any]:
    return resp_body([{"role": "user", "content": [{"type": "input_text", "text": user}]}], system)


@pytest.mark.parametrize("turn", [chat_turn, resp_turn], ids=["chat", "responses"])
async def test_a_shared_system_prompt_is_cached_and_skips_its_prefill(
    mock_factory: MockFactory, turn: Any
) -> None:
    mock = mock_factory(prefill_ms_per_1k=PREFILL_MS_PER_1K, prefix_cache=True)
    url = str(mock.base_url)
    system = words("s", SHARED_WORDS)
    first = await send(url, turn(system, words("first", 20)))
    assert cached_of(first) == 0
    # Cold: each its own system prompt; warm: the first one's, with a user message of its own.
    cold, warm = await asyncio.gather(
        asyncio.gather(*(send(url, turn(words(f"c{i}_", SHARED_WORDS), "hi")) for i in range(5))),
        asyncio.gather(*(send(url, turn(system, words(f"u{i}_", 20))) for i in range(SAMPLES))),
    )
    shared = 3 + SHARED_WORDS + 3  # the system message and the user message's template marks
    for reply in warm:
        assert blocks_of(shared) <= cached_of(reply) < input_of(reply)
    for reply in cold:
        assert cached_of(reply) == 0
        assert reply.ttft_ms >= PREFILL_MS_PER_1K * input_of(reply) / 1000  # never early
    saved = statistics.median(r.ttft_ms for r in cold) - statistics.median(r.ttft_ms for r in warm)
    assert saved >= 250, f"cached prefix saved {saved:.0f} ms of ~400"


async def test_the_same_text_at_another_position_does_not_hit(mock_factory: MockFactory) -> None:
    mock = mock_factory(prefix_cache=True)
    url = str(mock.base_url)
    text = words("t", 200)
    lead = words("a", BLOCK_TOKENS - 3)  # with its marks, exactly one block before the text
    await send(
        url, chat_body([{"role": "user", "content": lead}, {"role": "user", "content": text}])
    )
    # The text's blocks are the very same tokens, one block earlier: their chain differs.
    moved = await send(url, chat_body([{"role": "user", "content": text}]))
    assert cached_of(moved) == 0
    # After another block of the same length, too.
    other = words("b", BLOCK_TOKENS - 3)
    after = await send(
        url, chat_body([{"role": "user", "content": other}, {"role": "user", "content": text}])
    )
    assert cached_of(after) == 0
    again = await send(
        url, chat_body([{"role": "user", "content": lead}, {"role": "user", "content": text}])
    )
    assert cached_of(again) == blocks_of(input_of(again))  # the control: the same prompt hits


async def test_a_conversation_hits_the_whole_previous_turn(mock_factory: MockFactory) -> None:
    """Turn 2 = turn 1's messages + its answer + a new message: turn 1's prompt and answer
    (what the server keeps of it, in whole blocks) are cached."""
    mock = mock_factory(prefix_cache=True)
    url = str(mock.base_url)
    messages = [
        {"role": "system", "content": words("sys", 100)},
        {"role": "user", "content": words("q", 30)},
    ]
    one = await send(url, chat_body(messages))
    messages += [
        {"role": "assistant", "content": one.text},
        {"role": "user", "content": "and then?"},
    ]
    two = await send(url, chat_body(messages))
    kept = input_of(one) + len(one.text.split())
    assert cached_of(two) == blocks_of(kept) >= blocks_of(input_of(one))
    # Turn 3 hits turn 2 as a whole, its answer included.
    messages += [{"role": "assistant", "content": two.text}, {"role": "user", "content": "ok"}]
    three = await send(url, chat_body(messages))
    assert cached_of(three) == blocks_of(input_of(two) + len(two.text.split()))


async def test_a_responses_conversation_hits_the_previous_turn(mock_factory: MockFactory) -> None:
    """The same on the Responses API: instructions, input items with parts, output_text."""
    mock = mock_factory(prefix_cache=True)
    url = str(mock.base_url)
    items: list[dict[str, Any]] = [
        {"role": "user", "content": [{"type": "input_text", "text": words("q", 60)}]}
    ]
    one = await send(url, resp_body(items, words("i", 50)))
    items += [
        {"role": "assistant", "content": [{"type": "output_text", "text": one.text}]},
        {"role": "user", "content": "more"},
    ]
    two = await send(url, resp_body(items, words("i", 50)))
    assert cached_of(two) == blocks_of(input_of(one) + len(one.text.split()))


async def test_the_lru_evicts_at_capacity(mock_factory: MockFactory) -> None:
    capacity = 4 * BLOCK_TOKENS
    mock = mock_factory(prefix_cache=True, prefix_cache_tokens=capacity)
    url = str(mock.base_url)
    first = chat_body([{"role": "user", "content": words("a", 80)}])
    other = chat_body([{"role": "user", "content": words("b", 80)}])
    await send(url, first)
    # 5+ blocks with the answer's: the prompt's first 4 stay (touched last: used most recently).
    assert cached_of(await send(url, first)) == capacity
    assert mock.stats.prefix_cache_blocks == 4
    assert mock.stats.prefix_cache_evicted_blocks > 0
    await send(url, other)  # 4 blocks of its own: the first prompt's are gone
    assert cached_of(await send(url, first)) == 0


async def test_without_the_cache_nothing_is_cached_and_all_is_prefilled(
    mock_factory: MockFactory,
) -> None:
    mock = mock_factory(prefill_ms_per_1k=PREFILL_MS_PER_1K)
    url = str(mock.base_url)
    body = chat_turn(words("s", 500), "hi")
    replies = [await send(url, body) for _ in range(2)]
    for reply in replies:
        assert reply.usage["prompt_tokens_details"] == {"cached_tokens": 0, "audio_tokens": 0}
        assert reply.ttft_ms >= PREFILL_MS_PER_1K * input_of(reply) / 1000  # ~100 ms, each time
    assert (mock.stats.cached_tokens, mock.stats.prefix_cache_blocks) == (0, 0)
    assert mock.stats.input_tokens == sum(map(input_of, replies))


async def test_the_prefill_header_overrides_the_config(mock_factory: MockFactory) -> None:
    mock = mock_factory()  # no prefill configured
    url = str(mock.base_url)
    body = chat_turn(words("s", 500), "hi")
    reply = await send(url, body, **{"x-mock-prefill-ms-per-1k": "200"})
    assert reply.ttft_ms >= 200 * input_of(reply) / 1000
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            url + "/chat/completions",
            data=orjson.dumps(body),
            headers={"x-mock-prefill-ms-per-1k": "-1"},
        ) as resp,
    ):
        assert resp.status == 400
        assert "x-mock-prefill-ms-per-1k" in (await resp.json())["error"]["message"]


async def test_the_cached_tokens_header_wins_and_a_refused_request_caches_nothing(
    mock_factory: MockFactory,
) -> None:
    mock = mock_factory(prefix_cache=True)
    url = str(mock.base_url)
    body = resp_body([{"role": "user", "content": words("w", 100)}])
    async with (
        aiohttp.ClientSession() as session,
        session.post(url + "/responses", json=body, headers={"x-mock-fault": "429"}) as resp,
    ):
        assert resp.status == 429
    assert cached_of(await send(url, body)) == 0  # the 429 was never prefilled: nothing held
    assert cached_of(await send(url, body)) == blocks_of(3 + 100 + 3)
    assert cached_of(await send(url, body, **{"x-mock-cached-tokens": "7"})) == 7


async def test_the_usage_fields_exact_shape(mock_factory: MockFactory) -> None:
    mock = mock_factory(prefix_cache=True, output_tokens=4)
    url = str(mock.base_url)
    system = words("s", 40)
    prompt, cached = 3 + 40 + 3 + 1 + 3, blocks_of(3 + 40 + 3)  # 50 tokens, 32 shared
    await send(url, chat_turn(system, "one"))
    chat = await send(url, chat_turn(system, "two"))
    assert chat.usage == {
        "prompt_tokens": prompt,
        "completion_tokens": 4,
        "total_tokens": prompt + 4,
        "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }
    await send(url, resp_turn(system, "uno"))  # (chat's "one" and "two" would hit a block more)
    resp = await send(url, resp_turn(system, "dos"))
    assert resp.usage == {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": cached},
        "output_tokens": 4,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + 4,
    }
    async with (  # the non-streaming answer reports the same
        aiohttp.ClientSession() as session,
        session.post(
            url + "/chat/completions", json={**chat_turn(system, "tres"), "stream": False}
        ) as answer,
    ):
        details = (await answer.json())["usage"]["prompt_tokens_details"]
        assert details == {"cached_tokens": cached, "audio_tokens": 0}


async def test_legacy_completions_prompts_are_cached_too(mock_factory: MockFactory) -> None:
    mock = mock_factory(prefix_cache=True)
    url = str(mock.base_url)
    body = {"model": "m", "prompt": [words("p", 40), words("q", 40)], "max_tokens": 4}
    for _ in range(2):
        async with (
            aiohttp.ClientSession() as session,
            session.post(url + "/completions", json=body) as resp,
        ):
            assert resp.status == 200
    assert mock.stats.cached_tokens == 2 * blocks_of(40)  # each prompt its own sequence


def tokens_of(messages: list[list[str]]) -> list[str]:
    return list(chain(*prompt_runs(messages)))


def test_the_prompts_tokens_are_its_input_tokens_and_a_turn_is_a_prefix() -> None:
    turn_one = [["be brief"], ["one two", "three"]]
    assert len(tokens_of(turn_one)) == count_input_tokens(turn_one) == 2 + 3 + 3 * 2 + 3
    turn_two = [*turn_one, ["the answer"], ["next"]]
    assert tokens_of(turn_two)[: count_input_tokens(turn_one) + 2] == [
        *tokens_of(turn_one),
        "the",
        "answer",
    ]


def test_the_cache_chains_blocks_and_evicts_a_prompts_tail_first() -> None:
    cache = PrefixCache(3 * BLOCK_TOKENS)
    a = [f"a{i}" for i in range(3 * BLOCK_TOKENS)]
    assert cache.admit([a]) == 0
    assert cache.admit([a[:20], a[20:]]) == 3 * BLOCK_TOKENS  # runs: one sequence
    assert cache.admit([a[:40]]) == 2 * BLOCK_TOKENS  # whole blocks only
    # One new block evicts one of a's: its last, so a's head still hits.
    assert cache.admit([["b"] * BLOCK_TOKENS]) == 0
    assert (cache.evicted_blocks, len(cache)) == (1, 3)
    assert cache.admit([a]) == 2 * BLOCK_TOKENS
    # a's blocks one block earlier: the same tokens, another chain.
    assert cache.admit([a[BLOCK_TOKENS:]]) == 0
    # An answer's blocks are remembered, not looked up.
    c = [f"c{i}" for i in range(24)]
    assert cache.admit([c[:8]], c[8:]) == 0
    assert cache.admit([c]) == BLOCK_TOKENS


def test_the_new_fields_round_trip_through_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MOCK_API_KEY", raising=False)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    for config in (
        MockConfig(prefill_ms_per_1k=50.0, prefix_cache=True, prefix_cache_tokens=4096),
        MockConfig(prefill_ms_per_1k=0.125),
    ):
        assert config_from_args(parser.parse_args(config.to_argv())) == config
    served = config_from_args(parser.parse_args([]))
    assert (served.prefill_ms_per_1k, served.prefix_cache) == (0.0, False)


def test_a_child_process_caches_as_configured() -> None:
    """MockProcess (bench's embedded mock) rebuilds the cache from to_argv."""
    config = MockConfig(prefix_cache=True, prefix_cache_tokens=4096, prefill_ms_per_1k=1.0)
    body = resp_body([{"role": "user", "content": words("w", 100)}])
    with MockProcess(config) as proc:
        replies = [asyncio.run(send(proc.base_url, body)) for _ in range(2)]
        assert [cached_of(r) for r in replies] == [0, blocks_of(106)]
        assert proc.stats.cached_tokens == blocks_of(106)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"prefill_ms_per_1k": -1.0}, "prefill_ms_per_1k must be >= 0"),
        ({"prefill_ms_per_1k": float("nan")}, "prefill_ms_per_1k must be >= 0"),
        ({"prefix_cache_tokens": 15}, "prefix_cache_tokens must be >= 16"),
    ],
)
def test_bad_values_are_refused(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        MockConfig(**fields)


def test_the_command_line_refuses_a_negative_prefill(capsys: pytest.CaptureFixture[str]) -> None:
    assert mock_main(["--port", "0", "--prefill-ms-per-1k", "-5"]) == 2
    assert "prefill_ms_per_1k must be >= 0" in capsys.readouterr().err
