"""The mock endpoint over real HTTP on 127.0.0.1, read as raw bytes (never through engine.sse)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import orjson
import pytest

from engine.mock import MockConfig, MockProcess, MockServerThread
from engine.mock.text import MESSAGE_OVERHEAD, REPLY_OVERHEAD

RESPONSES_SEQUENCE = [
    "response.created", "response.in_progress", "response.output_item.added",
    "response.content_part.added", *["response.output_text.delta"] * 16,
    "response.output_text.done", "response.content_part.done", "response.output_item.done",
    "response.completed",
]
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi there"}], "stream": True}
RESP = {"model": "m", "input": "hello world", "stream": True}

Event = tuple[str | None, bytes]


def split_events(raw: bytes) -> list[Event]:
    """A deliberately tiny SSE splitter: (event name, data) per block, comments dropped."""
    raw = raw.removeprefix(b"\xef\xbb\xbf").replace(b"\r\n", b"\n")
    events: list[Event] = []
    for block in raw.split(b"\n\n"):
        name, data = None, []
        for line in block.split(b"\n"):
            if line.startswith(b"event: "):
                name = line[7:].decode()
            elif line.startswith(b"data: "):
                data.append(line[6:])
        if data:
            events.append((name, b"\n".join(data)))
    return events


def payloads(events: list[Event]) -> list[Any]:
    return [orjson.loads(data) for _, data in events if data != b"[DONE]"]


async def post(url: str, body: Any, headers: dict[str, str] | None = None,
               ) -> tuple[int, Any, bytes]:
    async with aiohttp.ClientSession() as session, session.post(
            url, data=orjson.dumps(body) if not isinstance(body, bytes) else body,
            headers=headers) as resp:
        return resp.status, resp.headers, await resp.read()


async def stream(base_url: str, body: Any = RESP, fault: str | None = None,
                 path: str = "/responses", **headers: str) -> list[Event]:
    if fault:
        headers["x-mock-fault"] = fault
    status, _, raw = await post(base_url + path, body, headers)
    assert status == 200
    return split_events(raw)


def deltas(events: list[Event]) -> list[str]:
    return [p["delta"] for p in payloads(events) if p["type"] == "response.output_text.delta"]


async def test_responses_stream_has_the_full_event_sequence(base_url: str) -> None:
    status, headers, raw = await post(base_url + "/responses", RESP)
    assert status == 200
    assert headers["Content-Type"].startswith("text/event-stream")
    assert headers["Cache-Control"] == "no-cache"
    assert headers["x-request-id"].startswith("req_")
    events = split_events(raw)
    assert [name for name, _ in events] == RESPONSES_SEQUENCE
    data = payloads(events)
    assert [d["type"] for d in data] == RESPONSES_SEQUENCE
    assert [d["sequence_number"] for d in data] == list(range(len(data)))
    delta = data[4]
    assert set(delta) == {"type", "sequence_number", "item_id", "output_index", "content_index",
                          "delta", "logprobs"}
    final = data[-1]["response"]
    assert final["id"].startswith("resp_")
    assert final["object"] == "response"
    assert final["status"] == "completed"
    text = "".join(deltas(events))
    assert final["output"][0]["content"][0] == {"type": "output_text", "annotations": [],
                                               "logprobs": [], "text": text}
    usage = final["usage"]
    assert usage["output_tokens"] == 16
    assert usage["input_tokens_details"]["cached_tokens"] == 0
    assert usage["output_tokens_details"]["reasoning_tokens"] == 0
    assert usage["total_tokens"] == usage["input_tokens"] + 16


@pytest.mark.parametrize("include_usage", [True, False])
async def test_chat_stream_chunks_usage_and_done(base_url: str, include_usage: bool) -> None:
    body = {**CHAT, "stream_options": {"include_usage": include_usage}}
    events = await stream(base_url, body, path="/chat/completions")
    assert events[-1] == (None, b"[DONE]")
    chunks = payloads(events)
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "",
                                                "refusal": None}
    usage_chunks = [c for c in chunks if c.get("usage")]
    if include_usage:
        assert chunks[-1]["choices"] == []
        assert chunks[-1]["usage"] == usage_chunks[0]["usage"]
        assert usage_chunks[0]["usage"]["completion_tokens"] == 16
        chunks = chunks[:-1]
    else:
        assert usage_chunks == []
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    contents = [c["choices"][0]["delta"]["content"] for c in chunks[1:-1]]
    assert len(contents) == 16


async def test_non_streaming_answers(base_url: str) -> None:
    status, headers, raw = await post(base_url + "/responses", {**RESP, "stream": False})
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    response = orjson.loads(raw)
    assert response["object"] == "response"
    assert response["usage"]["output_tokens"] == 16
    status, _, raw = await post(base_url + "/chat/completions", {**CHAT, "stream": False})
    completion = orjson.loads(raw)
    assert completion["object"] == "chat.completion"
    assert completion["choices"][0]["message"]["role"] == "assistant"
    assert completion["choices"][0]["finish_reason"] == "stop"
    assert completion["usage"]["completion_tokens"] == 16


async def test_models(base_url: str) -> None:
    async with aiohttp.ClientSession() as session, session.get(base_url + "/models") as resp:
        body = await resp.json()
    assert body["object"] == "list"
    assert body["data"][0]["object"] == "model"


@pytest.mark.parametrize(("path", "limit_field", "body"), [
    ("/responses", "max_output_tokens", RESP),
    ("/chat/completions", "max_tokens", CHAT),
    ("/chat/completions", "max_completion_tokens", CHAT),
])
async def test_output_length_follows_the_request_limit(base_url: str, path: str, limit_field: str,
                                                       body: dict[str, Any]) -> None:
    events = await stream(base_url, {**body, limit_field: 5,
                                     "stream_options": {"include_usage": True}}, path=path)
    data = payloads(events)
    if path == "/responses":
        assert len(deltas(events)) == 5
        assert data[-1]["response"]["usage"]["output_tokens"] == 5
        assert data[-1]["type"] == "response.completed"  # incomplete_on_limit is off
    else:
        assert len(data) == 1 + 5 + 2
        assert data[-2]["choices"][0]["finish_reason"] == "length"
        assert data[-1]["usage"]["completion_tokens"] == 5


async def test_incomplete_on_limit(mock_factory: Any) -> None:
    server = mock_factory(incomplete_on_limit=True)
    data = payloads(await stream(server.base_url, {**RESP, "max_output_tokens": 3}))
    assert data[-1]["type"] == "response.incomplete"
    assert data[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert data[-1]["response"]["usage"]["output_tokens"] == 3


async def test_output_tokens_equal_text_deltas_for_ranges(mock_factory: Any) -> None:
    server = mock_factory(output_tokens=1, output_tokens_max=40)
    for prompt in ("a", "b c", "d e f", "g"):
        events = await stream(server.base_url, {**RESP, "input": prompt})
        usage = payloads(events)[-1]["response"]["usage"]
        assert usage["output_tokens"] == len(deltas(events))
        assert 1 <= usage["output_tokens"] <= 40


async def test_text_is_deterministic_for_a_seed(base_url: str) -> None:
    first = deltas(await stream(base_url))
    assert deltas(await stream(base_url)) == first
    assert deltas(await stream(base_url, **{"x-mock-seed": "7"})) != first
    seeded = {**RESP, "seed": 7}
    assert deltas(await stream(base_url, seeded)) == deltas(await stream(base_url, seeded))
    with MockServerThread(MockConfig(seed=1)) as other:
        assert deltas(await stream(other.base_url)) != first


async def test_input_tokens_rule(base_url: str) -> None:
    body = {**RESP, "stream": False, "instructions": "be brief",
            "input": [{"role": "user", "content": "one two three"},
                      {"role": "user", "content": [{"type": "input_text", "text": "four five"}]}]}
    _, _, raw = await post(base_url + "/responses", body)
    expected = (2 + 3 + 2) + 3 * MESSAGE_OVERHEAD + REPLY_OVERHEAD
    assert orjson.loads(raw)["usage"]["input_tokens"] == expected


@pytest.mark.parametrize(("path", "body", "param"), [
    ("/responses", b"{not json", None),
    ("/responses", {"input": "x"}, "model"),
    ("/responses", {"model": "m"}, "input"),
    ("/chat/completions", {"model": "m"}, "messages"),
    ("/responses", {"model": "m", "input": "x", "max_output_tokens": "5"}, "max_output_tokens"),
])
async def test_bad_requests(base_url: str, path: str, body: Any, param: str | None) -> None:
    status, _, raw = await post(base_url + path, body)
    assert status == 400
    error = orjson.loads(raw)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param


async def test_unknown_path_is_404(base_url: str) -> None:
    status, headers, raw = await post(base_url + "/nope", RESP)
    assert status == 404
    assert orjson.loads(raw)["error"]["message"] == "Invalid URL (POST /v1/nope)"
    assert headers["x-request-id"].startswith("req_")


async def test_api_key(auth_mock_server: MockServerThread) -> None:
    url = auth_mock_server.base_url + "/responses"
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        status, _, raw = await post(url, RESP, headers)
        assert status == 401
        assert orjson.loads(raw)["error"]["code"] == "invalid_api_key"
        assert b"sk-test-key" not in raw
    status, _, _ = await post(url, RESP, {"Authorization": "Bearer sk-test-key"})
    assert status == 200


@pytest.mark.parametrize(("fault", "status", "code"), [
    ("429", 429, "rate_limit_exceeded"), ("500", 500, None), ("503", 503, None),
])
async def test_status_faults(base_url: str, fault: str, status: int, code: str | None) -> None:
    got, headers, raw = await post(base_url + "/responses", RESP, {"x-mock-fault": fault})
    assert got == status
    assert orjson.loads(raw)["error"]["code"] == code
    if status == 429:
        assert float(headers["Retry-After"]) == 0.05
        assert headers["retry-after-ms"] == "50"


@pytest.mark.parametrize("path", ["/responses", "/chat/completions"])
async def test_reset_is_a_connection_error(base_url: str, path: str) -> None:
    body = RESP if path == "/responses" else CHAT
    with pytest.raises(aiohttp.ClientConnectionError):
        await post(base_url + path, body, {"x-mock-fault": "reset"})


async def read_until_error(url: str, fault: str, limits: aiohttp.ClientTimeout | None = None,
                           ) -> tuple[bytes, BaseException | None]:
    got = bytearray()
    async with aiohttp.ClientSession(timeout=limits) as session, session.post(
            url, data=orjson.dumps(RESP), headers={"x-mock-fault": fault}) as resp:
        try:
            async for chunk in resp.content.iter_any():
                got += chunk
        except (aiohttp.ClientPayloadError, TimeoutError) as exc:
            return bytes(got), exc
    return bytes(got), None


@pytest.mark.parametrize(("fault", "count"), [("disconnect:3", 3), ("disconnect", 4 + 8),
                                              ("disconnect:0", 0)])
async def test_disconnect_after_n_events(base_url: str, fault: str, count: int) -> None:
    raw, error = await read_until_error(base_url + "/responses", fault)
    assert isinstance(error, aiohttp.ClientPayloadError)
    assert len(split_events(raw)) == count


async def test_stall_after_n_events(base_url: str) -> None:
    started = time.perf_counter()
    raw, error = await read_until_error(base_url + "/responses", "stall:5",
                                        aiohttp.ClientTimeout(total=None, sock_read=0.3))
    assert isinstance(error, TimeoutError)
    assert len(split_events(raw)) == 5
    assert time.perf_counter() - started >= 0.3


async def test_malformed_event(base_url: str) -> None:
    events = await stream(base_url, fault="malformed")
    broken = []
    for _, data in events:
        try:
            orjson.loads(data)
        except orjson.JSONDecodeError:
            broken.append(data)
    assert len(broken) == 1
    assert len(events) == len(RESPONSES_SEQUENCE) + 1


@pytest.mark.parametrize(("fault", "last"), [
    ("error-event", "error"), ("failed", "response.failed"), ("incomplete", "response.incomplete"),
])
async def test_endings(base_url: str, fault: str, last: str) -> None:
    events = await stream(base_url, fault=fault)
    data = payloads(events)
    assert events[-1][0] == last
    assert data[-1]["type"] == last
    assert len(deltas(events)) == 8  # the answer stops mid-way
    assert "response.completed" not in [d["type"] for d in data]
    if fault == "error-event":
        assert set(data[-1]) == {"type", "sequence_number", "code", "message", "param"}
    elif fault == "failed":
        assert data[-1]["response"]["status"] == "failed"
        assert data[-1]["response"]["error"]["code"] == "server_error"
    else:
        assert data[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
        assert data[-1]["response"]["usage"]["output_tokens"] == 8


@pytest.mark.parametrize(("fault", "finish"), [("error-event", None), ("failed", None),
                                               ("incomplete", "length")])
async def test_chat_endings(base_url: str, fault: str, finish: str | None) -> None:
    events = await stream(base_url, CHAT, fault=fault, path="/chat/completions")
    data = payloads(events)
    if finish is None:
        assert events[-1][0] == "error"
        assert set(data[-1]["error"]) == {"message", "type", "param", "code"}
    else:
        assert data[-1]["choices"][0]["finish_reason"] == finish
        assert len(data) == 1 + 8 + 1


async def test_html_page(base_url: str) -> None:
    status, headers, raw = await post(base_url + "/responses", RESP, {"x-mock-fault": "html"})
    assert status == 200
    assert headers["Content-Type"].startswith("text/html")
    assert raw.startswith(b"<html>")


@pytest.mark.parametrize("fault", ["bom", "crlf", "comments", "crlf,comments", "bom,crlf"])
async def test_framing_faults_keep_the_events(base_url: str, fault: str) -> None:
    status, _, raw = await post(base_url + "/responses", RESP, {"x-mock-fault": fault})
    assert status == 200
    assert raw.startswith(b"\xef\xbb\xbf") == ("bom" in fault)
    if "crlf" in fault:
        assert raw.count(b"\n") == raw.count(b"\r\n")
    assert (b": keep-alive\n" in raw.replace(b"\r\n", b"\n")) == ("comments" in fault)
    assert [name for name, _ in split_events(raw)] == RESPONSES_SEQUENCE


async def test_done_after_completed(base_url: str) -> None:
    events = await stream(base_url, fault="done-after")
    assert events[-2][0] == "response.completed"
    assert events[-1] == (None, b"[DONE]")


async def test_chat_on_responses(base_url: str) -> None:
    events = await stream(base_url, fault="chat-on-responses")
    assert events[-1] == (None, b"[DONE]")
    assert all(p["object"] == "chat.completion.chunk" for p in payloads(events))


async def test_unknown_fault_is_a_400(base_url: str) -> None:
    status, _, raw = await post(base_url + "/responses", RESP, {"x-mock-fault": "nope"})
    assert status == 400
    assert orjson.loads(raw)["error"]["param"] == "x-mock-fault"


async def test_fault_rates_from_config(mock_factory: Any) -> None:
    server = mock_factory(faults={"429": 0.2, "500": 0.1}, seed=3)
    statuses: list[int] = []
    async with aiohttp.ClientSession() as session:
        for _ in range(200):
            async with session.post(server.base_url + "/responses",
                                    data=orjson.dumps({**RESP, "stream": False})) as resp:
                await resp.read()
                statuses.append(resp.status)
    assert 20 <= statuses.count(429) <= 60
    assert 5 <= statuses.count(500) <= 35
    assert server.stats.faults["429"] == statuses.count(429)
    assert server.stats.requests["/v1/responses"] == 200


async def timed_stream(url: str, headers: dict[str, str], body: Any = RESP,
                       ) -> tuple[float, list[float]]:
    """perf_counter at the first event and at each text delta (one read may carry several)."""
    first_event, times = 0.0, []
    async with aiohttp.ClientSession() as session, session.post(
            url, data=orjson.dumps(body), headers=headers) as resp:
        async for chunk in resp.content.iter_any():
            now = time.perf_counter()
            first_event = first_event or now
            times += [now] * chunk.count(b"output_text.delta\n")
    return first_event, times


async def test_pacing_follows_ttft_and_itl(base_url: str) -> None:
    started = time.perf_counter()
    _, times = await timed_stream(base_url + "/responses",
                                  {"x-mock-ttft-ms": "100", "x-mock-itl-ms": "10"})
    assert len(times) == 16
    assert 0.1 <= times[0] - started < 0.3
    mean_gap = (times[-1] - times[0]) / 15
    assert 0.01 * 0.9 <= mean_gap < 0.03


async def test_max_concurrency_queues_requests(mock_factory: Any) -> None:
    server = mock_factory(max_concurrency=1, itl_ms=5.0, output_tokens=20)
    url = server.base_url + "/responses"
    first = asyncio.create_task(timed_stream(url, {}))
    deadline = time.monotonic() + 5
    while server.stats.streams_active == 0:  # poll until the first stream holds the slot
        assert time.monotonic() < deadline
        await asyncio.sleep(0.001)
    second_first_event, second = await timed_stream(url, {})
    _, first_times = await first
    assert len(first_times) == len(second) == 20
    assert second_first_event >= first_times[-1]  # queued behind the whole first stream
    assert server.stats.streams_max == 1


def test_stats_record_the_last_body(mock_factory: Any) -> None:
    server = mock_factory()
    asyncio.run(post(server.base_url + "/responses", {**RESP, "metadata": {"k": "v"}}))
    assert server.stats.last_body["metadata"] == {"k": "v"}
    assert server.stats.streams_active == 0


def test_mock_process_serves_and_reports_stats() -> None:
    with MockProcess(MockConfig(output_tokens=4, api_key="sk-proc")) as proc:
        assert proc.base_url.startswith("http://127.0.0.1:")
        status, _, raw = asyncio.run(post(proc.base_url + "/responses", RESP,
                                          {"Authorization": "Bearer sk-proc"}))
        assert status == 200
        assert len(deltas(split_events(raw))) == 4
        assert proc.stats.requests["/v1/responses"] == 1


async def test_staggered_arrivals_all_get_their_first_token_on_time(
        mock_factory: Any) -> None:
    """Regression: the shared ticker once re-armed for a stream's *next* token before
    serving later arrivals' first tokens, making their TTFT up to one ITL late."""
    server = mock_factory(ttft_ms=50.0, itl_ms=200.0, output_tokens=2)
    url = f"{server.base_url}/responses"
    body = orjson.dumps({"model": "m", "input": "hi", "stream": True})

    async def ttft_ms(session: aiohttp.ClientSession, delay_s: float) -> float:
        await asyncio.sleep(delay_s)  # staggered arrivals, not a wait for a result
        start = time.perf_counter()
        async with session.post(url, data=body) as resp:
            async for chunk in resp.content.iter_any():
                if b"output_text.delta" in chunk:
                    return (time.perf_counter() - start) * 1000
        raise AssertionError("no delta")

    async with aiohttp.ClientSession() as session:
        ttfts = await asyncio.gather(*(ttft_ms(session, i * 0.003) for i in range(12)))
    assert min(ttfts) >= 50
    assert max(ttfts) < 50 + 100  # far below 50 + one 200 ms ITL
