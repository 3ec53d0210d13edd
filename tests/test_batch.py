"""The batch runner against the real mock endpoint: exactly once, resume, limits, endpoints."""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import pytest

from engine.batch import BatchConfig, DuplicateCustomIdError, Endpoint, Shard, run_batch
from engine.batch.summary import format_summary
from engine.client import Engine, RetryPolicy, Timeouts
from engine.errors import EngineError, InternalServerError, RateLimitError, TransportError
from engine.limits import WINDOW_S, RateLimiter
from engine.mock import MockConfig, MockServerThread
from engine.retry import retry_delay
from tests.conftest import TEST_API_KEY, batch_main

if TYPE_CHECKING:
    from tests.conftest import MockFactory

PROJECT = Path(__file__).resolve().parent.parent
FAST_RETRY = RetryPolicy(max_retries=2, base_s=0.01, cap_s=0.05, max_retry_after_s=0.05)


def make_input(path: Path, n: int, *, start: int = 0, plain: bool = False) -> Path:
    """n requests, alternating Responses and Chat, each with its own prompt."""
    with path.open("wb") as f:
        for i in range(start, start + n):
            if i % 2:
                body: dict[str, Any] = {
                    "model": "m",
                    "messages": [{"role": "user", "content": f"tell me about {i}"}],
                }
                url = "/v1/chat/completions"
            else:
                body = {"model": "m", "input": f"tell me about {i}", "max_output_tokens": 16}
                url = "/v1/responses"
            row = (
                body
                if plain
                else {"custom_id": f"req-{i}", "method": "POST", "url": url, "body": body}
            )
            f.write(orjson.dumps(row) + b"\n")
    return path


def records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def content(path: Path) -> dict[str, tuple[str, Any]]:
    """custom_id -> (text, usage): what must not depend on timing, ids or interruptions."""
    out: dict[str, tuple[str, Any]] = {}
    for rec in records(path):
        body = rec["response"]["body"]
        if body.get("object") == "chat.completion":
            text = body["choices"][0]["message"]["content"]
        else:
            text = "".join(part["text"] for item in body["output"] for part in item["content"])
        out[rec["custom_id"]] = (text, body["usage"])
    return out


def assert_exactly_once(expected: set[str], out: Path, err: Path) -> None:
    ok = [r["custom_id"] for r in records(out)]
    failed = [r["custom_id"] for r in records(err)]
    assert len(ok) == len(set(ok)), "duplicate output records"
    assert len(failed) == len(set(failed)), "duplicate error records"
    assert not set(ok) & set(failed)
    assert set(ok) | set(failed) == expected


def config(tmp_path: Path, base_url: str, **kw: Any) -> BatchConfig:
    kw.setdefault("retry", FAST_RETRY)
    kw.setdefault("input_path", tmp_path / "in.jsonl")
    return BatchConfig(output_path=tmp_path / "out.jsonl", endpoints=[Endpoint(base_url)], **kw)


async def test_faults_end_in_exactly_one_record_each(
    tmp_path: Path, mock_factory: MockFactory
) -> None:
    faults = {"429": 0.03, "500": 0.03, "disconnect": 0.02, "malformed": 0.02}
    mock = mock_factory(output_tokens=16, faults=faults, seed=5, retry_after_s=0.01)
    make_input(tmp_path / "in.jsonl", 2000)
    summary = await run_batch(config(tmp_path, mock.base_url, concurrency=64))
    assert_exactly_once(
        {f"req-{i}" for i in range(2000)}, tmp_path / "out.jsonl", tmp_path / "out.errors.jsonl"
    )
    assert summary.succeeded + summary.failed == 2000
    assert summary.retries_by_kind["StreamTruncated"] > 0  # broken streams are sent again
    assert summary.retries_by_kind["ProtocolError"] > 0  # so are malformed ones
    assert set(summary.errors_by_kind) <= {
        "TransportError",
        "ProtocolError",
        "StreamTruncated",
        "http_429",
        "http_500",
    }
    request_ids = [r["response"]["request_id"] for r in records(tmp_path / "out.jsonl")]
    assert all(rid.startswith("req_") for rid in request_ids)  # the server's x-request-id
    assert len(set(request_ids)) == len(request_ids)
    for rec in records(tmp_path / "out.jsonl")[:50]:
        assert rec["response"]["status_code"] == 200
        assert rec["response"]["body"]["usage"]["total_tokens"] > 0
        assert rec["id"].startswith("batch_req_")
        assert rec["error"] is None
    for rec in records(tmp_path / "out.errors.jsonl"):
        assert set(rec["error"]) == {"code", "message"}
        if rec["error"]["code"].startswith("http_"):
            assert rec["response"]["request_id"].startswith("req_")
    # Run again: everything is done, nothing is sent or written twice.
    before = sum(mock.stats.requests.values())
    again = await run_batch(config(tmp_path, mock.base_url))
    assert (again.already_done, again.to_do, again.finished) == (2000, 0, 0)
    assert sum(mock.stats.requests.values()) == before


