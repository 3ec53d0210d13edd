"""A bad day loses nothing: a wrong key, path or host ends the job, not its records; an
edited input is refused; failed records can be sent again; a BOM is no bad line."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import TYPE_CHECKING

import orjson
import pytest

from engine.batch import BatchConfig, Endpoint, run_batch
from engine.batch.runner import JOB_BURST, ChangedInputError
from engine.errors import JobFailed
from engine.mock import MockConfig
from tests.conftest import TEST_API_KEY, batch_main
from tests.hostile import HostileServer
from tests.test_batch import FAST_RETRY, assert_exactly_once, make_input, records
from tests.test_cli import engine_cli

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from engine.mock import MockServerThread
    from tests.conftest import MockFactory

N = 40
IDS = {f"req-{i}" for i in range(N)}


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def served(mock: MockServerThread) -> int:
    """Every request the mock received, refused (401) or not."""
    return sum(mock.stats.requests.values()) + mock.stats.unauthorized


def argv(tmp_path: Path, url: str, *extra: str) -> list[str]:
    return [
        str(tmp_path / "in.jsonl"),
        "-o",
        str(tmp_path / "out.jsonl"),
        "--base-url",
        url,
        "--concurrency",
        "8",
        *extra,
    ]


@pytest.fixture
def hostile() -> Iterator[HostileServer]:
    with HostileServer() as server:
        yield server


def test_a_wrong_key_ends_the_job_and_the_right_one_does_every_record_once(
    tmp_path: Path,
    mock_factory: MockFactory,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    mock = mock_factory(MockConfig(output_tokens=16, api_key=TEST_API_KEY))
    make_input(tmp_path / "in.jsonl", N)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong-key")
    started = time.monotonic()
    assert batch_main(argv(tmp_path, mock.base_url)) == 2
    assert time.monotonic() - started < 5
    err = capsys.readouterr().err
    assert "the server refused the API key" in err
    assert f"{mock.base_url}/" in err  # the URL that refused
    assert "sk-wrong-key" not in err
    assert served(mock) == 1  # the first request alone
    assert records(tmp_path / "out.jsonl") == []
    assert records(tmp_path / "out.errors.jsonl") == []
    monkeypatch.setenv("OPENAI_API_KEY", TEST_API_KEY)
    assert batch_main(argv(tmp_path, mock.base_url)) == 0
    assert_exactly_once(IDS, tmp_path / "out.jsonl", tmp_path / "out.errors.jsonl")
    assert len(records(tmp_path / "out.jsonl")) == N


@pytest.mark.parametrize(
    ("behaviour", "cause"),
    [
        ("401", "the server refused the API key"),
        ("403", "the API key may not use this endpoint"),
        ("404", "no such endpoint"),
    ],
)
def test_a_job_level_status_on_the_first_request_sends_nothing_else(
    tmp_path: Path,
    hostile: HostileServer,
    capsys: pytest.CaptureFixture[str],
    behaviour: str,
    cause: str,
) -> None:
    make_input(tmp_path / "in.jsonl", N)
    assert batch_main(argv(tmp_path, hostile.url(behaviour))) == 2
    assert cause in capsys.readouterr().err
    assert hostile.requests[behaviour] == 1
    assert records(tmp_path / "out.errors.jsonl") == []


def test_a_closed_port_ends_the_job_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], base_url: str
) -> None:
    make_input(tmp_path / "in.jsonl", N)
    url = f"http://127.0.0.1:{closed_port()}/v1"
    started = time.monotonic()
    assert batch_main(argv(tmp_path, url)) == 2
    assert time.monotonic() - started < 5
    err = capsys.readouterr().err
    assert "the server cannot be reached" in err
    assert "run the same command to go on" in err
    assert records(tmp_path / "out.errors.jsonl") == []
    assert batch_main(argv(tmp_path, base_url)) == 0  # the right host: every record, once
    assert_exactly_once(IDS, tmp_path / "out.jsonl", tmp_path / "out.errors.jsonl")


async def test_a_burst_of_job_failures_stops_the_job_and_keeps_its_records_to_do(
    tmp_path: Path, hostile: HostileServer, base_url: str
) -> None:
    make_input(tmp_path / "in.jsonl", N)
    cfg = BatchConfig(
        input_path=tmp_path / "in.jsonl",
        output_path=tmp_path / "out.jsonl",
        endpoints=[Endpoint(hostile.url("ok-then-401"))],
        concurrency=2,
        retry=FAST_RETRY,
    )
    with pytest.raises(JobFailed, match=f"{JOB_BURST} requests in a row failed this way"):
        await run_batch(cfg)
    assert len(records(tmp_path / "out.jsonl")) == 1  # the answer before the key was revoked
    assert records(tmp_path / "out.errors.jsonl") == []  # the 401s are the job's, not theirs
    assert hostile.requests["ok-then-401"] < N
    cfg.endpoints = [Endpoint(base_url)]
    summary = await run_batch(cfg)
    assert summary.already_done == 1
    assert summary.succeeded == N - 1
    assert_exactly_once(IDS, tmp_path / "out.jsonl", tmp_path / "out.errors.jsonl")


async def test_a_few_job_level_failures_among_successes_are_the_records_own(
    tmp_path: Path, mock_factory: MockFactory
) -> None:
    """A 404 for one record (its model, say) while the others succeed is that record's."""
    mock = mock_factory(MockConfig(output_tokens=16, api_key=TEST_API_KEY))
    make_input(tmp_path / "in.jsonl", 10)
    endpoints = [Endpoint(mock.base_url, TEST_API_KEY), Endpoint(mock.base_url, "sk-other")]
    summary = await run_batch(
        BatchConfig(
            input_path=tmp_path / "in.jsonl",
            output_path=tmp_path / "out.jsonl",
            endpoints=endpoints,
            concurrency=1,  # alternating: never JOB_BURST failures in a row
            retry=FAST_RETRY,
        )
    )
    assert summary.succeeded == summary.failed == 5
    assert {r["error"]["code"] for r in records(tmp_path / "out.errors.jsonl")} == {"http_401"}


