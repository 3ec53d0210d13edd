"""Three ways to run the mock: on the caller's loop, on its own thread, in its own process.

The thread form serves sync pytest session fixtures; the process form gives benchmarks and
load tests a server that does not share the client's CPU core or GIL.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import orjson
from aiohttp import web

from engine.mock.config import MockConfig
from engine.mock.server import LISTEN_BACKLOG, SHUTDOWN_TIMEOUT_S, STATE, create_app
from engine.mock.stats import MockStats
from engine.runtime import start_ready_process

if TYPE_CHECKING:
    from types import TracebackType

READY_PREFIX = "stream-engine mock listening on "
PROJECT_ROOT = Path(__file__).resolve().parents[2]


class MockServer:
    """The mock on the running loop: `await start()`, `base_url`, `stats`, `await stop()`."""

    def __init__(
        self, config: MockConfig | None = None, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.config = config or MockConfig()
        self.host = host
        self.port = port
        self.app = create_app(self.config)
        self._runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    @property
    def stats(self) -> MockStats:
        return self.app[STATE].stats

    async def start(self) -> None:
        # handler_cancellation: a client that goes away cancels its generation (and any stall).
        kwargs: dict[str, Any] = {}
        if self.config.keepalive_timeout_s is not None:  # else aiohttp's default (an hour)
            kwargs["keepalive_timeout"] = self.config.keepalive_timeout_s
        runner = web.AppRunner(
            self.app,
            access_log=None,
            handler_cancellation=True,
            shutdown_timeout=SHUTDOWN_TIMEOUT_S,
            **kwargs,
        )
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, backlog=LISTEN_BACKLOG, reuse_address=True)
        await site.start()
        self._runner = runner
        self.port = runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            self.app[STATE].close_streams()
            await runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


class MockServerThread:
    """The mock on its own thread and event loop, for synchronous fixtures and scripts."""

    def __init__(
        self,
        config: MockConfig | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        startup_timeout_s: float = 10.0,
    ) -> None:
        self.server = MockServer(config, host, port)
        self._timeout_s = startup_timeout_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    config = property(lambda self: self.server.config)
    base_url = property(lambda self: self.server.base_url)
    port = property(lambda self: self.server.port)
    stats = property(lambda self: self.server.stats)

    def _main(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self.server.start())
        except BaseException as exc:  # handed to start() in the caller's thread
            self._error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self.server.stop())
            loop.close()

    def start(self) -> Self:
        self._thread = threading.Thread(target=self._main, name="mock-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(self._timeout_s):
            raise RuntimeError("mock server thread did not start in time")
        if self._error is not None:
            raise RuntimeError("mock server failed to start") from self._error
        return self

    def stop(self) -> None:
        if self._thread is None or self._loop is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(self._timeout_s)
        self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class MockProcess:
    """`python -m engine.mock --port 0 …` as a child process; ready once it printed its URL."""

    def __init__(
        self,
        config: MockConfig | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        startup_timeout_s: float = 20.0,
    ) -> None:
        self.config = config or MockConfig()
        self.host = host
        self.port = port
        self.base_url = ""
        self._timeout_s = startup_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError("mock process is not running")
        return self._proc.pid

    def start(self) -> Self:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")])
        )
        env.pop("MOCK_API_KEY", None)
        if self.config.api_key:
            env["MOCK_API_KEY"] = self.config.api_key  # not argv: argv is visible to `ps`
        argv = [
            sys.executable,
            "-m",
            "engine.mock",
            "--host",
            self.host,
            "--port",
            str(self.port),
            *self.config.to_argv(),
        ]
        try:
            self._proc, self.base_url = start_ready_process(
                argv, READY_PREFIX, self._timeout_s, env
            )
        except RuntimeError as exc:
            raise RuntimeError(f"mock process did not start: {exc}") from None
        self.port = int(self.base_url.rsplit(":", 1)[1].split("/")[0])
        return self

    @property
    def stats(self) -> MockStats:
        """Fetched from the child's GET /mock/stats."""
        url = self.base_url.removesuffix("/v1") + "/mock/stats"
        request = urllib.request.Request(url)  # noqa: S310  (our own http URL)
        if self.config.api_key:  # /mock/stats shows request bodies: it needs the key too
            request.add_header("Authorization", f"Bearer {self.config.api_key}")
        with urllib.request.urlopen(request, timeout=5) as resp:  # noqa: S310
            return MockStats.from_snapshot(orjson.loads(resp.read()))

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
