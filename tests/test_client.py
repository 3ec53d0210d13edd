"""Engine against the real mock endpoint on 127.0.0.1: both dialects, faults, timeouts, retries."""

from __future__ import annotations

import asyncio
import contextlib
import io
from typing import Any

import aiohttp
import orjson
import pytest

from engine.bodies import prompt_body
from engine.client import Engine, RetryPolicy, Timeouts
from engine.errors import (
    AuthenticationError,
    BadRequestError,
    ErrorEvent,
    FirstTokenTimeout,
    IdleTimeout,
    InternalServerError,
    ProtocolError,
    RateLimitError,
    ResponseFailed,
    StreamTruncated,
    TransportError,
)
from engine.events import Dialect, StreamEvent
from engine.handlers import Callback, JSONLWriter, TextCollector

FAST_RETRY = RetryPolicy(max_retries=2, base_s=0.001, cap_s=0.01)
RESPONSES_BODY = {"model": "m", "input": "Hello there", "max_output_tokens": 12}
CHAT_BODY = {
    "model": "m",
    "messages": [{"role": "user", "content": "Hello there"}],
    "max_tokens": 12,
}


def fault(kind: str) -> dict[str, str]:
    return {"x-mock-fault": kind}


@pytest.mark.parametrize(
    ("endpoint", "expected"),
    [
        (Dialect.RESPONSES, {"input": [{"role": "user", "content": "Hi"}], "max_output_tokens": 5}),
        (
            Dialect.CHAT,
            {"messages": [{"role": "user", "content": "Hi"}], "max_completion_tokens": 5},
        ),
        (Dialect.COMPLETIONS, {"prompt": "Hi", "max_tokens": 5}),
    ],
)
def test_a_prompt_body_names_its_fields_as_the_endpoint_does(
    endpoint: Dialect, expected: dict[str, Any]
) -> None:
    assert prompt_body(endpoint, "m", "Hi", 5) == {"model": "m", **expected}
    uncapped = {k: v for k, v in expected.items() if not k.startswith("max_")}
    assert prompt_body(endpoint, "m", "Hi", None) == {"model": "m", **uncapped}


async def test_run_responses(base_url: str) -> None:
    async with Engine(base_url=base_url, api_key="sk-x") as eng:
        result = await eng.run(RESPONSES_BODY, custom_id="r1")
    assert result.http_status == 200
    # the request's cap set the length: OpenAI ends such a stream incomplete (a result)
    assert (result.status, result.incomplete_reason, result.finish_reason) == (
        "incomplete",
        "max_output_tokens",
        "length",
    )
    assert result.dialect is Dialect.RESPONSES
    assert result.usage is not None
    assert result.usage.output_tokens == 12
    assert len(result.token_times_ns) == 12  # one text delta per token
    assert result.text
    assert result.response["status"] == "incomplete"
    assert result.response["output"][0]["content"][0]["text"] == result.text
    assert result.ttft_s is not None
    assert 0 < result.ttft_s <= result.e2e_s
    assert result.request_id
    assert result.custom_id == "r1"
    assert result.attempts == 1
    assert result.events >= 12 + 8


async def test_run_chat_normalises_usage_and_shape(base_url: str, mock_server: Any) -> None:
    async with Engine(base_url=base_url) as eng:
        result = await eng.run(CHAT_BODY)
    assert result.dialect is Dialect.CHAT
    assert result.usage is not None
    assert result.usage.output_tokens == 12
    assert result.usage.total_tokens == result.usage.input_tokens + 12
    assert result.response["object"] == "chat.completion"
    assert result.response["choices"][0]["message"]["content"] == result.text
    sent = mock_server.stats.last_body
    assert sent["stream"] is True
    assert sent["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize(
    ("body", "last"),
    [
        (RESPONSES_BODY, "response.incomplete"),
        ({"model": "m", "input": "Hello there"}, "response.completed"),
    ],
    ids=["capped", "uncapped"],
)
async def test_stream_yields_events_in_order(
    base_url: str, body: dict[str, Any], last: str
) -> None:
    async with Engine(base_url=base_url) as eng:
        events = [ev async for ev in eng.stream(body)]
        result = await eng.run(body)
    types = [e.type for e in events]
    assert types[0] == "response.created"
    assert types[-1] == last
    assert result.status == last.removeprefix("response.")
    assert [e.sequence_number for e in events] == list(range(len(events)))
    times = [e.received_ns for e in events]
    assert times == sorted(times)


