"""Kept-alive connections that the server closes: never a failed request.

llama-server closes every connection after a streamed response although it answered
`Keep-Alive`; uvicorn (vLLM, SGLang) closes idle ones after 5 s. The mock does both on request
(`close_after_response`, `keepalive_timeout_s`); the engine must send a request that met a dead
pooled connection again, on the next one, without counting a retry or a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from typing import TYPE_CHECKING, Any

import pytest

from engine.client import Engine, RetryPolicy, StreamResult
from engine.errors import TransportError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from tests.conftest import MockFactory

NO_RETRY = RetryPolicy(max_retries=0)
REQUESTS = 500
USERS = 8
BODIES: list[dict[str, Any]] = [
    {"model": "m", "input": "Hello there", "max_output_tokens": 4},
    {"model": "m", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4},
]


async def run_load(eng: Engine, pause_s: float = 0.0, seed: int = 0) -> list[StreamResult]:
    """REQUESTS requests from USERS closed-loop users; `pause_s` > 0 spaces each user's
    requests by a random think time (the load's shape, not a synchronisation)."""
    rng = random.Random(seed)
    results: list[StreamResult] = []
    counter = iter(range(REQUESTS))

    async def user() -> None:
        for i in counter:
            results.append(await eng.run(BODIES[i % 2]))
            if pause_s:
                await asyncio.sleep(rng.uniform(0, pause_s))

    await asyncio.gather(*(user() for _ in range(USERS)))
    return results


async def test_silent_close_after_every_response_loses_no_request(
    mock_factory: MockFactory,
) -> None:
    """llama-server's behaviour: `Keep-Alive` in the headers, then the socket closes."""
    mock = mock_factory(output_tokens=4, close_after_response="silent")
    async with Engine(base_url=mock.base_url, retry=NO_RETRY, max_connections=USERS) as eng:
        results = await run_load(eng)
    assert len(results) == REQUESTS  # NO_RETRY: any failure would have raised
    assert all(r.attempts == 1 for r in results)  # a re-send is not a retry
    assert sum(r.reconnects for r in results) == eng.reconnects
    # A request sent on a dead connection never reached the server: nothing was generated twice.
    assert sum(mock.stats.requests.values()) == REQUESTS
    # The server closes each connection just after its response: the last close may still
    # be on its way when the client has its result.
    deadline = time.monotonic() + 10
    while mock.stats.closed_after_response < REQUESTS and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert mock.stats.closed_after_response == REQUESTS


async def test_announced_close_is_honoured_without_a_resend(mock_factory: MockFactory) -> None:
    """`Connection: close`: the connection is never put back in the pool, so never re-sent."""
    mock = mock_factory(output_tokens=4, close_after_response="announced")
    async with Engine(base_url=mock.base_url, retry=NO_RETRY, max_connections=USERS) as eng:
        results = await run_load(eng)
    assert len(results) == REQUESTS
    assert eng.reconnects == 0
    assert sum(mock.stats.requests.values()) == REQUESTS


async def test_idle_connections_closed_by_the_server_lose_no_request(
    mock_factory: MockFactory,
) -> None:
    """uvicorn's behaviour, compressed: idle connections close after 20 ms, and the users
    pause up to 40 ms between requests, so closes cross new requests."""
    mock = mock_factory(output_tokens=4, keepalive_timeout_s=0.02)
    async with Engine(base_url=mock.base_url, retry=NO_RETRY, max_connections=USERS) as eng:
        results = await run_load(eng, pause_s=0.04, seed=7)
    assert len(results) == REQUESTS
    assert all(r.attempts == 1 for r in results)
    # The server may have read a request just as it closed (it never answered it).
    assert REQUESTS <= sum(mock.stats.requests.values()) <= REQUESTS + eng.reconnects


@contextlib.asynccontextmanager
async def hang_up_server() -> AsyncIterator[tuple[str, list[int]]]:
    """Accepts, reads the request, closes without a word: a fresh connection that fails."""
    accepted: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        with contextlib.suppress(ConnectionError):
            await reader.readuntil(b"\r\n\r\n")
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1", accepted
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("endpoint", ["responses", "chat"])
async def test_a_fresh_connection_that_fails_is_an_error_not_a_resend(endpoint: str) -> None:
    async with hang_up_server() as (url, accepted), Engine(base_url=url, retry=NO_RETRY) as eng:
        with pytest.raises(TransportError, match="no valid response"):
            await eng.run(BODIES[endpoint == "chat"])
    assert eng.reconnects == 0
    assert len(accepted) == 1


async def test_the_result_says_when_the_request_left_and_what_its_connection_cost(
    base_url: str,
) -> None:
    """The pool's own stamps (no aiohttp tracing): a new connection's connect time, then a
    reused one's, and the moment each request had its connection, between start and bytes."""
    async with Engine(base_url, "sk-x") as eng:
        first = await eng.run({"model": "m", "input": "hi"})
        second = await eng.run({"model": "m", "input": "hi"})
    for result in (first, second):
        assert result.started_ns < result.sent_ns
        assert result.first_byte_ns is not None
        assert result.sent_ns < result.first_byte_ns
        assert result.pool_wait_ns >= 0
    assert first.connect_ns > 0  # a new connection
    assert second.connect_ns == 0  # the first one, kept alive
