"""Batch input parsing, sharding and the result files (no network)."""

from __future__ import annotations

import os
import stat
from collections import Counter
from typing import TYPE_CHECKING

import orjson
import pytest

from engine.batch import BadLine, DuplicateCustomIdError, Request, ResultStore, Shard, scan_input
from engine.batch.inputs import estimate_tokens, iter_lines, parse_line
from engine.batch.store import record_id
from engine.client import Engine
from engine.errors import ConfigError, RateLimitError, ResponseFailed
from engine.events import Dialect

if TYPE_CHECKING:
    from pathlib import Path


def batch_line(cid: str, url: str = "/v1/responses", **body: object) -> dict[str, object]:
    return {
        "custom_id": cid,
        "method": "POST",
        "url": url,
        "body": {"model": "m", "input": f"say {cid}", **body},
    }


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_bytes(b"".join(r if isinstance(r, bytes) else orjson.dumps(r) + b"\n" for r in rows))
    return path


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        pytest.param(b"{not json", "not valid JSON", id="not-json"),
        pytest.param(b"[1, 2]", "expected a JSON object", id="not-an-object"),
        pytest.param(
            orjson.dumps({"custom_id": "a", "url": "/v1/responses"}),
            "body is missing",
            id="missing-body",
        ),
        pytest.param(
            orjson.dumps({**batch_line("a"), "url": "/v1/embeddings"}),
            "url must be",
            id="wrong-url",
        ),
        pytest.param(
            orjson.dumps({**batch_line("a"), "method": "GET"}),
            "method must be POST",
            id="wrong-method",
        ),
        pytest.param(
            orjson.dumps({**batch_line("a"), "body": "hi"}),
            "body must be a JSON object",
            id="body-not-object",
        ),
        pytest.param(
            orjson.dumps({"custom_id": 7, "body": {}}),
            "custom_id must be",
            id="custom-id-not-string",
        ),
        pytest.param(orjson.dumps({"input": "no model"}), "no model", id="plain-without-model"),
    ],
)
def test_bad_lines_name_their_line(raw: bytes, problem: str) -> None:
    parsed = parse_line(raw, 12, 100)
    assert isinstance(parsed, BadLine)
    assert parsed.line == 12
    assert parsed.message.startswith("line 12: ")
    assert problem in parsed.message


def test_batch_and_plain_lines() -> None:
    req = parse_line(orjson.dumps(batch_line("x", "/v1/chat/completions")), 3, 100)
    assert isinstance(req, Request)
    assert (req.custom_id, req.endpoint, req.line) == ("x", "chat", 3)
    req = parse_line(orjson.dumps(batch_line("y", "/v1/completions")), 4, 100)
    assert isinstance(req, Request)
    assert req.endpoint == "completions"
    engine = Engine(base_url="http://h/v1")
    for number, (body, shape) in enumerate(
        [
            (b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}', Dialect.CHAT),
            (b'{"model": "m", "input": "hi"}', Dialect.RESPONSES),
            (b'{"model": "m", "prompt": "hi"}', Dialect.COMPLETIONS),
        ],
        start=9,
    ):
        plain = parse_line(body, number, 0)
        assert isinstance(plain, Request)
        # a plain body's endpoint is the engine's rule, read from its shape
        assert (plain.custom_id, plain.endpoint) == (f"line-{number}", None)
        assert engine.url_for(plain.body, plain.endpoint)[1] is shape


def test_estimate_is_text_length_plus_output_cap() -> None:
    body = {
        "model": "abcd",
        "input": [{"role": "user", "content": "x" * 400}],
        "max_output_tokens": 50,
    }
    # 4 + 4 + 400 characters of string values -> 102 tokens, + the cap
    assert estimate_tokens(body, 1000) == 102 + 50
    assert estimate_tokens({"model": "m", "input": "abc"}, 7) == 1 + 7


def test_duplicate_ids_name_both_lines(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "in.jsonl",
        [
            batch_line("a"),
            batch_line("b"),
            b"\n",
            batch_line("a"),
            {"model": "m", "input": "x"},
            batch_line("5"),
        ],
    )
    with pytest.raises(DuplicateCustomIdError) as info:
        scan_input(path, Shard(), 10)
    message = str(info.value)
    assert "'a' on line 1 and line 4" in message
    assert message.count(" on line ") == 1  # the plain body on line 5 is 'line-5', not '5'


def test_scan_counts_and_blank_lines(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "in.jsonl",
        [
            batch_line("a"),
            b"   \n",
            b"oops\n",
            batch_line("b", max_output_tokens=5),
        ],
    )
    scan = scan_input(path, Shard(), 10)
    assert (scan.lines, scan.requests, scan.bad) == (3, 2, 1)
    assert [p.line for p in scan.problems] == [3]
    assert scan.ids == {"a", "line-3", "b"}
    items = list(iter_lines(path, Shard(), 10, skip={"a"}))
    assert [(type(i).__name__, i.custom_id) for i in items] == [
        ("BadLine", "line-3"),
        ("Request", "b"),
    ]


