"""Engine error paths: credentials never leak, a timeout per phase, retry rules, typed outcomes.

Misbehaviour the mock endpoint cannot produce (a malformed status line, a listener that never
accepts, a 408) comes from tiny servers started inside the test on 127.0.0.1, port 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import socket
import time
import traceback
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from engine.client import Engine, RetryPolicy, Timeouts
from engine.errors import (
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    ConnectTimeout,
    EngineClosed,
    EngineError,
    ErrorEvent,
    FirstByteTimeout,
    IdleTimeout,
    InternalServerError,
    NotFoundError,
    ProtocolError,
    RateLimitError,
    ResponseFailed,
    StreamError,
    StreamTruncated,
    TotalTimeout,
    TransportError,
)
from engine.handlers import Callback, TextCollector

if TYPE_CHECKING:
    from engine.events import StreamEvent
    from tests.conftest import MockFactory

KEY = "sk-test-NEVER-SHOWN-4f9a1c"
HEADER_SECRET = "azure-key-NEVER-SHOWN-77"  # noqa: S105 - a fake per-call `api-key` header
NO_RETRY = RetryPolicy(max_retries=0)
FAST_RETRY = RetryPolicy(max_retries=2, base_s=0.001, cap_s=0.01)
BODY = {"model": "m", "input": "Hello there", "max_output_tokens": 12}
CHAT_BODY = {"model": "m", "messages": [{"role": "user", "content": "Hi"}]}
DEADLINE_S = 10.0  # polls give up after this long: a hung test fails instead of waiting


def fault(kind: str) -> dict[str, str]:
    return {"x-mock-fault": kind}


async def until(condition: Callable[[], bool], what: str) -> None:
    """Poll `condition` on the loop until it holds; fail after DEADLINE_S (never a sleep-for)."""
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.001)


# --- tiny servers --------------------------------------------------------------------------

Answer = Callable[[bytes], bytes]


@contextlib.asynccontextmanager
async def raw_server(answer: Answer) -> AsyncIterator[str]:
    """A TCP server that reads one request (head and body) and writes `answer(request)`."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                (
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                ),
                0,
            )
            request = head + await reader.readexactly(length)
            writer.write(answer(request))
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"
    finally:
        server.close()
        await server.wait_closed()


def http(status: str, body: bytes, ctype: str = "text/event-stream") -> bytes:
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
        f"x-request-id: req_raw\r\nConnection: close\r\n\r\n"
    ).encode() + body


def reflect(request: bytes) -> bytes:
    """A broken proxy that echoes the request (credentials included) into its status line."""
    return b"HTTP/1.1 4x0 " + request.replace(b"\r\n", b" ") + b"\r\n\r\n"


@contextlib.asynccontextmanager
async def web_app(handler: Callable[[web.Request], Any]) -> AsyncIterator[str]:
    """A one-route aiohttp.web app for answers the mock does not give (408, 409, 403, 422)."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    finally:
        await runner.cleanup()


@pytest.fixture
def unaccepting_url() -> Iterator[str]:
    """A listener whose accept queue is full and never drained: a new SYN is dropped, so a
    connect hangs until the client's own connect timeout (no sleep, bounded by that limit)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    filler = socket.socket()
    filler.setblocking(False)
    filler.connect_ex(listener.getsockname())
    _, ready, _ = select.select([], [filler], [], DEADLINE_S)  # the handshake completed
    assert ready, "the filler connection never completed"
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
    finally:
        filler.close()
        listener.close()


# --- 1. credentials never appear in an error -----------------------------------------------


def assert_no_secret(err: BaseException, *secrets: str) -> None:
    """Not in str, repr, args, attributes, the printed traceback, nor any chained error."""
    printed = "".join(traceback.format_exception(err))
    link: BaseException | None = err
    while link is not None:
        assert not isinstance(link, aiohttp.ClientError), "an aiohttp error is chained"
        views = [printed, str(link), repr(link), repr(link.args), repr(vars(link))]
        for secret in secrets:
            assert not any(secret in view for view in views), (secret, type(link).__name__)
        link = link.__cause__ or link.__context__


