"""The network as users have it: broken HTTP framing fails at once, typed, with either of
aiohttp's parsers (CI runs this file again with AIOHTTP_NO_EXTENSIONS=1)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import zlib
from typing import TYPE_CHECKING, Any

import orjson
import pytest
import trustme
from aiohttp import web

from engine import (
    APIStatusError,
    ConnectError,
    Engine,
    EngineError,
    ProtocolError,
    Timeouts,
    TransportError,
)
from engine.network import NetworkOptions
from engine.retry import job_failure
from tests.conftest import batch_main
from tests.netfront import Front
from tests.test_batch import make_input, records
from tests.test_cli import engine_cli
from tests.test_client_errors import web_app
from tests.threaded import Closer, ThreadedServer, stream_server

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from engine.mock import MockServerThread

EVENT = (
    b"event: response.output_text.delta\n"
    b'data: {"type":"response.output_text.delta","delta":"Hi"}\n\n'
)
HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
HOLD_S = 30.0  # the server then keeps the connection open: a client that waits, hangs
PURE = os.environ.get("AIOHTTP_NO_EXTENSIONS") == "1"


class BadChunkServer(ThreadedServer):
    """Answers every request with one good chunk (an event), then a malformed chunk-size line
    in a later packet, then holds the connection open. In a thread, for subprocess tests."""

    name = "the bad-chunk server"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(HEAD + b"%x\r\n" % len(EVENT) + EVENT + b"\r\n")
            await writer.drain()
            await asyncio.sleep(0.05)  # the bad line in a packet of its own
            writer.write(b"zz\r\n")
            await writer.drain()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(HOLD_S):
                    await reader.read()  # until the client hangs up
        writer.close()

    async def _listen(self) -> tuple[int, Closer]:
        return await stream_server(self._handle)


@pytest.fixture
def bad_chunk() -> Iterator[BadChunkServer]:
    with BadChunkServer() as server:
        yield server


async def test_a_malformed_chunk_fails_the_stream_at_once(bad_chunk: BadChunkServer) -> None:
    # Idle limit far beyond the test's deadline: only an immediate failure passes.
    async with Engine(bad_chunk.url, "sk-x", timeouts=Timeouts(idle_s=HOLD_S)) as eng:
        async with asyncio.timeout(HOLD_S / 3):
            with pytest.raises(TransportError, match="malformed HTTP body") as caught:
                await eng.run({"model": "m", "input": "hi"})
        assert eng.connections_in_use == 0
    name = "TransferEncodingError" if PURE else "HttpProcessingError"
    assert name in str(caught.value)


def test_run_names_a_malformed_chunk_without_a_traceback(bad_chunk: BadChunkServer) -> None:
    proc = engine_cli("run", "--base-url", bad_chunk.url, "--idle-timeout", str(HOLD_S), "Hi")
    assert proc.returncode != 0
    assert "malformed HTTP body" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_batch_writes_a_malformed_chunk_to_the_errors_file(
    tmp_path: Path, bad_chunk: BadChunkServer
) -> None:
    make_input(tmp_path / "in.jsonl", 4)
    argv = [
        str(tmp_path / "in.jsonl"),
        "-o",
        str(tmp_path / "out.jsonl"),
        "--base-url",
        bad_chunk.url,
        "--max-retries",
        "0",
        "--idle-timeout",
        str(HOLD_S),
    ]
    assert batch_main(argv) == 1
    failed = records(tmp_path / "out.errors.jsonl")
    assert len(failed) == 4
    assert {r["error"]["code"] for r in failed} == {"TransportError"}


# --- compression: asked for none, read anyway ----------------------------------------------

STREAM = [
    {"type": "response.created", "response": {"id": "resp_1", "status": "in_progress"}},
    *({"type": "response.output_text.delta", "delta": f"piece {i} "} for i in range(40)),
    {
        "type": "response.completed",
        "response": {
            "id": "resp_1",
            "status": "completed",
            "usage": {"input_tokens": 1, "output_tokens": 40, "total_tokens": 41},
        },
    },
]
TEXT = "".join(f"piece {i} " for i in range(40))


def sse_events() -> list[bytes]:
    return [f"event: {ev['type']}\ndata: ".encode() + orjson.dumps(ev) + b"\n\n" for ev in STREAM]


def compressed_writes(how: str) -> list[bytes]:
    """The stream's bytes as a compressing gateway writes them."""
    events = sse_events()
    if how == "gzip-per-event":  # one sync flush per event: each write inflates whole
        deflate = zlib.compressobj(wbits=16 + zlib.MAX_WBITS)
        return [deflate.compress(ev) + deflate.flush(zlib.Z_SYNC_FLUSH) for ev in events] + [
            deflate.flush()
        ]
    wbits = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS, "raw-deflate": -15}[how]
    deflate = zlib.compressobj(wbits=wbits)
    whole = deflate.compress(b"".join(events)) + deflate.flush()
    return [whole[i : i + 97] for i in range(0, len(whole), 97)]  # cut anywhere