async def test_a_stream_broken_after_its_first_event_is_sent_again(
    tmp_path: Path, mock_factory: MockFactory
) -> None:
    """Nothing of it reached the output, so a batch retries it (a streaming consumer would not)."""
    mock = mock_factory(output_tokens=8, faults={"disconnect": 0.2}, seed=11)
    make_input(tmp_path / "in.jsonl", 60)
    # Many retries: the mock draws faults from one seeded sequence, and near the end of the
    # job a request retried at once can be the only one drawing, several times in a row.
    policy = RetryPolicy(max_retries=20, base_s=0.001, cap_s=0.005)
    summary = await run_batch(config(tmp_path, mock.base_url, concurrency=8, retry=policy))
    assert_exactly_once(
        {f"req-{i}" for i in range(60)}, tmp_path / "out.jsonl", tmp_path / "out.errors.jsonl"
    )
    assert (summary.succeeded, summary.failed) == (60, 0)
    assert summary.retries_by_kind["StreamTruncated"] == summary.retries > 3
    assert sum(mock.stats.requests.values()) == 60 + summary.retries
    for rec in records(tmp_path / "out.jsonl"):  # whole answers, not the broken attempt's part
        body = rec["response"]["body"]
        done = (
            body["status"] in ("completed", "incomplete")
            if body["object"] == "response"
            else body["choices"][0]["finish_reason"] in ("stop", "length")
        )
        assert done, body


async def test_a_malformed_event_is_sent_again_within_max_retries(
    tmp_path: Path, mock_factory: MockFactory
) -> None:
    mock = mock_factory(output_tokens=8, faults={"malformed": 1.0})
    make_input(tmp_path / "in.jsonl", 2)
    summary = await run_batch(config(tmp_path, mock.base_url))  # max_retries 2
    assert (summary.succeeded, summary.failed, summary.retries) == (0, 2, 4)
    assert dict(summary.errors_by_kind) == {"ProtocolError": 2}
    assert sum(mock.stats.requests.values()) == 6
    errors = records(tmp_path / "out.errors.jsonl")
    assert {e["error"]["code"] for e in errors} == {"ProtocolError"}


@pytest.mark.parametrize("fault", ["malformed", "stall:1"])
async def test_a_stream_broken_mid_way_ends_whole_in_the_output(
    tmp_path: Path, mock_factory: MockFactory, fault: str
) -> None:
    mock = mock_factory(output_tokens=8, faults={fault: 0.3}, seed=3)
    make_input(tmp_path / "in.jsonl", 40)
    policy = RetryPolicy(max_retries=20, base_s=0.001, cap_s=0.005)
    timeouts = Timeouts(first_token_s=0.5)
    summary = await run_batch(
        config(tmp_path, mock.base_url, concurrency=8, retry=policy, timeouts=timeouts)
    )
    assert (summary.succeeded, summary.failed) == (40, 0)
    assert summary.retries > 0
    assert_exactly_once(
        {f"req-{i}" for i in range(40)}, tmp_path / "out.jsonl", tmp_path / "out.errors.jsonl"
    )