LEAKS = [
    pytest.param(lambda _: b"garbage\r\n\r\n", TransportError, id="garbage"),
    pytest.param(lambda _: b"HTTP/1.1 abc OK\r\n\r\n", TransportError, id="bad-status-code"),
    pytest.param(lambda _: b"", TransportError, id="closed-without-answer"),
    pytest.param(
        lambda _: b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n", TransportError, id="bad-header-line"
    ),
    pytest.param(reflect, TransportError, id="request-reflected-into-status-line"),
    pytest.param(
        lambda req: http(
            "400 Bad Request",
            orjson.dumps({"error": {"message": req.decode()}}),
            "application/json",
        ),
        BadRequestError,
        id="request-reflected-into-json-error",
    ),
    pytest.param(
        lambda req: http("200 OK", req, "text/plain"),
        ProtocolError,
        id="request-reflected-into-a-non-sse-body",
    ),
    pytest.param(
        lambda req: http("200 OK", req, "text/html"),
        ProtocolError,
        id="request-reflected-into-an-html-page",
    ),
    pytest.param(
        lambda _: (
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n5\r\n: x\n\n\r\n"
        ),
        StreamTruncated,
        id="body-cut-mid-chunk",
    ),
]


@pytest.mark.parametrize(("answer", "cls"), LEAKS)
async def test_credentials_never_appear_in_an_error(answer: Answer, cls: type[Exception]) -> None:
    async with raw_server(answer) as url, Engine(base_url=url, api_key=KEY, retry=NO_RETRY) as eng:
        with pytest.raises(EngineError) as info:
            await eng.run(BODY, headers={"api-key": HEADER_SECRET}, custom_id="c1")
    assert type(info.value) is cls
    assert_no_secret(info.value, KEY, HEADER_SECRET)
    assert "c1" in str(info.value)


async def test_a_reflected_key_is_redacted_not_dropped() -> None:
    async with raw_server(reflect) as url, Engine(base_url=url, api_key=KEY, retry=NO_RETRY) as eng:
        with pytest.raises(TransportError) as info:
            await eng.run(BODY)
    assert "Bearer [redacted]" in str(info.value)  # the rest of the evidence stays readable
    assert "Bad status line" in str(info.value)


# --- 3. broken JSON never ends in success --------------------------------------------------


async def test_a_delta_with_broken_json_fails_the_stream() -> None:
    stream = (
        b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta",'
        b'"delta":"x",}\n\nevent: response.completed\ndata: {"type":"response.completed",'
        b'"response":{"status":"completed"}}\n\n'
    )
    async with (
        raw_server(lambda _: http("200 OK", stream)) as url,
        Engine(base_url=url, retry=NO_RETRY) as eng,
    ):
        with pytest.raises(ProtocolError, match="not valid JSON"):
            await eng.run(BODY)


COMPLETED_EVENT = (
    b'event: response.completed\ndata: {"type":"response.completed",'
    b'"response":{"status":"completed"}}\n\n'
)


@pytest.mark.parametrize("end", [COMPLETED_EVENT, b"data: [DONE]\n\n"])
@pytest.mark.parametrize("handlers", [(), (TextCollector(),)])
async def test_a_malformed_response_created_fails_the_stream(
    end: bytes, handlers: tuple[Any, ...]
) -> None:
    """With or without handlers, and whether or not a terminal event follows."""
    stream = (
        b"event: response.created\ndata: not json\n\n"
        b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta",'
        b'"delta":"Hi"}\n\n' + end
    )
    async with (
        raw_server(lambda _: http("200 OK", stream)) as url,
        Engine(base_url=url, retry=NO_RETRY) as eng,
    ):
        with pytest.raises(ProtocolError, match="not valid JSON") as info:
            await eng.run(BODY, handlers=list(handlers), custom_id="c7")
    assert info.value.custom_id == "c7"
    assert info.value.request_id == "req_raw"
    assert info.value.status == 200


CHAT_CHUNK = (
    b'data: {"object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"Hi"}}]}\n\n'
)
LLAMA_ERROR = b'error: {"code":500,"message":"slot unavailable","type":"server_error"}\n\n'


async def _drain_stream(events: AsyncIterator[Any]) -> None:
    async for _ in events:
        pass