async def test_endpoint_override_and_env(base_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    async with Engine() as eng:
        assert eng.base_url == base_url
        result = await eng.run(
            {"model": "m", "input": "x", "max_output_tokens": 3}, endpoint="/responses"
        )
        chat = await eng.run(
            {"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 3},
            endpoint="chat",
        )
    assert result.response["object"] == "response"
    assert chat.response["object"] == "chat.completion"


@pytest.mark.parametrize("kind", ["bom", "crlf", "comments", "done-after"])
async def test_gateway_quirks_give_the_same_result(base_url: str, kind: str) -> None:
    async with Engine(base_url=base_url) as eng:
        plain = await eng.run(RESPONSES_BODY)
        quirky = await eng.run(RESPONSES_BODY, headers=fault(kind))
    assert quirky.text == plain.text
    assert quirky.usage == plain.usage


async def test_chat_on_responses_gives_a_responses_object(base_url: str) -> None:
    async with Engine(base_url=base_url) as eng:
        plain = await eng.run(RESPONSES_BODY)
        result = await eng.run(RESPONSES_BODY, headers=fault("chat-on-responses"))
    assert result.dialect is Dialect.CHAT
    assert result.text == plain.text
    assert result.response["object"] == "response"
    assert result.response["output"][0]["content"][0]["text"] == plain.text


async def test_an_incomplete_response_is_a_result_not_an_error(base_url: str) -> None:
    async with Engine(base_url=base_url, retry=FAST_RETRY) as eng:
        result = await eng.run(RESPONSES_BODY, headers=fault("incomplete"))
        streamed = [ev.type async for ev in eng.stream(RESPONSES_BODY, headers=fault("incomplete"))]
    assert (result.status, result.incomplete_reason, result.finish_reason) == (
        "incomplete",
        "max_output_tokens",
        "length",
    )
    assert result.text
    assert result.response["status"] == "incomplete"
    assert result.usage is not None
    assert streamed[-1] == "response.incomplete"  # stream() ends without raising


async def test_a_chat_stream_cut_by_its_limit_is_incomplete_too(base_url: str) -> None:
    async with Engine(base_url=base_url) as eng:
        result = await eng.run({**CHAT_BODY, "max_tokens": 3})
    assert (result.status, result.incomplete_reason, result.finish_reason) == (
        "incomplete",
        "max_output_tokens",
        "length",
    )
    assert result.response["choices"][0]["finish_reason"] == "length"
    assert result.usage is not None
    assert result.usage.output_tokens == 3


@pytest.mark.parametrize(
    ("kind", "cls"),
    [
        ("error-event", ErrorEvent),
        ("failed", ResponseFailed),
        ("malformed", ProtocolError),
        ("html", ProtocolError),
    ],
)
async def test_stream_failures_are_typed(base_url: str, kind: str, cls: type[Exception]) -> None:
    async with Engine(base_url=base_url, retry=FAST_RETRY) as eng:
        with pytest.raises(cls) as info:
            await eng.run(RESPONSES_BODY, headers=fault(kind), custom_id="job-7")
        assert eng.connections_in_use == 0
    err = info.value
    assert getattr(err, "custom_id", None) == "job-7"
    assert getattr(err, "request_id", None)
    assert getattr(err, "status", None) == 200  # the HTTP status the stream came with
    assert "job-7" in str(err)


async def test_html_page_names_status_and_content(base_url: str) -> None:
    async with Engine(base_url=base_url) as eng:
        with pytest.raises(ProtocolError, match="text/html") as info:
            await eng.run(RESPONSES_BODY, headers=fault("html"))
    assert info.value.status == 200
    assert info.value.raw


async def test_status_errors_are_typed_and_retried(mock_server: Any, base_url: str) -> None:
    async with Engine(base_url=base_url, retry=FAST_RETRY) as eng:
        before = sum(mock_server.stats.requests.values())
        with pytest.raises(RateLimitError) as info:
            await eng.run(RESPONSES_BODY, headers=fault("429"))
        assert sum(mock_server.stats.requests.values()) - before == 3  # 1 + 2 retries
        assert info.value.status == 429
        assert info.value.retry_after_s is not None
        assert info.value.body["error"]["message"]
        with pytest.raises(InternalServerError):
            await eng.run(RESPONSES_BODY, headers=fault("503"))
        before = sum(mock_server.stats.requests.values())
        with pytest.raises(BadRequestError):
            await eng.run({"model": "m"})  # no input: 400, never retried
        assert sum(mock_server.stats.requests.values()) - before == 1


async def test_before_retry_is_awaited_before_each_retry_and_can_end_the_call(
    mock_server: Any, base_url: str
) -> None:
    """Where the batch runner takes each retry's rate-limit grant; an exception ends the call."""
    seen: list[tuple[str, int]] = []

    class Stop(Exception):
        pass

    async def hook(error: Any, attempt: int) -> None:
        seen.append((error.kind, attempt))
        if attempt == 2:
            raise Stop

    async with Engine(base_url=base_url, retry=FAST_RETRY, before_retry=hook) as eng:
        before = sum(mock_server.stats.requests.values())
        with pytest.raises(Stop):
            await eng.run(RESPONSES_BODY, headers=fault("429"))
        assert seen == [("http_429", 1), ("http_429", 2)]
        assert sum(mock_server.stats.requests.values()) - before == 2
        assert eng.connections_in_use == 0


async def test_a_calls_own_before_retry_replaces_the_engines(base_url: str) -> None:
    calls: list[str] = []

    async def engine_hook(error: Any, attempt: int) -> None:
        calls.append("engine")

    async def call_hook(error: Any, attempt: int) -> None:
        calls.append("call")

    async with Engine(base_url=base_url, retry=FAST_RETRY, before_retry=engine_hook) as eng:
        with pytest.raises(RateLimitError):
            await eng.run(RESPONSES_BODY, headers=fault("429"), before_retry=call_hook)
    assert calls == ["call", "call"]


@pytest.mark.parametrize("mid_stream", [False, True])
async def test_mid_stream_breaks_are_sent_again_only_when_asked_and_nothing_was_shown(
    mock_factory: Any, mid_stream: bool
) -> None:
    server = mock_factory(faults={"disconnect:3": 1.0})
    policy = RetryPolicy(max_retries=2, base_s=0.001, cap_s=0.01, mid_stream=mid_stream)
    async with Engine(base_url=server.base_url, retry=policy) as eng:
        with pytest.raises(StreamTruncated) as info:
            await eng.run(RESPONSES_BODY)
        assert info.value.attempts == (3 if mid_stream else 1)
        before = sum(server.stats.requests.values())
        with pytest.raises(StreamTruncated):  # a handler saw events: never sent again
            await eng.run(RESPONSES_BODY, handlers=[TextCollector()])
        assert sum(server.stats.requests.values()) - before == 1
    if mid_stream:
        assert "(gave up after 3 attempts, " in str(info.value)


async def test_reset_before_headers_is_a_retried_transport_error(
    mock_server: Any, base_url: str
) -> None:
    async with Engine(base_url=base_url, retry=FAST_RETRY) as eng:
        before = sum(mock_server.stats.requests.values())
        with pytest.raises(TransportError):
            await eng.run(RESPONSES_BODY, headers=fault("reset"))
        assert sum(mock_server.stats.requests.values()) - before == 3
        assert eng.connections_in_use == 0


async def test_disconnect_after_events_is_not_retried(mock_server: Any, base_url: str) -> None:
    async with Engine(base_url=base_url, retry=FAST_RETRY) as eng:
        before = sum(mock_server.stats.requests.values())
        with pytest.raises(StreamTruncated, match="without a terminal event"):
            await eng.run(RESPONSES_BODY, headers=fault("disconnect:5"))
        assert sum(mock_server.stats.requests.values()) - before == 1  # output reached a handler
        assert eng.connections_in_use == 0


async def test_idle_timeout_on_stall(base_url: str) -> None:
    timeouts = Timeouts(idle_s=0.2)
    async with Engine(base_url=base_url, timeouts=timeouts, retry=FAST_RETRY) as eng:
        with pytest.raises(IdleTimeout):
            await eng.run(RESPONSES_BODY, headers=fault("stall:6"))
        assert eng.connections_in_use == 0


async def test_first_token_timeout(base_url: str) -> None:
    timeouts = Timeouts(idle_s=None, first_token_s=0.2)
    async with Engine(
        base_url=base_url, timeouts=timeouts, retry=RetryPolicy(max_retries=0)
    ) as eng:
        with pytest.raises(FirstTokenTimeout):
            await eng.run(RESPONSES_BODY, headers=fault("stall:2"))


async def test_slow_consumer_is_backpressure_not_idle(base_url: str) -> None:
    async with Engine(base_url=base_url, timeouts=Timeouts(idle_s=0.1), queue_size=1) as eng:
        seen = 0
        async for _ in eng.stream(RESPONSES_BODY):
            seen += 1
            if seen == 1:
                await asyncio.sleep(0.4)  # a slow handler; the reader waits on the full queue
    assert seen > 12


async def test_cancel_mid_stream_releases_connection(base_url: str) -> None:
    got_one = asyncio.Event()

    async def consume(eng: Engine) -> None:
        async for _ in eng.stream(RESPONSES_BODY, headers={"x-mock-itl-ms": "50"}):
            got_one.set()

    async with Engine(base_url=base_url) as eng:
        task = asyncio.create_task(consume(eng))
        await asyncio.wait_for(got_one.wait(), 10)
        assert eng.connections_in_use == 1
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert eng.connections_in_use == 0


async def test_break_early_releases_connection(base_url: str) -> None:
    async with Engine(base_url=base_url) as eng:
        async with contextlib.aclosing(eng.stream(RESPONSES_BODY)) as events:
            async for _ in events:
                break
        assert eng.connections_in_use == 0


async def test_connection_is_reused(base_url: str) -> None:
    async with Engine(base_url=base_url, max_connections=1) as eng:
        for _ in range(5):
            await eng.run(RESPONSES_BODY)
        connector = eng.session.connector
        assert connector is not None
        assert eng.connections_in_use == 0
        assert sum(len(v) for v in connector._conns.values()) == 1


async def test_many_concurrent_streams(base_url: str) -> None:
    async with Engine(base_url=base_url, max_connections=32) as eng:
        results = await asyncio.gather(*(eng.run(RESPONSES_BODY) for _ in range(200)))
    assert all(r.usage is not None and r.usage.output_tokens == 12 for r in results)


async def test_api_key_sent_and_never_shown(mock_factory: Any) -> None:
    server = mock_factory(api_key="sk-test-secret")
    async with Engine(base_url=server.base_url, api_key="sk-test-secret") as eng:
        assert "sk-test-secret" not in repr(eng)
        assert (await eng.run(RESPONSES_BODY)).http_status == 200
    async with Engine(base_url=server.base_url, api_key="sk-wrong-secret", retry=FAST_RETRY) as eng:
        with pytest.raises(AuthenticationError) as info:
            await eng.run(RESPONSES_BODY)
    assert info.value.status == 401
    assert "sk-wrong-secret" not in str(info.value)
    assert "sk-wrong-secret" not in repr(info.value.body)


async def test_retry_after_is_honoured(mock_factory: Any) -> None:
    # The delay the engine asks for is asserted, not the time that passed (no wall clock).
    server = mock_factory(faults={"429": 1.0}, retry_after_s=7.5)
    delays: list[float] = []
    retried: list[int] = []

    async def fake_sleep(delay: float) -> None:
        delays.append(delay)

    async def count(_: Any, attempt: int) -> None:
        retried.append(attempt)

    async with Engine(
        base_url=server.base_url,
        before_retry=count,
        retry=RetryPolicy(max_retries=2, base_s=0.0, cap_s=0.0),
    ) as eng:
        eng._sleep = fake_sleep
        with pytest.raises(RateLimitError) as info:
            await eng.run(RESPONSES_BODY)
    assert delays == [7.5, 7.5]  # the server's Retry-After, not the (zero) backoff
    assert retried == [1, 2]
    assert info.value.attempts == 3


async def test_connect_refused_is_a_transport_error() -> None:
    async with Engine(base_url="http://127.0.0.1:9/v1", retry=FAST_RETRY) as eng:
        with pytest.raises(TransportError, match="cannot connect"):
            await eng.run(RESPONSES_BODY)


async def test_repr_snapshot(base_url: str) -> None:
    eng = Engine(base_url=base_url, api_key="sk-hidden", max_connections=64)
    assert repr(eng) == f"<Engine {base_url} [streams: 0 active, 0 queued | pool: 0/64]>"
    await eng.aclose()


async def test_handlers_sync_async_and_builtins(base_url: str) -> None:
    buf = io.BytesIO()
    collector = TextCollector()
    seen_async: list[str] = []
    deltas: list[StreamEvent] = []

    async def async_handler(event: StreamEvent) -> None:
        await asyncio.sleep(0)
        seen_async.append(event.type)

    handlers = [
        collector,
        JSONLWriter(buf),
        async_handler,
        Callback(deltas.append, types={"response.output_text.delta"}),
    ]
    async with Engine(base_url=base_url) as eng:
        result = await eng.run(RESPONSES_BODY, handlers=handlers)
    assert collector.text == result.text
    assert len(deltas) == 12
    lines = [orjson.loads(line) for line in buf.getvalue().splitlines()]
    assert [line["type"] for line in lines] == seen_async
    assert len(lines) == result.events


async def test_the_request_leaves_from_the_calling_task(base_url: str) -> None:
    """No task hop before the send: on a busy loop one would add a loop turn to every TTFT."""
    sent_by: list[asyncio.Task[Any] | None] = []

    async def on_sent(*_: object) -> None:
        sent_by.append(asyncio.current_task())

    trace = aiohttp.TraceConfig()
    trace.on_request_headers_sent.append(on_sent)
    trace.freeze()
    async with Engine(base_url=base_url) as eng:
        eng.session.trace_configs.append(trace)
        result = await eng.run(RESPONSES_BODY)
        async for _ in eng.stream(RESPONSES_BODY):
            pass
    assert result.text
    assert sent_by == [asyncio.current_task()] * 2


def without_ids(value: Any) -> Any:
    """A response with what differs between two requests to the mock (ids, times) taken out."""
    if isinstance(value, dict):
        return {
            k: without_ids(v)
            for k, v in value.items()
            if k not in ("id", "created", "created_at", "completed_at")
        }
    if isinstance(value, list):
        return [without_ids(v) for v in value]
    return value


@pytest.mark.parametrize("kind", ["plain", "crlf", "done-after", "chat-on-responses"])
async def test_run_without_handlers_gives_what_run_with_one_gives(base_url: str, kind: str) -> None:
    """`run()` with no handler reads deltas straight off the batch; the result must not
    differ from the event-by-event path in anything."""
    headers = {} if kind == "plain" else fault(kind)
    async with Engine(base_url=base_url) as eng:
        for body in (RESPONSES_BODY, CHAT_BODY):
            bare = await eng.run(body, headers=headers)
            full = await eng.run(body, headers=headers, handlers=[TextCollector()])
            assert bare.text == full.text != ""
            assert len(bare.token_times_ns) == len(full.token_times_ns) > 0
            for name in ("usage", "events", "dialect", "status"):
                assert getattr(bare, name) == getattr(full, name), name
            assert without_ids(bare.response) == without_ids(full.response)


async def test_bad_body_is_a_config_error(base_url: str) -> None:
    async with Engine(base_url=base_url) as eng:
        with pytest.raises(ValueError, match="JSON object"):
            await eng.run(["not", "a", "dict"])  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="endpoint"):
            await eng.run(RESPONSES_BODY, endpoint="nonsense")