async def test_plain_bodies_and_bad_lines(tmp_path: Path, base_url: str) -> None:
    path = make_input(tmp_path / "in.jsonl", 4, plain=True)
    with path.open("ab") as f:
        f.write(b"this is not json\n")
        f.write(b'{"custom_id": "x", "method": "GET", "url": "/v1/responses", "body": {}}\n')
        f.write(
            b'{"custom_id": "y", "method": "POST", "url": "/v1/embeddings",'
            b' "body": {"model": "m"}}\n'
        )
        f.write(b'{"custom_id": "z", "method": "POST", "url": "/v1/responses"}\n')
        f.write(b'{"model": "m", "input": "last"}\n')
    summary = await run_batch(config(tmp_path, base_url))
    assert (summary.succeeded, summary.invalid_written) == (5, 4)
    assert not summary.ok
    out = {r["custom_id"]: r for r in records(tmp_path / "out.jsonl")}
    # plain bodies are named by line number
    assert set(out) == {"line-1", "line-2", "line-3", "line-4", "line-9"}
    assert out["line-2"]["response"]["body"]["object"] == "chat.completion"
    assert out["line-1"]["response"]["body"]["object"] == "response"
    errors = {r["custom_id"]: r["error"] for r in records(tmp_path / "out.errors.jsonl")}
    assert {cid: e["line"] for cid, e in errors.items()} == {"line-5": 5, "x": 6, "y": 7, "z": 8}
    assert errors["x"]["message"].startswith("line 6: method must be POST")
    assert {e["code"] for e in errors.values()} == {"invalid_request"}


async def test_a_real_id_named_like_a_stand_in_is_no_duplicate(
    tmp_path: Path, base_url: str
) -> None:
    path = make_input(tmp_path / "in.jsonl", 3, plain=True)  # line-1, line-2, line-3
    with path.open("ab") as f:  # a real custom_id that is a plain body's stand-in name
        f.write(
            orjson.dumps(
                {
                    "custom_id": "line-2",
                    "method": "POST",
                    "url": "/v1/responses",
                    "body": {"model": "m", "input": "real"},
                }
            )
            + b"\n"
        )
    cfg = config(tmp_path, base_url)
    summary = await run_batch(cfg)
    assert (summary.succeeded, summary.failed) == (4, 0)
    expected = {"line-1", "line-2_", "line-3", "line-2"}
    assert_exactly_once(expected, cfg.output_path, tmp_path / "out.errors.jsonl")
    again = await run_batch(cfg)  # the same names again: all done, nothing sent
    assert (again.already_done, again.finished) == (4, 0)