@pytest.mark.parametrize("before", [b"", CHAT_CHUNK], ids=["at-once", "after-a-chunk"])
@pytest.mark.parametrize("stream_api", [False, True], ids=["run", "stream"])
async def test_llama_cpp_error_line_then_done_is_an_error(before: bytes, stream_api: bool) -> None:
    """llama.cpp's streaming error: an `error:` SSE line, then `data: [DONE]`."""
    body = before + LLAMA_ERROR + b"data: [DONE]\n\n"
    async with (
        raw_server(lambda _: http("200 OK", body)) as url,
        Engine(base_url=url, retry=NO_RETRY) as eng,
    ):
        consume = (
            (lambda: _drain_stream(eng.stream(CHAT_BODY)))
            if stream_api
            else (lambda: eng.run(CHAT_BODY))
        )
        with pytest.raises(ErrorEvent, match="slot unavailable") as info:
            await consume()
    assert info.value.server_message == "slot unavailable"
    assert info.value.code == "500"
    assert info.value.status == 200


async def test_a_key_quoted_in_an_error_event_is_redacted_from_the_message() -> None:
    event = b'data: {"error": {"message": "bad key sk-live-123 for Bearer sk-live-123"}}\n\n'
    async with (
        raw_server(lambda _: http("200 OK", event)) as url,
        Engine(base_url=url, api_key="sk-live-123", retry=NO_RETRY) as eng,
    ):
        with pytest.raises(ErrorEvent) as info:
            await eng.run(CHAT_BODY)
    assert "sk-live-123" not in str(info.value)
    assert "sk-live-123" not in repr(info.value.args)
    assert info.value.message == (
        "server sent an error event: bad key [redacted] for Bearer [redacted]"
    )


@pytest.mark.parametrize(
    "body",
    [
        b"data: [DONE]\n\n",
        b": keep-alive\n\ndata: [DONE]\n\n",
        (
            b'data: {"object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":'
            b'"assistant"}}]}\n\ndata: [DONE]\n\n'
        ),
    ],
    ids=["done-alone", "comment-then-done", "role-chunk-then-done"],
)
async def test_done_without_content_or_an_ending_is_never_a_success(body: bytes) -> None:
    async with (
        raw_server(lambda _: http("200 OK", body)) as url,
        Engine(base_url=url, retry=NO_RETRY) as eng,
    ):
        with pytest.raises(StreamTruncated, match="no content and no terminal event"):
            await eng.run(CHAT_BODY)


async def test_an_empty_answer_that_says_it_finished_is_a_success() -> None:
    body = (
        b'data: {"object":"chat.completion.chunk","choices":[{"index":0,"delta":{},'
        b'"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n'
    )
    async with (
        raw_server(lambda _: http("200 OK", body)) as url,
        Engine(base_url=url, retry=NO_RETRY) as eng,
    ):
        result = await eng.run(CHAT_BODY)
    assert (result.text, result.finish_reason, result.status) == ("", "stop", "completed")
    assert result.e2e_s >= 0


# --- 4. a body that is not an event stream keeps its bytes -----------------------------------


async def test_a_plain_text_body_is_a_protocol_error_with_its_bytes() -> None:
    text = b"upstream connect error or disconnect/reset before headers. " * 10
    async with (
        raw_server(lambda _: http("200 OK", text, "text/plain")) as url,
        Engine(base_url=url, retry=NO_RETRY) as eng,
    ):
        with pytest.raises(ProtocolError, match="not an event stream") as info:
            await eng.run(BODY)
    err = info.value
    assert err.raw == text[:200]  # the offending bytes, truncated
    assert err.status == 200
    assert err.request_id == "req_raw"
    assert "upstream connect error" in str(err)


async def test_keep_alives_then_eof_is_truncated_not_a_protocol_error() -> None:
    # Comments are SSE: a server that sent only keep-alives and died truncated its stream.
    async with (
        raw_server(lambda _: http("200 OK", b": ping\n\n: ping\n\n")) as url,
        Engine(base_url=url, retry=NO_RETRY) as eng,
    ):
        with pytest.raises(StreamTruncated):
            await eng.run(BODY)


# --- 5. timeouts: one type per phase, per-call limits honoured -------------------------------