def compressing(how: str, seen: list[str]) -> Callable[[web.Request], Any]:
    """A handler that answers with the stream compressed as `how` says."""

    async def handler(request: web.Request) -> web.StreamResponse:
        seen.append(request.headers.get("Accept-Encoding", ""))
        await request.read()
        encoding = "gzip" if how.startswith("gzip") else "deflate"
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Content-Encoding": encoding}
        )
        await resp.prepare(request)
        for piece in compressed_writes(how):
            await resp.write(piece)
        await resp.write_eof()
        return resp

    return handler


@pytest.mark.parametrize("how", ["gzip", "gzip-per-event", "deflate", "raw-deflate"])
async def test_a_compressed_stream_is_read_exactly(how: str) -> None:
    seen: list[str] = []
    async with web_app(compressing(how, seen)) as url, Engine(url, "sk-x") as eng:
        result = await eng.run({"model": "m", "input": "hi"})
        events = [ev.type async for ev in eng.stream({"model": "m", "input": "hi"})]
    assert seen == ["identity", "identity"]  # we never asked for it
    assert result.text == TEXT
    assert result.usage is not None
    assert result.usage.output_tokens == 40
    assert result.response["id"] == "resp_1"
    assert events == [ev["type"] for ev in STREAM]


async def test_a_body_that_is_not_what_its_encoding_says_is_a_protocol_error() -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Content-Encoding": "gzip"}
        )
        await resp.prepare(request)
        await resp.write(b"data: not gzip at all\n\n")
        await resp.write_eof()
        return resp

    async with web_app(handler) as url, Engine(url, "sk-x") as eng:
        with pytest.raises(ProtocolError, match="body is not valid gzip"):
            await eng.run({"model": "m", "input": "hi"})


# --- proxies and TLS ------------------------------------------------------------------------


@pytest.fixture
def proxy() -> Iterator[Front]:
    with Front.proxy() as front:
        yield front


def port_of(url: str) -> int:
    return int(url.split(":")[2].split("/", maxsplit=1)[0])


async def test_an_explicit_proxy_carries_the_request(proxy: Front, base_url: str) -> None:
    async with Engine(base_url, "sk-x", proxy=proxy.url, trust_env=False) as eng:
        result = await eng.run({"model": "m", "input": "hi"})
    assert result.text
    assert proxy.served == 1