def test_duplicate_ids_are_refused_before_sending(
    tmp_path: Path, mock_factory: MockFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    mock = mock_factory()
    path = make_input(tmp_path / "in.jsonl", 5)
    with path.open("ab") as f:
        f.write(path.read_bytes().splitlines(keepends=True)[1])
    argv = [str(path), "-o", str(tmp_path / "out.jsonl"), "--base-url", mock.base_url]
    assert batch_main(argv) == 2
    assert "'req-1' on line 2 and line 6" in capsys.readouterr().err
    assert sum(mock.stats.requests.values()) == 0
    assert not (tmp_path / "out.jsonl").exists()
    with pytest.raises(DuplicateCustomIdError):
        asyncio.run(run_batch(config(tmp_path, mock.base_url)))


async def test_dry_run_sends_nothing(tmp_path: Path, mock_factory: MockFactory) -> None:
    mock = mock_factory()
    make_input(tmp_path / "in.jsonl", 50)
    summary = await run_batch(config(tmp_path, mock.base_url, dry_run=True))
    assert (summary.requests, summary.to_do, summary.finished) == (50, 50, 0)
    assert summary.estimated_tokens > 50 * 16
    assert sum(mock.stats.requests.values()) == 0
    assert not (tmp_path / "out.jsonl").exists()


async def test_shards_partition_the_job(tmp_path: Path, base_url: str) -> None:
    make_input(tmp_path / "in.jsonl", 90)
    seen: list[str] = []
    for i in (1, 2, 3):
        cfg = config(tmp_path, base_url, shard=Shard(i, 3))
        cfg.output_path = tmp_path / f"out{i}.jsonl"
        cfg.errors_path = tmp_path / f"err{i}.jsonl"
        summary = await run_batch(cfg)
        assert 10 < summary.succeeded < 50
        seen += [r["custom_id"] for r in records(cfg.output_path)]
    assert sorted(seen) == sorted(f"req-{i}" for i in range(90))


async def test_requests_spread_across_base_urls(tmp_path: Path, mock_factory: MockFactory) -> None:
    first, second = mock_factory(), mock_factory()
    make_input(tmp_path / "in.jsonl", 200)
    cfg = config(tmp_path, first.base_url, concurrency=16)
    cfg.endpoints = [Endpoint(first.base_url), Endpoint(second.base_url)]
    summary = await run_batch(cfg)
    assert summary.succeeded == 200
    a, b = (sum(m.stats.requests.values()) for m in (first, second))
    assert a + b == 200
    assert min(a, b) >= 50  # least-loaded with round-robin ties: both carry real traffic
    assert set(summary.requests_by_endpoint) == {first.base_url, second.base_url}


class FakeClock:
    """A clock that jumps forward on sleep: minutes of rate limiting in milliseconds."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


def recording(limiter: RateLimiter, clock: FakeClock) -> list[tuple[float, int]]:
    """Grant times and estimates, recorded as the runner acquires."""
    grants: list[tuple[float, int]] = []
    acquire = limiter.acquire

    async def recorded(estimated_tokens: int) -> Any:
        reservation = await acquire(estimated_tokens)
        grants.append((clock(), estimated_tokens))
        return reservation

    limiter.acquire = recorded  # type: ignore[method-assign]
    return grants


def max_in_window(times: list[float], amounts: list[int], window_s: float = 60.0) -> int:
    """The largest sum of amounts granted within any half-open window of window_s."""
    return max(
        sum(a for t, a in zip(times, amounts, strict=True) if start <= t < start + window_s)
        for start in times
    )


async def test_requests_per_minute_hold_in_every_window(tmp_path: Path, base_url: str) -> None:
    clock = FakeClock()
    limiter = RateLimiter(rpm=10, tpm=None, clock=clock, sleep=clock.sleep)
    grants = recording(limiter, clock)
    make_input(tmp_path / "in.jsonl", 35)
    summary = await run_batch(config(tmp_path, base_url, concurrency=8), limiter=limiter)
    assert summary.succeeded == 35
    times = [t for t, _ in grants]
    assert max_in_window(times, [1] * len(times)) <= 10
    assert times[-1] - times[0] >= 3 * 60  # 35 requests at 10/min need three more minutes


async def test_tokens_per_minute_settle_to_real_usage(tmp_path: Path, base_url: str) -> None:
    clock = FakeClock()
    limiter = RateLimiter(rpm=None, tpm=400, clock=clock, sleep=clock.sleep)
    grants = recording(limiter, clock)
    make_input(tmp_path / "in.jsonl", 40)
    cfg = config(tmp_path, base_url, concurrency=1, default_output_tokens=16)
    summary = await run_batch(cfg, limiter=limiter)
    assert summary.succeeded == 40
    # concurrency 1: output order is grant order, so each grant's real usage is known
    used = [r["response"]["body"]["usage"]["total_tokens"] for r in records(cfg.output_path)]
    times = [t for t, _ in grants]
    slack = max(u - est for u, (_, est) in zip(used, grants, strict=True))
    assert max_in_window(times, used) <= 400 + max(slack, 0)
    assert summary.total_tokens == sum(used)


class ArrivalLog(Counter[str]):
    """Stands in for the mock's per-path request counter and stamps every arrival with the
    test's clock: what the server received, and when, by the limiter's time."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__()
        self.clock = clock
        self.times: list[float] = []

    def __setitem__(self, key: str, value: int) -> None:
        self.times.append(self.clock())  # on the mock's thread; list.append is atomic
        super().__setitem__(key, value)


class ServerPacedClock(FakeClock):
    """A fake clock that moves on only after every granted request has reached the server,
    so each arrival carries the time of its grant, never a later one."""

    def __init__(self) -> None:
        super().__init__()
        self.arrivals = ArrivalLog(self)
        self.grants: list[tuple[float, int]] = []

    async def sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + 10
        while len(self.arrivals.times) < len(self.grants):
            assert time.monotonic() < deadline, "a granted request never reached the server"
            await asyncio.sleep(0.001)
        await super().sleep(seconds)


async def test_a_tiny_record_does_not_wait_for_an_estimate_already_settled(
    tmp_path: Path, base_url: str
) -> None:
    """Two records estimated at ~1,030 tokens each (no output cap: 1,024 assumed) under
    --tpm 2000: the first settles at its real ~30 tokens, so the second goes at once rather
    than a minute later."""
    with (tmp_path / "in.jsonl").open("wb") as f:
        for i in range(2):
            f.write(orjson.dumps({"model": "m", "messages": [{"role": "user", "content": f"{i}"}]}))
            f.write(b"\n")
    summary = await run_batch(config(tmp_path, base_url, tpm=2000, concurrency=1))
    assert summary.succeeded == 2
    assert summary.wall_s < WINDOW_S / 2  # would be a full window without the wake


async def test_a_request_above_the_whole_tpm_is_sent_alone_and_reported(
    tmp_path: Path, base_url: str
) -> None:
    body = {"model": "m", "input": "x" * 4000, "max_output_tokens": 16}  # ~1,016 tokens
    (tmp_path / "in.jsonl").write_bytes(orjson.dumps(body) + b"\n")
    summary = await run_batch(config(tmp_path, base_url, tpm=500))
    assert summary.succeeded == 1
    assert summary.oversize_requests == 1
    assert "sent alone" in format_summary(summary)


async def test_retries_are_charged_to_the_limits(tmp_path: Path, mock_factory: MockFactory) -> None:
    """Every HTTP request the server receives, retries included, went through the limiter,
    so no window at the server holds more than rpm requests."""
    mock = mock_factory(
        output_tokens=16, faults={"429": 0.25, "500": 0.1}, seed=3, retry_after_s=0.01
    )
    clock = ServerPacedClock()
    mock.stats.requests = clock.arrivals
    limiter = RateLimiter(rpm=10, tpm=None, clock=clock, sleep=clock.sleep)
    clock.grants = recording(limiter, clock)
    make_input(tmp_path / "in.jsonl", 40)
    summary = await run_batch(config(tmp_path, mock.base_url, concurrency=8), limiter=limiter)
    assert summary.retries >= 5  # the faults did make the runner retry
    assert_exactly_once(
        {f"req-{i}" for i in range(40)}, tmp_path / "out.jsonl", tmp_path / "out.errors.jsonl"
    )
    arrivals = clock.arrivals.times
    assert len(arrivals) == len(clock.grants) == 40 + summary.retries
    assert max_in_window(arrivals, [1] * len(arrivals)) <= 10


@pytest.mark.parametrize("max_retries", [0, 2])
async def test_retry_budget_counts_every_attempt(
    tmp_path: Path, mock_factory: MockFactory, max_retries: int
) -> None:
    mock = mock_factory(faults={"500": 1.0})
    make_input(tmp_path / "in.jsonl", 5)
    retry = RetryPolicy(max_retries=max_retries, base_s=0.001, cap_s=0.002)
    summary = await run_batch(config(tmp_path, mock.base_url, retry=retry))
    assert (summary.failed, summary.retries) == (5, 5 * max_retries)
    assert sum(mock.stats.requests.values()) == 5 * (1 + max_retries)
    assert {r["error"]["code"] for r in records(tmp_path / "out.errors.jsonl")} == {"http_500"}


@pytest.mark.parametrize(
    "error",
    [
        pytest.param(RateLimitError("slow", status=429, retry_after_s=0.25), id="retry-after"),
        pytest.param(RateLimitError("slow", status=429, retry_after_s=600.0), id="retry-after-cap"),
        pytest.param(InternalServerError("oops", status=500), id="http-500"),
        pytest.param(TransportError("reset"), id="transport"),
    ],
)
def test_runner_and_engine_share_one_retry_rule(error: EngineError) -> None:
    """The runner sends retries itself, with the engine's rule: the same function."""
    policy = RetryPolicy(max_retries=3, base_s=0.5, cap_s=20.0, max_retry_after_s=60.0)
    engine = Engine("http://127.0.0.1:9/v1", "", retry=policy)  # no session: nothing opened
    saved = random.getstate()  # backoff jitter draws from the global generator
    try:
        for attempt in (0, 1, 2):
            random.seed(attempt)
            expected = engine.retry_delay(error, attempt)
            random.seed(attempt)
            assert retry_delay(error, attempt, policy) == expected is not None
        assert retry_delay(error, 3, policy) is None  # max_retries reached
    finally:
        random.setstate(saved)


def test_api_key_is_never_printed(
    tmp_path: Path,
    auth_mock_server: MockServerThread,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BATCH_TEST_KEY", TEST_API_KEY)
    make_input(tmp_path / "in.jsonl", 6)
    argv = [
        str(tmp_path / "in.jsonl"),
        "-o",
        str(tmp_path / "out.jsonl"),
        "--json",
        "--base-url",
        auth_mock_server.base_url,
        "--api-key-env",
        "BATCH_TEST_KEY",
    ]
    assert batch_main(argv) == 0
    shown = capsys.readouterr()
    assert orjson.loads(shown.out)["succeeded"] == 6
    for text in (shown.out, shown.err, (tmp_path / "out.jsonl").read_text()):
        assert TEST_API_KEY not in text
    assert batch_main([*argv[:-1], "NO_SUCH_VARIABLE_SET"]) == 2
    assert "NO_SUCH_VARIABLE_SET is not set" in capsys.readouterr().err


async def test_torn_last_line_is_repaired_on_resume(tmp_path: Path, base_url: str) -> None:
    make_input(tmp_path / "in.jsonl", 30)
    cfg = config(tmp_path, base_url)
    await run_batch(cfg)
    reference = content(cfg.output_path)
    lines = cfg.output_path.read_bytes().splitlines(keepends=True)
    torn = lines[-1][: len(lines[-1]) // 2]  # as if killed in the middle of the write
    cfg.output_path.write_bytes(b"".join(lines[:20]) + torn)
    summary = await run_batch(cfg)
    assert summary.repaired_bytes == len(torn)
    assert (summary.already_done, summary.succeeded) == (20, 10)
    assert_exactly_once(
        {f"req-{i}" for i in range(30)}, cfg.output_path, tmp_path / "out.errors.jsonl"
    )
    assert content(cfg.output_path) == reference


def run_cli(args: list[str]) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}
    return subprocess.Popen(
        [sys.executable, "-m", "engine.batch", "--no-progress", *args],
        cwd=PROJECT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def wait_for_lines(
    path: Path, count: int, proc: subprocess.Popen[bytes], deadline_s: float = 60.0
) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if path.exists() and path.read_bytes().count(b"\n") >= count:
            return
        assert proc.poll() is None, "batch finished before it could be killed"
        time.sleep(0.01)
    pytest.fail(f"{path} never reached {count} lines")


# The interrupted run goes to a mock slow enough that the job cannot end before the signal
# lands even on a loaded machine (16 tokens at 40 ms: 0.64 s a record, 4 at a time: ~50 s
# for 300); the test waits on a state (lines in the output), then signals; the resume goes to
# a fast mock, which answers the same text (the mock's text depends on the prompt alone).
SLOW = MockConfig(itl_ms=40.0, output_tokens=16)


def test_kill_9_and_rerun_equals_an_uninterrupted_run(
    tmp_path: Path, mock_factory: MockFactory
) -> None:
    slow, fast = mock_factory(SLOW), mock_factory(MockConfig(output_tokens=16))
    n = 300
    path = make_input(tmp_path / "in.jsonl", n)
    ref_out, out = tmp_path / "ref.jsonl", tmp_path / "out.jsonl"
    proc = run_cli([str(path), "-o", str(out), "--base-url", slow.base_url, "--concurrency", "4"])
    wait_for_lines(out, 8, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert proc.stderr is not None
    proc.stderr.close()
    killed_at = out.read_bytes().count(b"\n")
    assert killed_at < n
    for args in (
        [str(path), "-o", str(out), "--base-url", fast.base_url, "--concurrency", "4"],
        [str(path), "-o", str(ref_out), "--base-url", fast.base_url, "--concurrency", "32"],
    ):
        done = run_cli(args)
        _, err = done.communicate(timeout=60)
        assert done.returncode == 0, err.decode()
    expected = {f"req-{i}" for i in range(n)}
    assert_exactly_once(expected, out, tmp_path / "out.errors.jsonl")
    assert content(out) == content(ref_out)
    assert len(content(out)) == n


def test_id_records_are_stable_across_runs(tmp_path: Path, base_url: str) -> None:
    make_input(tmp_path / "in.jsonl", 3)
    for name in ("a", "b"):
        cfg = config(tmp_path, base_url)
        cfg.output_path = tmp_path / f"{name}.jsonl"
        cfg.errors_path = tmp_path / f"{name}.err.jsonl"
        asyncio.run(run_batch(cfg))
    ids = [[r["id"] for r in records(tmp_path / f"{x}.jsonl")] for x in "ab"]
    assert sorted(ids[0]) == sorted(ids[1])
    assert len(set(itertools.chain(*ids))) == 3


async def test_progress_display_and_summary(
    tmp_path: Path, base_url: str, capsys: pytest.CaptureFixture[str]
) -> None:

    make_input(tmp_path / "in.jsonl", 20)
    summary = await run_batch(config(tmp_path, base_url, progress=True))
    assert "20/20" in capsys.readouterr().err  # the display's last frame
    text = format_summary(summary)
    assert "20 succeeded, 0 failed" in text
    assert "tokens: " in text
    dry = await run_batch(config(tmp_path, base_url, dry_run=True))
    assert "dry run: 0 requests to send," in format_summary(dry)
    assert dry.as_dict()["already_done"] == 20


@pytest.mark.parametrize(
    ("sig", "code", "how"), [(signal.SIGINT, 130, "Ctrl-C"), (signal.SIGTERM, 143, "SIGTERM")]
)
def test_an_interrupt_stops_cleanly_and_resumes(
    tmp_path: Path, mock_factory: MockFactory, sig: signal.Signals, code: int, how: str
) -> None:
    slow, fast = mock_factory(SLOW), mock_factory(MockConfig(output_tokens=16))
    path = make_input(tmp_path / "in.jsonl", 200)
    out = tmp_path / "out.jsonl"
    args = [str(path), "-o", str(out), "--concurrency", "4"]
    proc = run_cli([*args, "--base-url", slow.base_url])
    wait_for_lines(out, 4, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    text = err.decode()
    assert proc.returncode == code, text
    assert f"interrupted ({how}); run the same command to resume" in text
    assert "this run: " in text  # the summary of what was done
    assert "Traceback" not in text
    assert out.read_bytes().endswith(b"\n")  # stopped between records, never inside one
    done = run_cli([*args, "--base-url", fast.base_url])
    _, err = done.communicate(timeout=60)
    assert done.returncode == 0, err.decode()
    assert_exactly_once({f"req-{i}" for i in range(200)}, out, tmp_path / "out.errors.jsonl")


def write_bad_lines(path: Path, count: int) -> list[int]:
    """Append `count` invalid lines of alternating kinds; returns their line numbers."""
    first = len(path.read_bytes().splitlines()) + 1
    with path.open("ab") as f:
        for i in range(count):
            f.write(
                b"{broken\n"
                if i % 2
                else b'{"custom_id": "bad-%d", "method": "POST", "url": "/v1/embeddings",'
                b' "body": {"model": "m"}}\n' % i
            )
    return list(range(first, first + count))


def test_bad_lines_are_listed_on_stderr(
    tmp_path: Path, base_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = make_input(tmp_path / "in.jsonl", 5)
    numbers = write_bad_lines(path, 23)
    out = tmp_path / "out.jsonl"
    assert batch_main([str(path), "-o", str(out), "--base-url", base_url, "--json"]) == 1
    shown = capsys.readouterr()
    err = shown.err
    assert "invalid input lines (go to the errors file):" in err
    for number in numbers[:20]:  # the first 20, each with its line number and reason
        assert f"  line {number}: " in err
    assert f"  line {numbers[0]}: url must be /v1/responses, /v1/chat/completions or" in err
    assert f"  line {numbers[1]}: not valid JSON" in err
    assert f"line {numbers[20]}:" not in err
    assert "  … and 3 more" in err
    assert orjson.loads(shown.out)["problems"][0].startswith(f"line {numbers[0]}: url must be")
    assert len(records(tmp_path / "out.errors.jsonl")) == 23  # the file holds every one


def test_cli_dry_run_lists_problems_and_sends_nothing(
    tmp_path: Path, mock_factory: MockFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    mock = mock_factory()
    path = make_input(tmp_path / "in.jsonl", 12)
    out = tmp_path / "out.jsonl"
    argv = [str(path), "-o", str(out), "--base-url", mock.base_url, "--dry-run"]
    assert batch_main(argv) == 0
    err = capsys.readouterr().err
    assert "dry run: 12 requests to send," in err
    assert "invalid" in err
    assert "invalid input lines" not in err
    numbers = write_bad_lines(path, 2)
    assert batch_main(argv) == 1  # the file has problems: say so in the exit status
    err = capsys.readouterr().err
    assert "12 requests, 2 invalid" in err
    assert "invalid input lines (would go to the errors file):" in err
    assert f"  line {numbers[0]}: url must be" in err
    assert f"  line {numbers[1]}: not valid JSON" in err
    assert "dry run: 12 requests to send and 2 invalid lines to write," in err
    assert sum(mock.stats.requests.values()) == 0
    assert not out.exists()
    assert not (tmp_path / "out.errors.jsonl").exists()


def test_cli_errors_path_is_used(tmp_path: Path, base_url: str) -> None:
    path = make_input(tmp_path / "in.jsonl", 4)
    write_bad_lines(path, 2)
    out, errors = tmp_path / "out.jsonl", tmp_path / "elsewhere" / "failed.jsonl"
    errors.parent.mkdir()
    argv = [str(path), "-o", str(out), "--errors", str(errors), "--base-url", base_url]
    assert batch_main(argv) == 1
    assert {r["custom_id"] for r in records(errors)} == {"bad-0", "line-6"}
    assert len(records(out)) == 4
    assert not (tmp_path / "out.errors.jsonl").exists()
    assert batch_main(argv) == 1  # resumed from the same files: nothing left to do
    assert (len(records(out)), len(records(errors))) == (4, 2)


def test_cli_shards_cover_the_input_once(
    tmp_path: Path, base_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = make_input(tmp_path / "in.jsonl", 40)
    seen: list[str] = []
    for i in (1, 2):
        out = tmp_path / f"part{i}.jsonl"
        assert (
            batch_main([str(path), "-o", str(out), "--base-url", base_url, "--shard", f"{i}/2"])
            == 0
        )
        ids = [r["custom_id"] for r in records(out)]
        assert f"{len(ids)} requests in shard {i}/2," in capsys.readouterr().err
        assert ids
        assert all(cid in Shard(i, 2) for cid in ids)
        seen += ids
    assert sorted(seen) == sorted(f"req-{i}" for i in range(40))


async def test_each_endpoint_gets_its_own_key(tmp_path: Path, mock_factory: MockFactory) -> None:
    first, second = mock_factory(api_key="sk-first"), mock_factory(api_key="sk-second")
    make_input(tmp_path / "in.jsonl", 60)
    cfg = config(tmp_path, first.base_url, concurrency=8)
    cfg.endpoints = [Endpoint(first.base_url, "sk-first"), Endpoint(second.base_url, "sk-second")]
    summary = await run_batch(cfg)
    assert (summary.succeeded, summary.failed) == (60, 0)  # a crossed key would be a 401
    assert min(sum(m.stats.requests.values()) for m in (first, second)) >= 10


def test_cli_spreads_over_every_api_key(
    tmp_path: Path,
    mock_factory: MockFactory,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two `--api-key-env`: both keys carry requests. The mock knows only the first, so what
    went with the second ends as a 401 in the errors file: proof that it was sent."""
    mock = mock_factory(api_key="sk-known")
    monkeypatch.setenv("KEY_A", "sk-known")
    monkeypatch.setenv("KEY_B", "sk-other")
    path = make_input(tmp_path / "in.jsonl", 40)
    out = tmp_path / "out.jsonl"
    argv = [
        str(path),
        "-o",
        str(out),
        "--base-url",
        mock.base_url,
        "--concurrency",
        "4",
        "--api-key-env",
        "KEY_A",
        "--api-key-env",
        "KEY_B",
        "--json",
    ]
    assert batch_main(argv) == 1
    shown = capsys.readouterr()
    by_endpoint = orjson.loads(shown.out)["requests_by_endpoint"]
    assert set(by_endpoint) == {f"{mock.base_url} $KEY_A", f"{mock.base_url} $KEY_B"}
    assert min(by_endpoint.values()) >= 5
    ok, failed = records(out), records(tmp_path / "out.errors.jsonl")
    assert len(ok) == by_endpoint[f"{mock.base_url} $KEY_A"]
    assert len(failed) == by_endpoint[f"{mock.base_url} $KEY_B"]
    assert {r["error"]["code"] for r in failed} == {"http_401"}
    for text in (
        shown.out,
        shown.err,
        out.read_text(),
        (tmp_path / "out.errors.jsonl").read_text(),
    ):
        assert "sk-known" not in text
        assert "sk-other" not in text


async def test_adaptive_concurrency_backs_off_on_429(
    tmp_path: Path, mock_factory: MockFactory
) -> None:

    mock = mock_factory(output_tokens=16, faults={"429": 0.1}, seed=11, retry_after_s=0.01)
    make_input(tmp_path / "in.jsonl", 200)
    summary = await run_batch(config(tmp_path, mock.base_url, concurrency=16))
    assert summary.retries_by_kind["http_429"] > 0
    assert 1 <= summary.concurrency_min <= 8  # halved at least once (once per 2 s cooldown)
    assert "backed off on 429 from 16 to" in format_summary(summary)
    fixed = config(tmp_path, mock.base_url, concurrency=16, adaptive=False)
    fixed.output_path, fixed.errors_path = tmp_path / "fixed.jsonl", tmp_path / "fixed.err.jsonl"
    summary = await run_batch(fixed)
    assert summary.retries_by_kind["http_429"] > 0
    assert summary.concurrency_min == 16