async def test_connect_timeout_per_call_overrides_the_engine(unaccepting_url: str) -> None:
    # The engine's connect limit is far longer than the test may take; the call's wins.
    async with Engine(
        base_url=unaccepting_url, retry=NO_RETRY, timeouts=Timeouts(connect_s=60)
    ) as eng:
        async with asyncio.timeout(DEADLINE_S):
            with pytest.raises(ConnectTimeout) as info:
                await eng.run(BODY, timeouts=Timeouts(connect_s=0.2))
    assert "0.2 s" in str(info.value)


async def test_connect_timeout_from_the_engine(unaccepting_url: str) -> None:
    async with Engine(
        base_url=unaccepting_url, retry=NO_RETRY, timeouts=Timeouts(connect_s=0.2)
    ) as eng:
        with pytest.raises(ConnectTimeout):
            await eng.run(BODY)


async def test_first_byte_timeout() -> None:
    release = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await release.wait()  # reads nothing, answers nothing
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"
    try:
        async with Engine(base_url=url, retry=NO_RETRY) as eng:
            with pytest.raises(FirstByteTimeout):
                await eng.run(BODY, timeouts=Timeouts(first_byte_s=0.2))
    finally:
        release.set()
        server.close()
        await server.wait_closed()


async def test_total_timeout_on_a_stalled_stream(base_url: str) -> None:
    timeouts = Timeouts(idle_s=None, total_s=0.3)
    async with Engine(base_url=base_url, retry=NO_RETRY) as eng:
        with pytest.raises(TotalTimeout):
            await eng.run(BODY, headers=fault("stall:3"), timeouts=timeouts)
        assert eng.connections_in_use == 0


# --- retries: which statuses, how many times -----------------------------------------------


def requests_to(server: Any) -> int:
    return sum(server.stats.requests.values())


@pytest.mark.parametrize(
    ("kind", "cls"), [("500", InternalServerError), ("503", InternalServerError)]
)
async def test_5xx_from_the_mock_is_retried(
    mock_factory: MockFactory, kind: str, cls: type[Exception]
) -> None:
    server = mock_factory()
    async with Engine(base_url=server.base_url, retry=FAST_RETRY) as eng:
        with pytest.raises(cls) as info:
            await eng.run(BODY, headers=fault(kind))
    assert requests_to(server) == 3  # 1 + max_retries
    assert info.value.attempts == 3


@contextlib.asynccontextmanager
async def status_app(status: int, counter: list[int]) -> AsyncIterator[str]:
    async def handler(request: web.Request) -> web.Response:
        counter.append(status)
        body = {"error": {"message": f"status {status}", "type": "x", "code": None}}
        return web.json_response(body, status=status, headers={"x-request-id": "req_app"})

    async with web_app(handler) as url:
        yield url


@pytest.mark.parametrize(("status", "calls"), [(408, 3), (409, 3), (403, 1), (422, 1)])
async def test_retry_rules_for_statuses_the_mock_does_not_send(status: int, calls: int) -> None:
    seen: list[int] = []
    async with status_app(status, seen) as url, Engine(base_url=url, retry=FAST_RETRY) as eng:
        with pytest.raises(APIStatusError) as info:
            await eng.run(BODY)
    assert len(seen) == calls
    assert info.value.status == status
    assert info.value.server_message == f"status {status}"
    assert info.value.request_id == "req_app"


async def test_400_401_404_from_the_mock_are_never_retried(mock_factory: MockFactory) -> None:
    server = mock_factory(api_key=KEY)
    async with Engine(base_url=server.base_url, api_key=KEY, retry=FAST_RETRY) as eng:
        with pytest.raises(BadRequestError) as bad:
            await eng.run({"model": "m"})  # no input
        assert requests_to(server) == 1  # the server saw it once
        with pytest.raises(NotFoundError) as missing:
            await eng.run(BODY, endpoint="/no/such/path")
    async with Engine(base_url=server.base_url, api_key="sk-wrong", retry=FAST_RETRY) as eng:
        with pytest.raises(AuthenticationError) as auth:
            await eng.run(BODY)
    assert [e.value.attempts for e in (bad, missing, auth)] == [1, 1, 1]
    assert bad.value.server_message


async def test_a_stream_cut_after_headers_before_any_event_is_retried(
    mock_factory: MockFactory,
) -> None:
    server = mock_factory()
    async with Engine(base_url=server.base_url, retry=FAST_RETRY) as eng:
        with pytest.raises(StreamTruncated, match="after 0 bytes") as info:
            await eng.run(BODY, headers=fault("disconnect:0"))
        assert eng.connections_in_use == 0
    assert requests_to(server) == 3
    assert info.value.status == 200


