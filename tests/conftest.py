"""Shared fixtures: every async test runs on asyncio and uvloop, against the real mock server."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import uvloop

import engine
from engine.mock import MockConfig, MockServerThread

FAST = MockConfig(ttft_ms=0.0, itl_ms=0.0, output_tokens=16)
TEST_API_KEY = "sk-test-key"


def pytest_report_header() -> str:
    """Which hot path the suite runs on: CI runs it once compiled, once pure."""
    return f"stream-engine hot path: {'compiled' if engine.COMPILED else 'pure Python'}"


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """pytest-asyncio 1.5 hook: run every async test once per event loop implementation."""
    return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


@pytest.fixture(scope="session")
def mock_server() -> Iterator[MockServerThread]:
    """The fast mock (TTFT 0, ITL 0, 16 tokens, no faults), shared by the whole session."""
    with MockServerThread(FAST) as server:
        yield server


@pytest.fixture(scope="session")
def base_url(mock_server: MockServerThread) -> str:
    return str(mock_server.base_url)


MockFactory = Callable[..., MockServerThread]


@pytest.fixture
def mock_factory() -> Iterator[MockFactory]:
    """`mock_factory(config)` or `mock_factory(**MockConfig fields)`: a mock stopped at teardown."""
    started: list[MockServerThread] = []

    def start(config: MockConfig | None = None, **fields: Any) -> MockServerThread:
        server = MockServerThread(config or MockConfig(**fields)).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def auth_mock_server() -> Iterator[MockServerThread]:
    """A fast mock that requires `Authorization: Bearer sk-test-key`."""
    with MockServerThread(MockConfig(output_tokens=16, api_key=TEST_API_KEY)) as server:
        yield server


def bench_main(argv: list[str]) -> int:
    """`stream-engine bench ARGV`, in process (the CLI hands `--ray` to engine.distributed)."""
    from engine.cli import main  # noqa: PLC0415 - the CLI only where a test runs a verb

    return main(["bench", *argv])


def batch_main(argv: list[str]) -> int:
    """`stream-engine batch ARGV`, in process."""
    from engine.cli import main  # noqa: PLC0415

    return main(["batch", *argv])
