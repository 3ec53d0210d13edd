"""Streams recorded from real servers (llama-server, vLLM), replayed wire-exact with their
timing and their connection behaviour (see tests/replay.py): the engine, the batch runner and
the load tester read them as the real servers' own final objects say: text, tool calls, and
reasoning before the text."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import orjson
import pytest

from engine.batch import BatchConfig, Endpoint, run_batch
from engine.client import Engine, RetryPolicy
from engine.events import Usage
from engine.loadtest import LoadConfig, run_load
from tests.replay import Recording, ReplayServer, recordings

if TYPE_CHECKING:
    from pathlib import Path

NO_RETRY = RetryPolicy(max_retries=0)
ALL = recordings()
RECS = [r for r in ALL if r.endpoint in ("responses", "chat")]  # text answers
TOOL_RECS = [r for r in ALL if r.endpoint.endswith("-tools")]  # tool-calling servers
REASONING_RECS = [r for r in ALL if r.endpoint.endswith("-reasoning")]  # reasoning, then text
IDS = [f"{r.server}-{r.endpoint}" for r in RECS]


def oracle(rec: Recording) -> tuple[str, Usage | None, str | None]:
    """Text, usage and the server's own ending, read from the recording without the engine:
    split on blank lines, take `data:` lines, decode JSON."""
    text, usage, ending = "", None, None
    for block in rec.body.split(b"\n\n"):
        data = b"\n".join(line[6:] for line in block.split(b"\n") if line.startswith(b"data: "))
        if not data or data == b"[DONE]":
            continue
        obj = orjson.loads(data)
        if obj.get("object") == "chat.completion.chunk":
            for choice in obj["choices"]:
                text += choice["delta"].get("content") or ""
                ending = choice.get("finish_reason") or ending
            usage = Usage.from_payload(obj.get("usage")) or usage
        elif obj.get("type") == "response.output_text.delta":
            text += obj["delta"]
        elif obj.get("type") in ("response.completed", "response.incomplete"):
            usage = Usage.from_payload(obj["response"]["usage"])
            ending = obj["response"]["status"]
    return text, usage, ending


def test_recordings_cover_both_servers_and_wire_formats() -> None:
    assert {(r.server, r.endpoint) for r in RECS} >= {
        ("llama-server", "responses"),
        ("llama-server", "chat"),
    }
    assert all(r.wire.startswith(b"HTTP/1.1 200") for r in RECS)


@pytest.mark.parametrize("rec", RECS, ids=IDS)
async def test_a_replayed_stream_reads_as_the_server_said(rec: Recording) -> None:
    text, usage, ending = oracle(rec)
    async with (
        ReplayServer([rec]) as server,
        Engine(base_url=server.base_url, retry=NO_RETRY) as eng,
    ):
        result = await eng.run(rec.request, endpoint=rec.endpoint)
    assert result.text == text
    assert text
    assert result.usage == usage
    assert usage is not None
    assert usage.output_tokens == rec.request.get(
        "max_tokens", rec.request.get("max_output_tokens")
    )
    if rec.endpoint == "chat":
        assert result.finish_reason == ending
        assert result.status == ("incomplete" if ending == "length" else "completed")
    else:
        assert result.status == ending
    assert result.ttft_s is not None
    assert 0 < result.ttft_s <= result.e2e_s


@pytest.mark.parametrize("rec", RECS, ids=IDS)
async def test_the_servers_connection_behaviour_loses_no_request(rec: Recording) -> None:
    """100 requests by 8 users, the connections closed (or kept) as the real server did."""
    requests = 100
    async with (
        ReplayServer([rec], speed=0) as server,
        Engine(base_url=server.base_url, retry=NO_RETRY, max_connections=8) as eng,
    ):
        counter = iter(range(requests))

        async def user() -> list[str]:
            return [(await eng.run(rec.request, endpoint=rec.endpoint)).text for _ in counter]

        texts = [t for part in await asyncio.gather(*(user() for _ in range(8))) for t in part]
    assert texts == [oracle(rec)[0]] * requests
    assert server.requests == requests  # nothing sent twice to a live server
    if rec.closed_after_response:
        assert server.connections == requests


def _batch_lines(recs: list[Recording], count: int) -> bytes:
    lines = []
    for i in range(count):
        rec = recs[i % len(recs)]
        lines.append(
            orjson.dumps(
                {
                    "custom_id": f"r{i}",
                    "method": "POST",
                    "url": "/v1" + rec.path,
                    "body": rec.request,
                }
            )
        )
    return b"\n".join(lines) + b"\n"


async def test_a_mixed_batch_against_replayed_servers_lands_whole(tmp_path: Path) -> None:
    for server_name in sorted({r.server for r in RECS}):
        recs = [r for r in RECS if r.server == server_name]
        (tmp_path / "in.jsonl").write_bytes(_batch_lines(recs, 40))
        out = tmp_path / f"{server_name}.jsonl"
        async with ReplayServer(recs, speed=0) as server:
            summary = await run_batch(
                BatchConfig(
                    input_path=tmp_path / "in.jsonl",
                    output_path=out,
                    endpoints=[Endpoint(server.base_url)],
                    concurrency=8,
                    retry=NO_RETRY,
                )
            )
        assert (summary.succeeded, summary.failed) == (40, 0), server_name
        written: list[dict[str, Any]] = [
            orjson.loads(line) for line in out.read_bytes().split(b"\n") if line
        ]
        assert sorted(r["custom_id"] for r in written) == sorted(f"r{i}" for i in range(40))
        assert all(r["response"]["status_code"] == 200 for r in written)
        assert (tmp_path / f"{server_name}.errors.jsonl").read_bytes() == b""


def tool_oracle(rec: Recording) -> list[tuple[str | None, str | None, str]]:
    """The tool calls of a recorded chat stream, joined without the engine: each call's id
    and name from its first fragment, arguments concatenated by `index`."""
    calls: dict[int, list[Any]] = {}
    for block in rec.body.split(b"\n\n"):
        if not block.startswith(b"data: {"):
            continue
        for choice in orjson.loads(block[6:])["choices"]:
            for call in choice["delta"].get("tool_calls") or []:
                entry = calls.setdefault(call["index"], [None, None, ""])
                fn = call.get("function") or {}
                entry[0] = entry[0] or call.get("id")
                entry[1] = entry[1] or fn.get("name")
                entry[2] += fn.get("arguments") or ""
    return [tuple(calls[i]) for i in sorted(calls)]  # type: ignore[misc]


def test_a_tool_calling_server_is_recorded() -> None:
    assert {(r.server, r.endpoint) for r in TOOL_RECS} >= {("vllm", "chat-tools")}


@pytest.mark.parametrize("rec", TOOL_RECS, ids=[f"{r.server}-{r.endpoint}" for r in TOOL_RECS])
async def test_a_real_tool_call_stream_is_assembled_as_the_server_sent_it(rec: Recording) -> None:
    expected = tool_oracle(rec)
    assert expected
    assert expected[0][1] == "get_weather"
    async with (
        ReplayServer([rec]) as server,
        Engine(base_url=server.base_url, retry=NO_RETRY) as eng,
    ):
        result = await eng.run(rec.request, endpoint="chat")
    assert [(c.id, c.name, c.arguments) for c in result.tool_calls] == expected
    message = result.response["choices"][0]["message"]
    assert message["tool_calls"][0]["function"] == {
        "name": expected[0][1],
        "arguments": expected[0][2],
    }
    assert result.usage is not None
    assert result.ttft_s is not None  # the first tool-call fragment is the first token
    assert result.ttft_text_s is None


def reasoning_oracle(rec: Recording) -> tuple[str, int, int]:
    """The reasoning of a recorded stream joined without the engine (chat `reasoning_content`
    or `reasoning`, Responses `response.reasoning_text.delta`), with the number of events
    that carried reasoning before the first one that carried text, and of all of them."""
    reasoning, before_text, events, seen_text = "", 0, 0, False
    for block in rec.body.split(b"\n\n"):
        data = b"\n".join(line[6:] for line in block.split(b"\n") if line.startswith(b"data: "))
        if not data.startswith(b"{"):
            continue
        obj = orjson.loads(data)
        thought, said = "", False
        if obj.get("object") == "chat.completion.chunk":
            for choice in obj["choices"]:
                delta = choice["delta"]
                thought += delta.get("reasoning_content") or delta.get("reasoning") or ""
                said = said or bool(delta.get("content"))
        elif obj.get("type") == "response.reasoning_text.delta":
            thought = obj["delta"]
        else:
            said = obj.get("type") == "response.output_text.delta" and bool(obj["delta"])
        reasoning += thought
        events += bool(thought)
        before_text += bool(thought) and not seen_text
        seen_text = seen_text or said
    return reasoning, before_text, events


def test_a_reasoning_server_is_recorded_with_its_own_shape() -> None:
    """llama-server's reasoning stream as recorded (the quirks are the point): Responses events
    carry no output_index, and the reasoning item is done only after the text."""
    assert {(r.server, r.endpoint) for r in REASONING_RECS} >= {
        ("llama-server", "chat-reasoning"),
        ("llama-server", "responses-reasoning"),
    }
    rec = next(r for r in REASONING_RECS if r.endpoint == "responses-reasoning")
    events = [
        orjson.loads(block.split(b"data: ", 1)[1])
        for block in rec.body.split(b"\n\n")
        if b"data: " in block
    ]
    assert not any("output_index" in event for event in events)
    types = [(e["type"], e.get("item", {}).get("type")) for e in events]
    reasoning_done = types.index(("response.output_item.done", "reasoning"))
    last_text = max(i for i, t in enumerate(types) if t[0] == "response.output_text.delta")
    assert types.index(("response.reasoning_text.delta", None)) < last_text < reasoning_done


@pytest.mark.parametrize(
    "rec", REASONING_RECS, ids=[f"{r.server}-{r.endpoint}" for r in REASONING_RECS]
)
async def test_a_real_reasoning_stream_is_assembled_as_the_server_sent_it(rec: Recording) -> None:
    text, usage, ending = oracle(rec)
    reasoning, before_text, reasoning_events = reasoning_oracle(rec)
    assert reasoning
    assert text
    assert before_text == reasoning_events  # all of it came before the text
    endpoint = "chat" if rec.path == "/chat/completions" else "responses"
    async with (
        ReplayServer([rec]) as server,
        Engine(base_url=server.base_url, retry=NO_RETRY) as eng,
    ):
        result = await eng.run(rec.request, endpoint=endpoint)
    assert result.reasoning == reasoning
    assert result.text == text
    assert result.usage == usage
    assert usage is not None
    assert usage.output_tokens > 0
    if endpoint == "chat":
        assert result.finish_reason == ending == "stop"  # the grammar ended it
        assert result.response["choices"][0]["message"]["reasoning_content"] == reasoning
    else:
        assert result.status == ending == "completed"
    # The first token is the first reasoning event's; every reasoning event is timed before
    # the first text (the replay keeps the server's pauses: ~45 ms between the two here).
    assert result.first_token_ns == result.token_times_ns[0]
    assert result.first_text_ns is not None
    assert sum(t < result.first_text_ns for t in result.token_times_ns) == reasoning_events
    assert result.ttft_s is not None
    assert result.ttft_text_s is not None
    assert 0 < result.ttft_s < result.ttft_text_s <= result.e2e_s


@pytest.mark.parametrize(
    "rec", REASONING_RECS, ids=[f"{r.server}-{r.endpoint}" for r in REASONING_RECS]
)
async def test_the_load_tester_times_a_real_reasoning_stream(rec: Recording) -> None:
    """TTFT is the first reasoning token, TTFT to text comes later; tokens as usage said."""
    _, usage, _ = oracle(rec)
    assert usage is not None
    async with ReplayServer([rec]) as server:
        result = await run_load(
            LoadConfig(
                server.base_url,
                endpoint="chat" if rec.path == "/chat/completions" else "responses",
                concurrency=2,
                requests=4,
                duration_s=None,
                warmup_s=0,
                canary=False,
            )
        )
    doc = result.summary()
    assert (doc["completed"], doc["failed"]) == (4, 0)
    assert doc["ttft_text_ms"]["count"] == 4
    for record in result.measured:
        assert record.ttft_ms is not None
        assert record.ttft_text_ms is not None
        assert record.ttft_ms < record.ttft_text_ms
        assert record.output_tokens == usage.output_tokens  # the reasoning counted in
        # llama-server reports no reasoning_tokens (no *_tokens_details of the output): 0.
        assert record.reasoning_tokens == usage.reasoning_tokens == 0
    assert doc["reasoning_tokens"] == 0
    assert doc["output_tokens"] == 4 * usage.output_tokens