@pytest.mark.parametrize("cut", [1, 5, 9])
async def test_a_body_that_ends_without_a_terminal_event_is_truncated(
    mock_factory: MockFactory, cut: int
) -> None:
    server = mock_factory()
    async with Engine(base_url=server.base_url, retry=FAST_RETRY) as eng:
        with pytest.raises(StreamTruncated) as info:  # exactly this type, on both loops
            await eng.run(BODY, headers=fault(f"disconnect:{cut}"), custom_id="t")
        assert eng.connections_in_use == 0
    assert requests_to(server) == 1  # an event reached a handler: never retried
    assert info.value.status == 200
    assert info.value.request_id
    assert info.value.custom_id == "t"


# --- 6. stream errors carry the status, the server's message and the request id -------------


@pytest.mark.parametrize(
    ("kind", "cls", "has_message"),
    [
        ("error-event", ErrorEvent, True),
        ("failed", ResponseFailed, True),
    ],
)
async def test_stream_errors_carry_status_message_and_request_id(
    base_url: str, kind: str, cls: type[StreamError], has_message: bool
) -> None:
    async with Engine(base_url=base_url, retry=NO_RETRY) as eng:
        with pytest.raises(cls) as info:
            await eng.run(BODY, headers=fault(kind))
    err = info.value
    assert err.status == 200
    assert err.request_id
    assert bool(err.server_message) is has_message


async def test_a_200_with_a_json_error_body_is_an_error_event() -> None:
    calls: list[int] = []

    async def handler(request: web.Request) -> web.Response:
        calls.append(1)
        return web.json_response(
            {"error": {"message": "model overloaded", "code": "busy"}},
            headers={"x-request-id": "req_json"},
        )

    async with web_app(handler) as url, Engine(base_url=url, retry=FAST_RETRY) as eng:
        with pytest.raises(ErrorEvent, match="model overloaded") as info:
            await eng.run(BODY)
    err = info.value
    assert (err.status, err.server_message, err.code, err.request_id) == (
        200,
        "model overloaded",
        "busy",
        "req_json",
    )
    assert len(calls) == 1  # the server answered: not a transport failure to retry


# --- arrival times and backpressure --------------------------------------------------------


async def test_a_slow_handler_does_not_change_arrival_times(base_url: str) -> None:
    # The first handler call holds the consumer until the reader has read the whole body.
    # Arrival stamps taken by the reader all precede the release; stamps taken when a handler
    # ran would follow it.
    seen: list[StreamEvent] = []
    released: list[int] = []
    async with Engine(base_url=base_url) as eng:

        async def slow(event: StreamEvent) -> None:
            if not released:
                await until(lambda: not eng._readers, "the reader to reach EOF")
                released.append(time.perf_counter_ns())
            seen.append(event)

        result = await eng.run(BODY, handlers=[Callback(slow)])
    assert len(seen) == result.events > 12
    assert all(ev.received_ns < released[0] for ev in seen)
    assert result.first_token_ns is not None
    assert result.first_token_ns < released[0]
    assert result.first_token_ns == next(ev.received_ns for ev in seen if ev.text_delta)
    assert result.ttft_s == (result.first_token_ns - result.started_ns) / 1e9
    assert result.finished_ns == seen[-1].received_ns < released[0]


async def test_a_full_queue_stops_reading_the_socket(mock_factory: MockFactory) -> None:
    # Far more bytes than the socket buffers hold (~19 MB), paced so the mock can notice.
    server = mock_factory(itl_ms=0.01, output_tokens=100_000)
    async with Engine(base_url=server.base_url, queue_size=1) as eng:
        async with contextlib.aclosing(eng.stream({"model": "m", "input": "x"})) as events:
            await anext(events)  # then the consumer takes nothing more

            def reading() -> list[bool]:
                return [
                    p.transport.is_reading()
                    for p in eng.session.connector._acquired
                    if p.transport is not None
                ]

            await until(lambda: reading() == [False], "the client to stop reading")
            await until(lambda: server.stats.backpressured > 0, "the server to feel it")
            for _ in range(100):  # many loop turns later, still paused: not a passing blip
                await asyncio.sleep(0)
            assert reading() == [False]
            assert server.stats.events_sent < 100_000
            assert await anext(events)  # taking events again resumes the stream
        assert eng.connections_in_use == 0