async def test_the_environment_proxy_is_honoured_and_no_proxy_respected(
    proxy: Front, base_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    async with Engine(base_url, "sk-x") as eng:
        await eng.run({"model": "m", "input": "hi"})
    assert proxy.served == 1
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    async with Engine(base_url, "sk-x") as eng:
        await eng.run({"model": "m", "input": "hi"})
    assert proxy.served == 1  # went direct
    async with Engine(base_url, "sk-x", trust_env=False) as eng:
        await eng.run({"model": "m", "input": "hi"})
    assert proxy.served == 1


async def test_a_proxy_password_is_used_and_never_shown(base_url: str) -> None:
    with Front.proxy(auth="user:s3cr3t-proxy-pw") as front:
        async with Engine(base_url, "sk-x", proxy=front.url, trust_env=False) as eng:
            await eng.run({"model": "m", "input": "hi"})
        assert front.served == 1
        wrong = front.url.replace("s3cr3t-proxy-pw", "wr0ng-proxy-pw")
        async with Engine(base_url, "sk-x", proxy=wrong, trust_env=False) as eng:
            with pytest.raises(EngineError) as caught:
                await eng.run({"model": "m", "input": "hi"})
            assert "wr0ng-proxy-pw" not in repr(eng)
        assert front.refused >= 1
        for text in (str(caught.value), repr(caught.value), caught.value.message):
            assert "wr0ng-proxy-pw" not in text


def test_run_and_batch_take_proxy(
    proxy: Front, base_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    proc = engine_cli("run", "--base-url", base_url, "--proxy", proxy.url, "Hi")
    assert proc.returncode == 0, proc.stderr
    assert proxy.served == 1
    make_input(tmp_path / "in.jsonl", 3)
    argv = [
        str(tmp_path / "in.jsonl"),
        "-o",
        str(tmp_path / "out.jsonl"),
        "--base-url",
        base_url,
        "--proxy",
        proxy.url,
    ]
    assert batch_main(argv) == 0
    assert proxy.served == 4


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_front(ca: trustme.CA, mock_server: MockServerThread) -> Iterator[Front]:
    server_ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ssl)
    with Front.tls(port_of(mock_server.base_url), server_ssl) as front:
        yield front


async def test_a_private_ca_is_trusted_when_given_and_only_then(
    ca: trustme.CA, tls_front: Front, tmp_path: Path
) -> None:
    url = f"{tls_front.url}/v1"
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    async with Engine(url, "sk-x", ssl=bundle) as eng:
        assert (await eng.run({"model": "m", "input": "hi"})).text
    async with Engine(url, "sk-x", trust_env=False) as eng:  # the system's CAs: not this one
        with pytest.raises(ConnectError, match="certificate"):
            await eng.run({"model": "m", "input": "hi"})
    async with Engine(url, "sk-x", ssl=False) as eng:  # --insecure
        assert (await eng.run({"model": "m", "input": "hi"})).text


async def test_a_client_certificate_is_presented(
    ca: trustme.CA, mock_server: MockServerThread, tmp_path: Path
) -> None:
    server_ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ssl)
    ca.configure_trust(server_ssl)
    server_ssl.verify_mode = ssl.CERT_REQUIRED
    bundle, cert = tmp_path / "ca.pem", tmp_path / "client.pem"
    ca.cert_pem.write_to_path(str(bundle))
    client = ca.issue_cert("client@example.test")
    client.private_key_and_cert_chain_pem.write_to_path(str(cert))
    with Front.tls(port_of(mock_server.base_url), server_ssl) as front:
        url = f"{front.url}/v1"
        with_cert = NetworkOptions(ca_bundle=str(bundle), client_cert=str(cert))
        async with Engine(url, "sk-x", **with_cert.engine_options()) as eng:
            assert (await eng.run({"model": "m", "input": "hi"})).text
        without = NetworkOptions(ca_bundle=str(bundle))
        async with Engine(url, "sk-x", **without.engine_options()) as eng:
            with pytest.raises(EngineError):
                await eng.run({"model": "m", "input": "hi"})


def test_run_and_batch_take_ca_bundle_and_insecure(
    ca: trustme.CA, tls_front: Front, tmp_path: Path
) -> None:
    url = f"{tls_front.url}/v1"
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    proc = engine_cli("run", "--base-url", url, "--ca-bundle", str(bundle), "Hi")
    assert proc.returncode == 0, proc.stderr
    assert "WARNING" not in proc.stderr
    insecure = engine_cli("run", "--base-url", url, "--insecure", "Hi")
    assert insecure.returncode == 0, insecure.stderr
    assert "WARNING: --insecure" in insecure.stderr
    make_input(tmp_path / "in.jsonl", 3)
    argv = [str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "out.jsonl"), "--base-url", url]
    assert batch_main([*argv, "--ca-bundle", str(bundle)]) == 0
    assert len(records(tmp_path / "out.jsonl")) == 3


def test_a_missing_ca_bundle_is_one_line(tmp_path: Path) -> None:
    proc = engine_cli(
        "run",
        "--base-url",
        "https://127.0.0.1:1/v1",
        "--ca-bundle",
        str(tmp_path / "nope.pem"),
        "Hi",
    )
    assert proc.returncode != 0
    assert "cannot read the CA bundle" in proc.stderr
    assert "Traceback" not in proc.stderr


async def test_a_redirect_is_not_followed_and_names_where_it_points() -> None:
    async def moved(request: web.Request) -> web.Response:
        raise web.HTTPMovedPermanently(location=f"https://127.0.0.1:1{request.path}")

    async with web_app(moved) as url, Engine(url, "sk-x") as eng:
        with pytest.raises(APIStatusError) as caught:
            await eng.run({"model": "m", "input": "hi"})
    assert caught.value.status == 301
    assert caught.value.attempts == 1  # not retried
    assert f"{url}/responses redirects to https://127.0.0.1:1/v1/responses" in str(caught.value)
    assert job_failure(caught.value) == "the endpoint has moved"
