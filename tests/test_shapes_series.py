"""Rate series and ramps: parsing, each segment's share of arrivals, the worker split."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from engine.errors import ConfigError
from engine.loadtest.config import LoadConfig
from engine.loadtest.shapes import (
    Segment,
    open_schedule,
    parse_rate_series,
    peak_rate,
    series_length_s,
    series_offsets,
)

THREE = "10:3s,50:2s,5:1m"  # 30 + 100 + 300 requests
EDGES_S = (0.0, 3.0, 5.0, 65.0)


def series_config(series: str, **fields: Any) -> LoadConfig:
    fields = {"duration_s": 1000.0, "warmup_s": 0.0} | fields
    return LoadConfig("http://127.0.0.1:1", rate_series=series, **fields)


def per_segment(offsets: list[float], edges: tuple[float, ...] = EDGES_S) -> list[int]:
    counts, _ = np.histogram(offsets, bins=edges)
    return [int(count) for count in counts]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("10:30s", (Segment(10, 10, 30),), id="step"),
        pytest.param("10:30", (Segment(10, 10, 30),), id="bare-seconds"),
        pytest.param("2.5:1m", (Segment(2.5, 2.5, 60),), id="minutes"),
        pytest.param("4:500ms", (Segment(4, 4, 0.5),), id="milliseconds"),
        pytest.param("10-50:60s", (Segment(10, 50, 60),), id="ramp"),
        pytest.param(
            " 10:30s , 10-50 : 1M,0:5s",
            (Segment(10, 10, 30), Segment(10, 50, 60), Segment(0, 0, 5)),
            id="mixed-with-spaces-and-a-pause",
        ),
    ],
)
def test_parse_rate_series(text: str, expected: tuple[Segment, ...]) -> None:
    assert parse_rate_series(text) == expected


@pytest.mark.parametrize(
    ("text", "named"),
    [
        pytest.param("", "''", id="empty"),
        pytest.param("10:30s,,5:1s", "''", id="empty-item"),
        pytest.param("10:30s,fast:1m", "'fast:1m'", id="not-a-number"),
        pytest.param("10", "'10'", id="no-duration"),
        pytest.param("10:0s", "'10:0s'", id="zero-duration"),
        pytest.param("10:5h", "'10:5h'", id="unknown-unit"),
        pytest.param("-5:10s", "'-5:10s'", id="negative-rate"),
        pytest.param("10-:10s", "'10-:10s'", id="half-a-ramp"),
        pytest.param("0:10s,0-0:5s", "never sends", id="all-zero"),
    ],
)
def test_bad_series_names_the_item(text: str, named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        parse_rate_series(text)


def test_constant_arrivals_give_each_segment_its_rate_times_duration() -> None:
    offsets = [a.offset_s for a in open_schedule(series_config(THREE, arrival="constant"))]
    assert per_segment(offsets) == [30, 100, 300]
    assert offsets[:3] == pytest.approx([0.0, 0.1, 0.2])
    assert offsets[30] == pytest.approx(3.0)  # a segment's first arrival on its boundary


def test_poisson_arrivals_give_each_segment_its_rate_within_four_sigma() -> None:
    offsets = [a.offset_s for a in open_schedule(series_config(THREE, seed=7))]
    for count, expected in zip(per_segment(offsets), (30, 100, 300), strict=True):
        assert abs(count - expected) <= 4 * math.sqrt(expected)


def test_a_ramps_count_is_its_integral_and_it_rises() -> None:
    segments = parse_rate_series("10-50:60s")
    offsets = list(series_offsets(segments, "constant", 1.0, 0))
    assert len(offsets) == 1800  # (10 + 50) / 2 x 60
    # Λ(30 s) = 10·30 + (40/60)·30²/2 = 600: the second half sends twice the first.
    assert per_segment(offsets, (0.0, 30.0, 60.0)) == [600, 1200]
    assert np.all(np.diff(offsets) > 0)
    poisson = list(series_offsets(segments, "poisson", 1.0, 3))
    assert abs(len(poisson) - 1800) <= 4 * math.sqrt(1800)


def test_ramps_from_and_to_zero_and_pauses() -> None:
    offsets = list(series_offsets(parse_rate_series("0-20:10s,0:5s,20-0:10s"), "constant", 1, 0))
    assert per_segment(offsets, (0.0, 10.0, 15.0, 25.0)) == [100, 0, 100]
    assert offsets[1] == pytest.approx(math.sqrt(1.0))  # Λ(t) = t² on the first ramp
    assert max(offsets) < 25.0


def test_burstiness_is_kept_at_every_rate() -> None:
    segments = parse_rate_series("500:20s")
    gaps = np.diff(list(series_offsets(segments, "poisson", 0.25, 1)))
    assert np.std(gaps) / np.mean(gaps) == pytest.approx(2.0, rel=0.1)  # CV = 1/sqrt(shape)


def test_the_series_ends_the_schedule_or_the_duration_does() -> None:
    whole = list(open_schedule(series_config("10:2s", arrival="constant", duration_s=60)))
    assert len(whole) == 20
    assert series_length_s(parse_rate_series(THREE)) == 65.0
    cut = list(open_schedule(series_config(THREE, arrival="constant", warmup_s=1, duration_s=3)))
    assert len(cut) == 30 + 50  # to 4 s: all of the first segment, half of the second
    assert [a.warmup for a in cut[:11]] == [True] * 10 + [False]  # offsets < 1 s
    counted = list(open_schedule(series_config(THREE, arrival="constant", requests=5)))
    assert len(counted) == 5


def test_workers_together_send_the_one_worker_schedule() -> None:
    config = series_config("5:1s,40-80:2s", warmup_s=0.5)
    one = [(a.index, a.offset_s, a.warmup) for a in open_schedule(config)]
    three = sorted(
        (a.index, a.offset_s, a.warmup) for w in range(3) for a in open_schedule(config, w, 3)
    )
    assert one == three
    assert len(one) > 100


def test_peak_rate_sizes_the_load_by_its_busiest_moment() -> None:
    assert series_config("10:1s,5-80:2s,20:1s").rate == 80.0
    assert peak_rate(LoadConfig("http://127.0.0.1:1", rate=7.0)) == 7.0
    with pytest.raises(ConfigError, match="never sends"):
        series_config("0:1s")


def test_a_plain_rate_schedule_carries_no_lengths() -> None:
    config = LoadConfig("http://127.0.0.1:1", rate=50, duration_s=1, warmup_s=0)
    arrivals = list(open_schedule(config))
    assert {(a.input_tokens, a.output_tokens) for a in arrivals} == {(None, None)}