# --- 8. retry delays, asserted as requested delays, not as elapsed time ----------------------


async def test_retry_after_is_capped_by_the_policy(mock_factory: MockFactory) -> None:
    server = mock_factory(faults={"429": 1.0}, retry_after_s=600)
    delays: list[float] = []

    async def fake_sleep(delay: float) -> None:
        delays.append(delay)

    async with Engine(
        base_url=server.base_url, retry=RetryPolicy(max_retries=1, max_retry_after_s=2.0)
    ) as eng:
        eng._sleep = fake_sleep
        with pytest.raises(RateLimitError):
            await eng.run(BODY)
    assert delays == [2.0]


# --- 9. closing the engine with requests in flight -------------------------------------------


async def test_closing_the_engine_while_a_request_waits_for_headers() -> None:
    """Not retried on a fresh pool after the close: it fails, typed, and opens nothing."""
    accepted = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set()
        with contextlib.suppress(ConnectionError):
            await reader.read()  # never answers; returns when the client goes away
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"
    try:
        eng = Engine(base_url=url)  # the default retry policy: a TransportError would retry
        async with eng:
            task = asyncio.create_task(eng.run(BODY))
            await until(accepted.is_set, "the request to reach the server")
        with pytest.raises(EngineClosed, match="closed while the request was in flight"):
            await asyncio.wait_for(task, DEADLINE_S)
        assert eng._session is None  # no pool was opened again for a retry
        with pytest.raises(EngineClosed):
            await eng.run(BODY)
        assert eng._session is None
    finally:
        server.close()
        await server.wait_closed()


async def test_closing_the_engine_mid_stream_wakes_the_consumer(base_url: str) -> None:
    seen: list[str] = []

    async def consume(eng: Engine) -> None:
        async for event in eng.stream(
            BODY, headers={"x-mock-ttft-ms": "0", "x-mock-itl-ms": "500"}
        ):
            seen.append(event.type)  # noqa: PERF401 - polled while the stream runs

    async with Engine(base_url=base_url) as eng:
        task = asyncio.create_task(consume(eng))
        await until(lambda: len(seen) > 0, "the first events")
    with pytest.raises(EngineClosed, match="closed while the stream was read"):
        await asyncio.wait_for(task, DEADLINE_S)  # it used to wait forever on its queue
    async with eng:  # a closed engine can be entered again
        assert (await eng.run(BODY)).text


# --- hostile servers: drips, echoes, endless answers ------------------------------------------


def drip(every_s: float, before: bytes = b"", count: int = 400) -> Callable[[web.Request], Any]:
    """A handler that sends `before`, then a comment every `every_s` (bounded: `count`)."""

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        if before:
            await resp.write(before)
        with contextlib.suppress(ConnectionError):
            for _ in range(count):
                await resp.write(b": keep-alive\n\n")
                await asyncio.sleep(every_s)  # the server's own pacing, not a synchronisation
        return resp

    return handler


@pytest.mark.parametrize(
    ("before", "message"),
    [
        (b"", r"no event for 0.3 s \(gave up after 2 attempts, \d+\.\d s\)"),
        (CHAT_CHUNK, r"no event for 0.3 s$"),  # after an event: never retried
    ],
    ids=["before-any-event", "after-an-event"],
)
async def test_comments_alone_do_not_keep_a_stream_alive(before: bytes, message: str) -> None:
    """Idle time counts events, not bytes: a server that only pings is idle."""
    started = time.monotonic()
    async with (
        web_app(drip(0.02, before)) as url,
        Engine(
            base_url=url,
            retry=RetryPolicy(max_retries=1, base_s=0.01, cap_s=0.01),
            timeouts=Timeouts(idle_s=0.3),
        ) as eng,
    ):
        with pytest.raises(IdleTimeout, match=message):
            await eng.run(CHAT_BODY)
    assert time.monotonic() - started < 5  # at most 2 x 0.3 s idle, not the drip's 8 s