def test_stand_in_ids_never_collide_with_real_ids(tmp_path: Path) -> None:
    """Unnamed lines are `line-N`, made longer while a real custom_id has that name, even one
    further down the file; the same file always gives the same ids (resume relies on them)."""
    path = write_jsonl(
        tmp_path / "in.jsonl",
        [
            batch_line("line-2"),  # line 1: the name line 2 would get
            b"{broken\n",  # line 2: line-2 and line-2_ are taken -> line-2__
            batch_line("line-2_"),  # line 3
            {"model": "m", "input": "plain"},  # line 4: line-4 is taken further down -> line-4_
            batch_line("line-4"),  # line 5
            batch_line("line-6"),  # line 6: a real id equal to its own line's name is no clash
            {"model": "m", "input": "plain"},  # line 7
        ],
    )
    expected = ["line-2", "line-2__", "line-2_", "line-4_", "line-4", "line-6", "line-7"]
    scan = scan_input(path, Shard(), 10)  # no DuplicateCustomIdError
    assert (scan.requests, scan.bad) == (6, 1)
    assert scan.ids == set(expected)
    assert scan.problems[0].custom_id == "line-2__"
    for _ in range(2):
        assert [
            i.custom_id for i in iter_lines(path, Shard(), 10, reserved=scan.reserved)
        ] == expected
    by_shard = [scan_input(path, Shard(i, 2), 10).ids for i in (1, 2)]
    assert by_shard[0] | by_shard[1] == set(expected)
    assert not by_shard[0] & by_shard[1]


def test_shards_partition_exactly_and_stably() -> None:
    ids = [f"req-{i}" for i in range(3000)]
    shards = [Shard(i, 4) for i in range(1, 5)]
    owners = Counter(next(n for n, s in enumerate(shards) if cid in s) for cid in ids)
    assert sum(sum(cid in s for s in shards) == 1 for cid in ids) == len(ids)
    assert min(owners.values()) > 600  # roughly even
    # golden value: crc32 is the same in every process and on every machine (hash() is not)
    assert "req-1" in Shard(2, 4)


@pytest.mark.parametrize("text", ["0/3", "4/3", "x", "1-3", "1/"])
def test_bad_shard_specs(text: str) -> None:
    with pytest.raises(ConfigError):
        Shard.parse(text)


def test_torn_tail_is_truncated_and_done_ids_read(tmp_path: Path) -> None:
    out, err = tmp_path / "out.jsonl", tmp_path / "err.jsonl"
    good = orjson.dumps({"id": record_id("a"), "custom_id": "a", "response": None}) + b"\n"
    out.write_bytes(good + b'{"id": "batch_req_x", "custom_id": "b", "resp')
    err.write_bytes(orjson.dumps({"custom_id": "c"}) + b"\n")
    with ResultStore(out, err) as store:
        state = store.open()
        assert state.done == {"a", "c"}
        assert (state.succeeded, state.failed) == (1, 1)
        assert state.repaired_bytes == len(b'{"id": "batch_req_x", "custom_id": "b", "resp')
        store.write_failure(
            "d",
            RateLimitError(
                "HTTP 429: slow down", status=429, body={"error": {"code": "rate_limit"}}
            ),
        )
        store.write_failure(
            "e", ResponseFailed("response failed: boom", data={"response": {"status": "failed"}})
        )
    assert out.read_bytes() == good
    records = [orjson.loads(line) for line in err.read_bytes().splitlines()]
    assert records[1]["error"] == {"code": "http_429", "message": "HTTP 429: slow down"}
    assert records[1]["response"]["status_code"] == 429
    assert records[1]["response"]["body"] == {"error": {"code": "rate_limit"}}
    assert records[2]["error"]["code"] == "ResponseFailed"
    assert records[2]["response"]["body"] == {"status": "failed"}


def test_a_file_without_any_newline_is_emptied(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    out.write_bytes(b'{"custom_id": "half')
    with ResultStore(out, tmp_path / "err.jsonl") as store:
        assert store.open().done == set()
    assert out.read_bytes() == b""


def test_a_second_writer_is_refused(tmp_path: Path) -> None:
    out, err = tmp_path / "out.jsonl", tmp_path / "err.jsonl"
    with ResultStore(out, err) as first:
        first.open()
        with pytest.raises(ConfigError, match="locked"):
            ResultStore(out, err).open()
    with ResultStore(out, err) as again:  # released on close
        again.open()


def test_foreign_file_is_not_resumed_into(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    out.write_bytes(b"hello\n")
    with ResultStore(out, tmp_path / "err.jsonl") as store, pytest.raises(ConfigError):
        store.open()


def test_fsync_mode_writes_whole_lines(tmp_path: Path) -> None:
    out, err = tmp_path / "out.jsonl", tmp_path / "e.jsonl"
    with ResultStore(out, err, fsync=True, fsync_interval_s=0.0) as store:
        store.open()
        store.write_bad_line(BadLine(4, "4", "line 4: nope"))
    assert orjson.loads(err.read_bytes())["error"]["line"] == 4
    assert out.stat().st_size == 0


def test_fsync_mode_syncs_the_directory_of_new_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new file's directory entry survives a crash only once its directory is synced."""
    results = tmp_path / "results"
    results.mkdir()
    out, err = results / "out.jsonl", tmp_path / "err.jsonl"
    synced: list[tuple[int, int]] = []  # (st_dev, st_ino) of each directory synced
    fsync = os.fsync

    def recording(fd: int) -> None:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            assert out.exists()  # after the files were created
            assert err.exists()
            synced.append((info.st_dev, info.st_ino))
        fsync(fd)

    monkeypatch.setattr(os, "fsync", recording)
    with ResultStore(out, err) as store:  # no fsync: no directory sync either
        store.open()
    assert synced == []
    out.unlink()
    err.unlink()
    with ResultStore(out, err, fsync=True) as store:
        store.open()
    assert sorted(synced) == sorted((d.st_dev, d.st_ino) for d in (results.stat(), tmp_path.stat()))
