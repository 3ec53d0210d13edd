"""The aiohttp.web application: routes, validation, admission, paced streaming.

Per request: auth -> JSON validation -> fault choice -> the answer's plan (`planning.py`, with
the prefix cache's lookup) -> queue for a generation slot -> paced stream, its first token
after TTFT + the prefill of the uncached input tokens. Tokens are due at absolute deadlines
from the moment the generation starts (no accumulated sleeps, so no drift); whatever is due
when the task wakes goes out in one write.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from typing import TYPE_CHECKING, Any, Self

import orjson
from aiohttp import web

from engine.mock.chat import ChatStream
from engine.mock.completions import CompletionsStream
from engine.mock.config import DelaySampler, MockConfig
from engine.mock.faults import HTML_PAGE, FaultPicker, FaultSet, error_body
from engine.mock.pacing import (
    EXACT_RESOLUTION_S,
    Schedule,
    Ticker,
    clock_resolution_s,
    delay_until,
)
from engine.mock.planning import BadRequest, Dialect, header_ms, plan
from engine.mock.prefix_cache import PrefixCache
from engine.mock.responses import ResponsesStream
from engine.mock.sse_writer import Reshaper
from engine.mock.stats import MockStats
from engine.mock.text import new_id

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from aiohttp.typedefs import Handler, Middleware

    from engine.mock.config import CloseAfterResponse
    from engine.mock.text import Generation

LISTEN_BACKLOG = 4096  # aiohttp's default 128 overflows when hundreds of streams connect at once
SHUTDOWN_TIMEOUT_S = 1.0
JSON = "application/json"
STREAM_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "openai-version": "2020-10-01",
}
Stream = ResponsesStream | ChatStream | CompletionsStream
REQUIRED: dict[Dialect, str] = {"chat": "messages", "responses": "input", "completions": "prompt"}


class MockState:
    """Everything the handlers share: config, counters, fault RNG, the concurrency gate."""

    def __init__(self, config: MockConfig) -> None:
        self.config = config
        self.stats = MockStats()
        self.picker = FaultPicker(config.faults, config.seed)
        self.delay_rng = config.delay_rng()
        self.gate = asyncio.Semaphore(config.max_concurrency) if config.max_concurrency else None
        self.prefix_cache = PrefixCache(config.prefix_cache_tokens) if config.prefix_cache else None
        self.stopping = asyncio.Event()  # set on shutdown: releases stalled streams
        self._ticker: Ticker | None = None

    def close_streams(self) -> None:
        """Server shutdown: release stalled streams and end paced ones at once."""
        self.stopping.set()
        if self._ticker is not None:
            self._ticker.close()

    @property
    def ticker(self) -> Ticker:
        """Created on first use, on the loop that serves (the app may be built before it)."""
        if self._ticker is None:
            loop = asyncio.get_running_loop()
            self._ticker = Ticker(loop, self.stats, clock_resolution_s(loop), precise=True)
        return self._ticker


STATE = web.AppKey("mock_state", MockState)


def json_error(
    status: int,
    request_id: str,
    message: str | None = None,
    *,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    return web.Response(
        status=status,
        body=error_body(status, message, param=param, code=code),
        content_type=JSON,
        headers={"x-request-id": request_id, **(headers or {})},
    )


# The real API's answer when no Authorization header came at all (its `code` is null).
MISSING_KEY_MESSAGE = (
    "You didn't provide an API key. You need to provide your API key in an Authorization "
    "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
)


def _digest(value: str) -> bytes:
    # Hashing first makes the compare constant-time in the key's length too.
    return hashlib.sha256(value.encode("utf-8", "surrogateescape")).digest()


def require_api_key(api_key: str) -> Middleware:
    """Every route (all of /v1/*, and /mock/stats, which shows request bodies) needs the key."""
    expected = _digest(f"Bearer {api_key}")

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        given = request.headers.get("Authorization")
        if given is not None and hmac.compare_digest(_digest(given), expected):
            return await handler(request)
        request.app[STATE].stats.unauthorized += 1
        request_id = new_id("req_")[:36]
        if given is None:
            body = orjson.dumps(
                {
                    "error": {
                        "message": MISSING_KEY_MESSAGE,
                        "type": "invalid_request_error",
                        "param": None,
                        "code": None,
                    }
                }
            )
            return web.Response(
                status=401, body=body, content_type=JSON, headers={"x-request-id": request_id}
            )
        return json_error(401, request_id)  # "Incorrect API key provided.", never echoing it

    return check


# What llama-server says before it closes the connection anyway.
SILENT_CLOSE_HEADERS = {"Connection": "keep-alive", "Keep-Alive": "timeout=5, max=100"}


def connection_headers(
    mode: CloseAfterResponse,
) -> Callable[[web.Request, web.StreamResponse], Awaitable[None]]:
    """on_response_prepare: the Connection headers of `mode`, streamed answers included.

    Assigned, not defaulted, so that they win over aiohttp's own `Connection: close`, which
    `force_close` would add to a response not yet prepared.
    """

    async def set_headers(request: web.Request, response: web.StreamResponse) -> None:
        if mode == "announced":
            response.headers["Connection"] = "close"
        elif request.keep_alive:  # a client that asked for close gets aiohttp's close
            response.headers.update(SILENT_CLOSE_HEADERS)

    return set_headers


@web.middleware
async def close_connections(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Marks every answer's connection for closing, counted in `closed_after_response`.

    aiohttp closes a connection whose response is not keep-alive once that response was fully
    written (finish_response's write_eof), so the close never cuts a body short; a streamed
    answer, already sent, is marked after the fact.
    """
    response = await handler(request)
    response.force_close()
    transport = request.transport
    if transport is not None and not transport.is_closing():  # not a fault's cut or reset
        request.app[STATE].stats.closed_after_response += 1
    return response


async def _read_body(request: web.Request, required: str) -> dict[str, Any]:
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        raise BadRequest(
            "We could not parse the JSON body of your request. (HINT: This likely "
            "means you aren't using your HTTP library correctly.)"
        ) from None
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise BadRequest(
            "you must provide a model parameter", "model", "missing_required_parameter"
        )
    if body.get(required) is None:
        raise BadRequest(
            f"Missing required parameter: '{required}'.", required, "missing_required_parameter"
        )
    return body


def build_stream(
    config: MockConfig, gen: Generation, body: dict[str, Any], dialect: Dialect, faults: FaultSet
) -> Stream:
    """The answer (see `planning.py`), in the dialect the client will get."""
    if dialect == "completions":
        return CompletionsStream(gen)
    if dialect == "chat" or faults.chat_on_responses:
        if dialect != "chat":
            gen.include_usage = True  # a chat-speaking server would still report usage
        return ChatStream(gen)
    return ResponsesStream(
        gen,
        body.get("instructions"),
        done_after=faults.done_after,
        limit_ending=config.limit_ending,
    )


async def _pump(
    resp: web.StreamResponse,
    stream: Stream,
    schedule: Schedule,
    reshaper: Reshaper,
    stats: MockStats,
) -> None:
    """The faulty-stream path: head, deltas and tail on schedule, each batch reshaped."""
    resolution_s = clock_resolution_s(asyncio.get_running_loop())
    batch = stream.head()
    while True:
        start, stop = schedule.take_due(time.monotonic() + EXACT_RESOLUTION_S)
        batch += stream.deltas(start, stop)
        if schedule.finished:
            batch += stream.tail()
        if batch:
            stats.events_sent += len(batch)
            await resp.write(reshaper.render(batch))
        if schedule.finished or reshaper.cut_reached:
            return
        batch = []
        # A wake-up before the deadline just loops once more (take_due answers nothing).
        await asyncio.sleep(delay_until(schedule.next_due, time.monotonic(), resolution_s))


async def _stream(
    request: web.Request,
    state: MockState,
    stream: Stream,
    faults: FaultSet,
    sampler: DelaySampler,
    ttft_s: float,
    request_id: str,
    arrived: float,
) -> web.StreamResponse:
    resp = web.StreamResponse(headers={**STREAM_HEADERS, "x-request-id": request_id})
    await resp.prepare(request)  # headers go out at once, as real servers do; queueing follows
    midpoint = stream.head_events + stream.n // 2
    reshaper = Reshaper(faults, default_cut_at=midpoint, malformed_at=midpoint)
    transport = request.transport
    stats = state.stats
    async with _admitted(state) as admitted:
        stats.stream_started()
        try:
            # Deadlines count from the request's arrival, or from its admission when it queued
            # for a slot, read on the exact clock: see `Schedule`.
            start = time.monotonic() if admitted.waited else arrived
            schedule = Schedule(stream.n, start, ttft_s, sampler)
            if faults.reshapes_stream or transport is None or request.version < (1, 1):
                await _pump(resp, stream, schedule, reshaper, stats)
            else:  # the fast path: the shared ticker writes the chunks straight to the socket
                head = stream.head()
                stats.events_sent += len(head)
                await resp.write(b"".join(head))
                await state.ticker.run(stream, schedule, transport)  # counts as it writes
        finally:
            stats.stream_ended()
    if reshaper.cut_reached:
        if faults.cut is not None and faults.cut.kind == "stall":
            await state.stopping.wait()  # cancelled when the client goes away
        elif transport is not None:
            transport.close()  # flushes what was written, then FIN: a truncated body
        return resp
    if transport is not None and not transport.is_closing():
        await resp.write_eof()
    return resp


class _admitted:  # noqa: N801  (reads as a statement: `async with _admitted(state)`)
    """The FIFO generation gate (a no-op without max_concurrency); counts who had to wait."""

    __slots__ = ("_gate", "_stats", "waited")

    def __init__(self, state: MockState) -> None:
        self._gate = state.gate
        self._stats = state.stats
        self.waited = False

    async def __aenter__(self) -> Self:
        gate = self._gate
        if gate is None:
            return self
        if not gate.locked():
            await gate.acquire()  # a free slot: acquire() returns without suspending
            return self
        self.waited = True
        self._stats.wait_started()
        try:
            await gate.acquire()
        finally:
            self._stats.wait_ended()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._gate is not None:
            self._gate.release()


def _fault_answer(
    request: web.Request, faults: FaultSet, retry_after_s: float, request_id: str
) -> web.Response | None:
    """The answer that replaces generation (reset, 429/500/503, an HTML page), if any."""
    if faults.reset:
        if request.transport is not None:
            request.transport.abort()  # no status line at all: the client sees a dead connection
        return web.Response(status=500)
    if faults.status is not None:
        retry = {}
        if faults.status == 429:
            retry = {
                "Retry-After": f"{retry_after_s:g}",
                "retry-after-ms": str(round(retry_after_s * 1000)),
            }
        return json_error(faults.status, request_id, headers=retry)
    if faults.html:
        return web.Response(
            body=HTML_PAGE, content_type="text/html", headers={"x-request-id": request_id}
        )
    return None


async def _generate(request: web.Request, dialect: Dialect) -> web.StreamResponse:
    arrived = time.monotonic()  # the whole request has been read: a server starts from here
    state = request.app[STATE]
    config, stats = state.config, state.stats
    stats.requests[request.path] += 1
    request_id = new_id("req_")[:36]
    try:
        body = await _read_body(request, REQUIRED[dialect])
        stats.last_body = body
        faults = state.picker.pick(request.headers.get("x-mock-fault"))
        ttft_ms = header_ms(request.headers, "x-mock-ttft-ms", config.ttft_ms)
        itl_ms = header_ms(request.headers, "x-mock-itl-ms", config.itl_ms)
        prefill_ms = header_ms(
            request.headers, "x-mock-prefill-ms-per-1k", config.prefill_ms_per_1k
        )
        # A request the fault answers instead of generating is never prefilled: nothing cached.
        cache = None if faults.replaces_answer else state.prefix_cache
        gen = plan(config, body, request.headers, dialect, faults.ending, cache)
        stream = build_stream(config, gen, body, dialect, faults)
    except BadRequest as exc:
        return json_error(400, request_id, str(exc), param=exc.param, code=exc.code)
    except ValueError as exc:  # ConfigError from an unknown x-mock-fault kind
        return json_error(400, request_id, str(exc), param="x-mock-fault")
    stats.count_faults(faults)
    early = _fault_answer(request, faults, config.retry_after_s, request_id)
    if early is not None:
        return early
    stats.count_prompt(gen, state.prefix_cache)
    # The prefill: its ms per 1,000 input tokens the prefix cache did not hold.
    ttft_s = (ttft_ms + prefill_ms * (gen.input_tokens - gen.cached_tokens) / 1000) / 1000
    sampler = DelaySampler(config, itl_ms, state.delay_rng)
    if body.get("stream") is True:
        return await _stream(request, state, stream, faults, sampler, ttft_s, request_id, arrived)
    async with _admitted(state):  # non-streaming: answer when the last token would be due
        delay = sampler.jittered(ttft_s) + sum(sampler.next_itl() for _ in range(stream.n))
        await asyncio.sleep(delay)
    return web.Response(body=stream.body(), content_type=JSON, headers={"x-request-id": request_id})


async def responses_handler(request: web.Request) -> web.StreamResponse:
    return await _generate(request, "responses")


async def chat_handler(request: web.Request) -> web.StreamResponse:
    return await _generate(request, "chat")


async def completions_handler(request: web.Request) -> web.StreamResponse:
    return await _generate(request, "completions")


async def models_handler(request: web.Request) -> web.Response:
    config = request.app[STATE].config
    model = {"id": config.model, "object": "model", "created": 1700000000, "owned_by": "mock"}
    wanted = request.match_info.get("model")
    if wanted is not None:
        return web.Response(body=orjson.dumps({**model, "id": wanted}), content_type=JSON)
    return web.Response(body=orjson.dumps({"object": "list", "data": [model]}), content_type=JSON)


async def stats_handler(request: web.Request) -> web.Response:
    return web.Response(body=orjson.dumps(request.app[STATE].stats.snapshot()), content_type=JSON)


async def not_found_handler(request: web.Request) -> web.Response:
    return json_error(404, new_id("req_")[:36], f"Invalid URL ({request.method} {request.path})")


async def _on_shutdown(app: web.Application) -> None:
    app[STATE].close_streams()


def create_app(config: MockConfig | None = None) -> web.Application:
    """The mock as an aiohttp application (state under `app[STATE]`)."""
    config = config or MockConfig()
    # The middlewares exist only when configured: the default hot path pays nothing for them.
    middlewares: list[Middleware] = [require_api_key(config.api_key)] if config.api_key else []
    if config.close_after_response != "no":
        middlewares.insert(0, close_connections)  # outermost: 401s close too
    app = web.Application(client_max_size=64 * 1024 * 1024, middlewares=middlewares)
    app[STATE] = MockState(config)
    if config.close_after_response != "no":
        app.on_response_prepare.append(connection_headers(config.close_after_response))
    app.router.add_post("/v1/responses", responses_handler)
    app.router.add_post("/v1/chat/completions", chat_handler)
    app.router.add_post("/v1/completions", completions_handler)
    app.router.add_get("/v1/models", models_handler)
    app.router.add_get("/v1/models/{model}", models_handler)
    app.router.add_get("/mock/stats", stats_handler)
    app.router.add_route("*", "/{tail:.*}", not_found_handler)
    app.on_shutdown.append(_on_shutdown)
    return app