def test_retry_failed_sends_the_errors_file_again_and_empties_it(
    tmp_path: Path, mock_factory: MockFactory, base_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = mock_factory(MockConfig(output_tokens=16, faults={"500": 0.5}, seed=3))
    make_input(tmp_path / "in.jsonl", N)
    errors = tmp_path / "out.errors.jsonl"
    assert batch_main([*argv(tmp_path, broken.base_url), "--max-retries", "0"]) == 1
    failed = {r["custom_id"] for r in records(errors)}
    assert 0 < len(failed) < N
    capsys.readouterr()
    assert batch_main(argv(tmp_path, base_url)) == 1  # a plain resume leaves them be
    assert "--retry-failed sends them again" in capsys.readouterr().err
    assert {r["custom_id"] for r in records(errors)} == failed
    assert batch_main([*argv(tmp_path, base_url), "--retry-failed", "--json"]) == 0
    summary = orjson.loads(capsys.readouterr().out)
    assert summary["retried_failed"] == len(failed)
    assert summary["succeeded"] == len(failed)
    assert records(errors) == []
    assert_exactly_once(IDS, tmp_path / "out.jsonl", errors)


def test_retry_failed_keeps_a_record_that_fails_again_once(
    tmp_path: Path, mock_factory: MockFactory
) -> None:
    broken = mock_factory(MockConfig(output_tokens=16, faults={"500": 0.5}, seed=3))
    make_input(tmp_path / "in.jsonl", N)
    errors = tmp_path / "out.errors.jsonl"
    args = [*argv(tmp_path, broken.base_url), "--max-retries", "0"]
    assert batch_main(args) == 1
    first = {r["custom_id"] for r in records(errors)}
    assert batch_main([*args, "--retry-failed"]) == 1  # some fail again, some succeed
    again = [r["custom_id"] for r in records(errors)]
    assert len(again) == len(set(again))  # one line per id: the newest
    assert set(again) < first
    assert_exactly_once(IDS, tmp_path / "out.jsonl", errors)


def test_an_edited_input_is_refused_with_its_custom_ids(
    tmp_path: Path, base_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = make_input(tmp_path / "in.jsonl", 10)
    assert batch_main(argv(tmp_path, base_url)) == 0
    lines = path.read_bytes().splitlines()
    changed = orjson.loads(lines[3])
    changed["body"]["input"] = "a different question"
    lines[3] = orjson.dumps(changed)
    path.write_bytes(b"\n".join([*lines[:9], b""]))  # and req-9's line is gone
    before = (tmp_path / "out.jsonl").read_bytes()
    capsys.readouterr()
    assert batch_main(argv(tmp_path, base_url)) == 2
    err = capsys.readouterr().err
    assert "1 finished records asked something else ('req-3')" in err
    assert "1 finished records have no line any more ('req-9')" in err
    assert "--allow-changed-input" in err
    assert (tmp_path / "out.jsonl").read_bytes() == before
    assert batch_main([*argv(tmp_path, base_url), "--allow-changed-input"]) == 0
    assert (tmp_path / "out.jsonl").read_bytes() == before  # nothing to do, nothing sent


def test_a_line_inserted_into_plain_bodies_is_refused(tmp_path: Path, base_url: str) -> None:
    path = make_input(tmp_path / "in.jsonl", 5, plain=True)
    assert batch_main(argv(tmp_path, base_url)) == 0
    path.write_bytes(b'{"model": "m", "input": "a new first line"}\n' + path.read_bytes())
    cfg = BatchConfig(
        input_path=path, output_path=tmp_path / "out.jsonl", endpoints=[Endpoint(base_url)]
    )
    with pytest.raises(ChangedInputError, match="5 finished records asked something else"):
        asyncio.run(run_batch(cfg))


def test_a_key_reordered_body_is_no_change(tmp_path: Path, base_url: str) -> None:
    path = make_input(tmp_path / "in.jsonl", 4)
    assert batch_main(argv(tmp_path, base_url)) == 0
    rows = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    path.write_bytes(
        b"".join(
            orjson.dumps(dict(reversed(list(row.items()))), option=orjson.OPT_APPEND_NEWLINE)
            for row in rows
        )
    )
    assert batch_main(argv(tmp_path, base_url)) == 0


def test_a_bom_is_skipped(tmp_path: Path, base_url: str) -> None:
    path = make_input(tmp_path / "in.jsonl", 3)
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert batch_main(argv(tmp_path, base_url)) == 0
    assert_exactly_once(
        {"req-0", "req-1", "req-2"}, tmp_path / "out.jsonl", tmp_path / "out.errors.jsonl"
    )


def test_the_summary_names_both_files(
    tmp_path: Path, base_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    make_input(tmp_path / "in.jsonl", 2)
    assert batch_main(argv(tmp_path, base_url)) == 0
    err = capsys.readouterr().err
    assert f"output: {tmp_path / 'out.jsonl'}; errors: {tmp_path / 'out.errors.jsonl'}" in err


def test_an_empty_input_says_so(
    tmp_path: Path, base_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "in.jsonl").write_bytes(b"\n\n")
    assert batch_main(argv(tmp_path, base_url)) == 0
    assert "the input has no request (an empty file): nothing to do" in capsys.readouterr().err


def test_no_base_url_and_no_key_is_one_line_before_anything_is_sent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    make_input(tmp_path / "in.jsonl", 2)
    for name in ("OPENAI_BASE_URL", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    args = [str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "out.jsonl")]
    assert batch_main(args) == 2
    err = capsys.readouterr().err
    assert "no --base-url, no OPENAI_BASE_URL and no API key" in err
    assert not (tmp_path / "out.jsonl").exists()


def test_api_key_is_accepted_on_batch_and_run(
    tmp_path: Path, mock_factory: MockFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    mock = mock_factory(MockConfig(output_tokens=4, api_key=TEST_API_KEY))
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    make_input(tmp_path / "in.jsonl", 2)
    assert batch_main([*argv(tmp_path, mock.base_url), "--api-key", TEST_API_KEY]) == 0
    proc = engine_cli("run", "--base-url", mock.base_url, "--api-key", TEST_API_KEY, "Hi")
    assert proc.returncode == 0, proc.stderr
    assert TEST_API_KEY not in proc.stdout + proc.stderr