async def test_a_key_echoed_in_event_data_is_redacted_everywhere() -> None:
    failed = (
        b'event: response.failed\ndata: {"type":"response.failed","response":{"status":'
        b'"failed","error":{"message":"bad","echo":"Bearer sk-echo-9"}}}\n\n'
    )
    async with (
        raw_server(lambda _: http("200 OK", failed)) as url,
        Engine(base_url=url, api_key="sk-echo-9", retry=NO_RETRY) as eng,
    ):
        with pytest.raises(ResponseFailed) as info:
            await eng.run(BODY)
    assert "sk-echo-9" not in orjson.dumps(info.value.data).decode()
    assert info.value.data["response"]["error"]["echo"] == "Bearer [redacted]"
    broken = b"data: {not json sk-echo-9\n\n"
    async with (
        raw_server(lambda _: http("200 OK", broken)) as url,
        Engine(base_url=url, api_key="sk-echo-9", retry=NO_RETRY) as eng,
    ):
        with pytest.raises(ProtocolError) as perr:
            await eng.run(CHAT_BODY)
    assert perr.value.raw is not None
    assert b"sk-echo-9" not in perr.value.raw
    assert "sk-echo-9" not in str(perr.value)


async def test_an_endless_answer_is_cut_at_the_response_cap() -> None:
    """The text `run` keeps is bounded (`max_response_chars`), whatever the server sends."""
    piece = (
        b'data: {"object":"chat.completion.chunk","choices":[{"index":0,"delta":'
        b'{"content":"' + b"x" * 1000 + b'"}}]}\n\n'
    )
    async with (
        raw_server(lambda _: http("200 OK", piece * 200)) as url,
        Engine(base_url=url, retry=NO_RETRY, max_response_chars=50_000) as eng,
    ):
        with pytest.raises(ProtocolError, match="exceeds 50000 characters"):
            await eng.run(CHAT_BODY)
        assert eng.connections_in_use == 0


def test_status_errors_carry_status_code_as_openai_python_names_it() -> None:
    err = NotFoundError("HTTP 404", status=404)
    assert err.status_code == err.status == 404


GATEWAY_ERROR = (
    b'data: {"object":"chat.completion.chunk","error":{"code":502,"message":"Provider '
    b'disconnected"},"choices":[{"index":0,"delta":{"content":""},"finish_reason":"error"}]}'
    b"\n\ndata: [DONE]\n\n"
)
ANSWER = (
    b'data: {"object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"ok"},'
    b'"finish_reason":null}]}\n\n'
    b'data: {"object":"chat.completion.chunk","choices":[{"index":0,"delta":{},'
    b'"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n'
)


def gateway(first: bytes, calls: list[int]) -> Callable[[web.Request], Any]:
    """`first` on the first request, a whole answer after it."""

    async def handler(request: web.Request) -> web.Response:
        calls.append(1)
        body = first if len(calls) == 1 else ANSWER
        return web.Response(body=body, content_type="text/event-stream")

    return handler


async def test_a_passing_error_chunk_before_any_token_is_sent_again() -> None:
    calls: list[int] = []
    retry = RetryPolicy(max_retries=2, base_s=0.001, cap_s=0.002)
    async with web_app(gateway(GATEWAY_ERROR, calls)) as url, Engine(url, retry=retry) as eng:
        result = await eng.run({"model": "m", "messages": []})
    assert result.text == "ok"
    assert result.attempts == 2
    assert len(calls) == 2


async def test_an_error_chunk_is_final_once_a_handler_saw_the_stream_or_a_token_came() -> None:
    retry = RetryPolicy(max_retries=2, base_s=0.001, cap_s=0.002)
    calls: list[int] = []
    async with web_app(gateway(GATEWAY_ERROR, calls)) as url, Engine(url, retry=retry) as eng:
        with pytest.raises(ErrorEvent, match="Provider disconnected"):
            await eng.run({"model": "m", "messages": []}, handlers=[lambda ev: None])
    assert len(calls) == 1
    after_token = ANSWER.split(b"data: [DONE]")[0].rsplit(b"data: ", 1)[0] + GATEWAY_ERROR
    calls.clear()
    async with web_app(gateway(after_token, calls)) as url, Engine(url, retry=retry) as eng:
        with pytest.raises(ErrorEvent):
            await eng.run({"model": "m", "messages": []})
    assert len(calls) == 1
