"""Trace replay: Mooncake JSON Lines and BurstGPT CSV, their errors, and the replayed schedule."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import pytest

from engine.errors import ConfigError
from engine.loadtest.config import LoadConfig
from engine.loadtest.shapes import open_schedule
from engine.loadtest.trace import MISSING, load_trace

if TYPE_CHECKING:
    from pathlib import Path

MOONCAKE = (
    '{"timestamp": 1000, "input_length": 6955, "output_length": 52, "hash_ids": [0, 1, 2]}\n'
    '{"timestamp": 1000, "input_length": 6472, "output_length": 26, "hash_ids": [0, 1, 3]}\n'
    "\n"
    '{"timestamp": 3500, "input_length": 120, "output_length": 4, "hash_ids": []}\n'
    '{"timestamp": 1250, "input_length": 300, "output_length": 9}\n'
)
BURSTGPT = (
    "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
    "5,ChatGPT,472,18,490,Conversation log\n"
    "45,ChatGPT,1087,0,1087,Conversation log\n"  # a failed request: kept, asks for 1 token
    "118,GPT-4,417,276,693,API log\n"
)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def trace_config(path: Path, **fields: Any) -> LoadConfig:
    fields = {"duration_s": 1000.0, "warmup_s": 0.0} | fields
    return LoadConfig("http://127.0.0.1:1", trace_file=str(path), **fields)


def test_mooncake_jsonl(tmp_path: Path) -> None:
    trace = load_trace(write(tmp_path, "mooncake.jsonl", MOONCAKE))
    assert len(trace) == 4
    # Sorted by time (the 1250 ms row moves up; the two at 1000 ms keep their order), from 0.
    assert trace.offsets_s.tolist() == [0.0, 0.0, 0.25, 2.5]
    assert trace.input_tokens.tolist() == [6955, 6472, 300, 120]
    assert trace.output_tokens.tolist() == [52, 26, 9, 4]
    assert trace.hash_ids == ((0, 1, 2), (0, 1, 3), None, ())


@pytest.mark.parametrize(
    ("row", "offset_s", "lengths"),
    [
        pytest.param('{"timestamp_s": 2.5, "input_tokens": 7}', 2.5, (7, MISSING), id="seconds"),
        pytest.param('{"time": 2.5, "output_tokens": 3}', 2.5, (MISSING, 3), id="time"),
        pytest.param('{"timestamp": 2500, "input_length": 8.0}', 2.5, (8, MISSING), id="ms"),
    ],
)
def test_jsonl_spellings(
    tmp_path: Path, row: str, offset_s: float, lengths: tuple[int, int]
) -> None:
    trace = load_trace(write(tmp_path, "t.jsonl", '{"time": 0}\n' + row + "\n"))
    assert trace.offsets_s.tolist() == [0.0, offset_s]
    assert (int(trace.input_tokens[1]), int(trace.output_tokens[1])) == lengths
    assert trace.hash_ids is None


def test_burstgpt_csv_keeps_failed_requests(tmp_path: Path) -> None:
    path = write(tmp_path, "BurstGPT_1.csv", BURSTGPT)
    trace = load_trace(path)
    assert trace.offsets_s.tolist() == [0.0, 40.0, 113.0]
    assert trace.input_tokens.tolist() == [472, 1087, 417]
    assert trace.output_tokens.tolist() == [18, 0, 276]  # as recorded
    arrivals = list(open_schedule(trace_config(path)))
    assert [(a.input_tokens, a.output_tokens) for a in arrivals] == [
        (472, 18),
        (1087, 1),  # the failed request is sent, asking for the least an API takes
        (417, 276),
    ]


def test_replay_scales_the_clock_and_carries_the_lengths(tmp_path: Path) -> None:
    path = write(tmp_path, "mooncake.jsonl", MOONCAKE)
    arrivals = list(open_schedule(trace_config(path, trace_speedup=2.0)))
    assert [a.offset_s for a in arrivals] == [0.0, 0.0, 0.125, 1.25]
    assert [a.index for a in arrivals] == [0, 1, 2, 3]
    assert [(a.input_tokens, a.output_tokens) for a in arrivals] == [
        (6955, 52),
        (6472, 26),
        (300, 9),
        (120, 4),
    ]
    lengthless = write(tmp_path, "times.jsonl", '{"time": 0}\n{"time": 1}\n')
    assert {(a.input_tokens, a.output_tokens) for a in open_schedule(trace_config(lengthless))} == {
        (None, None)  # the workload decides
    }


def test_replay_warmup_duration_and_worker_split(tmp_path: Path) -> None:
    rows = "".join(
        f'{{"timestamp_s": {k * 0.1:.1f}, "input_tokens": {k + 1}}}\n' for k in range(50)
    )
    path = write(tmp_path, "even.jsonl", rows)
    config = trace_config(path, warmup_s=1.0, duration_s=2.0)
    one = [(a.index, a.offset_s, a.warmup, a.input_tokens) for a in open_schedule(config)]
    assert len(one) == 30  # offsets below 3 s: the duration ends the replay
    assert sum(warmup for _, _, warmup, _ in one) == 10
    three = sorted(
        (a.index, a.offset_s, a.warmup, a.input_tokens)
        for w in range(3)
        for a in open_schedule(config, w, 3)
    )
    assert one == three


def test_peak_rate_of_a_trace(tmp_path: Path) -> None:
    burst = "".join(f'{{"timestamp": {t}}}\n' for t in (0, 100, 200, 300, 400, 5000, 9000))
    path = write(tmp_path, "burst.jsonl", burst)
    assert trace_config(path).rate == 5.0  # five requests within its busiest second
    assert trace_config(path, trace_speedup=4.0).rate == 20.0
    sparse = write(tmp_path, "sparse.jsonl", '{"time": 0}\n{"time": 0.5}\n')
    assert trace_config(sparse).rate == 4.0  # the mean rate: 2 requests in 0.5 s
    single = write(tmp_path, "one.jsonl", '{"time": 3}\n')
    assert trace_config(single).rate == 1.0
    assert trace_config(single).rate_series is None


def test_a_trace_is_read_once_until_it_changes(tmp_path: Path) -> None:
    path = write(tmp_path, "t.jsonl", '{"time": 0}\n{"time": 1}\n')
    first = load_trace(path)
    assert load_trace(str(path)) is first
    path.write_text('{"time": 0}\n{"time": 1}\n{"time": 2}\n')
    os.utime(path, ns=(1, 1))  # a new modification time, whatever the clock's resolution
    assert len(load_trace(path)) == 3


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        pytest.param("a.jsonl", '{"time": 0}\n{"time": 1\n', r"a\.jsonl:2: not JSON", id="json"),
        pytest.param("a.jsonl", '{"time": 0}\n[1, 2]\n', r":2: expected a JSON object", id="list"),
        pytest.param("a.jsonl", '{"time": 0}\n\n{"input_tokens": 3}\n', r":3: no time", id="time"),
        pytest.param("a.jsonl", '{"time": "soon"}\n', r":1: time 'soon' is not a number", id="str"),
        pytest.param("a.jsonl", '{"time": true}\n', r":1: time True is not a number", id="bool"),
        pytest.param(
            "a.jsonl", '{"time": 0, "input_length": -4}\n', r":1: input_length -4 ", id="neg"
        ),
        pytest.param(
            "a.jsonl", '{"time": 0, "output_tokens": 2.5}\n', r":1: output_tokens 2.5 ", id="frac"
        ),
        pytest.param(
            "a.jsonl", '{"time": 0, "hash_ids": ["x"]}\n', r":1: hash_ids must be", id="hashes"
        ),
        pytest.param("a.jsonl", "\n\n", r"a\.jsonl: no requests", id="empty"),
        pytest.param(
            "b.csv", BURSTGPT.partition("\n")[0], r"b\.csv: no requests", id="header-only"
        ),
        pytest.param(
            "b.csv",
            BURSTGPT.replace("45,ChatGPT", "soon,ChatGPT"),
            r"b\.csv:3: Timestamp 'soon' is not a number",
            id="csv-time",
        ),
        pytest.param(
            "b.csv",
            BURSTGPT.replace("417,276", "417,-2"),
            r"b\.csv:4: Response tokens '-2' is not a whole number",
            id="csv-length",
        ),
        pytest.param("b.csv", BURSTGPT + "7,GPT-4\n", r"b\.csv:5: 2 fields", id="csv-short"),
        pytest.param("b.csv", "when,what\n1,2\n", r"b\.csv:1: not a trace.*Timestamp", id="hdr"),
        pytest.param("b.csv", BURSTGPT.replace("5,ChatGPT", "nan,ChatGPT"), r":2: ", id="nan"),
    ],
)
def test_bad_rows_name_the_file_and_line(
    tmp_path: Path, name: str, text: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_trace(write(tmp_path, name, text))


def test_a_missing_trace_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nowhere\.jsonl"):
        trace_config(tmp_path / "nowhere.jsonl")
