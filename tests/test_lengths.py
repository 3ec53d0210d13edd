"""Length specs: parsing, the distributions they draw, per-request determinism, errors."""

from __future__ import annotations

import math
import pickle
import random
import re
from collections import Counter
from typing import TYPE_CHECKING

import numpy as np
import pytest

from engine.errors import ConfigError
from engine.loadtest import lengths
from engine.loadtest.lengths import LengthSpec, length_for, parse_lengths

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    Drawer = Callable[[LengthSpec], np.ndarray]

DRAWS = 20_000
NORMAL = "mean=512,stdev=128,min=32,max=2048"


def per_request(spec: LengthSpec, n: int = DRAWS, seed: int = 7) -> np.ndarray:
    return np.array([length_for(spec, seed, index, 1) for index in range(n)])


def by_sample(spec: LengthSpec, n: int = DRAWS, seed: int = 7) -> np.ndarray:
    return np.array(spec.sample(np.random.default_rng(seed), n))


DRAWERS = [pytest.param(per_request, id="length_for"), pytest.param(by_sample, id="sample")]


@pytest.mark.parametrize(
    ("text", "kind", "low", "high", "mean"),
    [
        pytest.param("512", "fixed", 512, 512, 512.0, id="fixed"),
        pytest.param(512, "fixed", 512, 512, 512.0, id="fixed-int"),
        pytest.param(" 256-1024 ", "uniform", 256, 1024, 640.0, id="uniform"),
        pytest.param("7 - 7", "uniform", 7, 7, 7.0, id="uniform-one-value"),
        pytest.param("stdev=128,mean=512", "normal", 1, None, None, id="normal-no-bounds"),
        pytest.param(
            "max=2048, min=32 ,stdev=128,mean=512", "normal", 32, 2048, None, id="normal-any-order"
        ),
    ],
)
def test_parse(text: str | int, kind: str, low: int, high: int | None, mean: float | None) -> None:
    spec = parse_lengths(text)
    assert (spec.kind, spec.low, spec.high) == (kind, low, high)
    assert str(spec) == str(text).strip()
    if mean is not None:
        assert spec.mean == mean
    assert spec.fixed == (low if low == high else None)
    assert pickle.loads(pickle.dumps(spec)) == spec  # noqa: S301 - our own bytes


def test_public_shows_kind_parameters_and_mean() -> None:
    spec = parse_lengths(NORMAL)
    assert spec.public() == {
        "kind": "normal",
        "spec": NORMAL,
        "mean": spec.mean,
        "min": 32,
        "max": 2048,
        "mu": 512.0,
        "sigma": 128.0,
    }
    assert parse_lengths("4-8").public() == {
        "kind": "uniform",
        "spec": "4-8",
        "mean": 6.0,
        "min": 4,
        "max": 8,
    }


@pytest.mark.parametrize("draw", DRAWERS)
def test_normal_draws_match_the_spec(draw: Drawer) -> None:
    spec = parse_lengths(NORMAL)
    values = draw(spec)
    standard_error = values.std() / math.sqrt(len(values))
    assert abs(values.mean() - spec.mean) < 3 * standard_error
    assert abs(values.std() - 128) < 0.05 * 128  # the clip at 32 and 2048 is 3.75 sd out
    assert values.min() >= 32
    assert values.max() <= 2048
    assert values.dtype.kind == "i"


@pytest.mark.parametrize("draw", DRAWERS)
def test_clipped_normal_mean_is_the_clipped_mean(draw: Drawer) -> None:
    """Clipped hard on both sides (and rounded), the mean moves off `mean=`: the spec's `.mean`
    follows it."""
    spec = parse_lengths("mean=10,stdev=20,max=30")
    values = draw(spec)
    assert values.min() == 1
    assert values.max() == 30
    assert spec.mean > 12  # the clip at 1 lifts it more than the clip at 30 lowers it
    assert abs(values.mean() - spec.mean) < 3 * values.std() / math.sqrt(len(values))


def test_clipped_normal_mean_by_brute_force() -> None:
    spec = parse_lengths("mean=3.3,stdev=1.7,min=2,max=6")
    cdf = [0.5 * math.erfc(-(k + 0.5 - 3.3) / (1.7 * math.sqrt(2))) for k in range(1, 7)]
    # P(round(clip(X)) = k): below 2.5 -> 2, from 5.5 on -> 6
    probabilities = {2: cdf[1], 3: cdf[2] - cdf[1], 4: cdf[3] - cdf[2], 5: cdf[4] - cdf[3]}
    probabilities[6] = 1 - cdf[4]
    assert spec.mean == pytest.approx(sum(k * p for k, p in probabilities.items()), abs=1e-12)


def test_wide_normal_uses_the_closed_form_within_its_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    exact = parse_lengths("mean=300,stdev=200,min=50,max=700").mean
    monkeypatch.setattr(lengths, "_EXACT_TERMS", 0)
    closed = parse_lengths("mean=300,stdev=200,min=50,max=700").mean
    assert exact != closed
    assert abs(exact - closed) < 0.017 / 200 * 2


@pytest.mark.parametrize("draw", DRAWERS)
def test_uniform_covers_both_ends_and_nothing_outside(draw: Drawer) -> None:
    spec = parse_lengths("100-120")
    values = draw(spec)
    assert set(values.tolist()) == set(range(100, 121))
    assert abs(values.mean() - spec.mean) < 3 * values.std() / math.sqrt(len(values))


def test_fixed_draws_one_value() -> None:
    spec = parse_lengths("64")
    assert set(per_request(spec, 100).tolist()) == {64}
    assert set(by_sample(spec, 100).tolist()) == {64}


@pytest.mark.parametrize("draw", DRAWERS)
def test_histogram_frequencies_follow_the_counts(tmp_path: Path, draw: Drawer) -> None:
    counts = {100: 1, 200: 3, 400: 6, 800: 0}
    path = tmp_path / "lengths.json"
    path.write_text('{"100": 1, "200": 3, "400": 6, "800": 0}')
    spec = parse_lengths(str(path))
    assert spec.kind == "histogram"
    assert spec.mean == (100 * 1 + 200 * 3 + 400 * 6) / 10
    assert (spec.low, spec.high) == (100, 400)  # a zero count is never drawn
    seen = Counter(draw(spec).tolist())
    assert set(seen) == {100, 200, 400}
    expected = {length: DRAWS * count / 10 for length, count in counts.items() if count}
    chi_square = sum((seen[k] - e) ** 2 / e for k, e in expected.items())
    assert chi_square < 13.8  # 2 degrees of freedom, p = 0.001


@pytest.mark.parametrize(
    ("name", "content"),
    [
        pytest.param("h.json", "[[10, 2], [20, 2], [10, 1]]", id="json-pairs"),
        pytest.param("h.json", "[10, 20, 10, 20, 10]", id="json-observed-lengths"),
        pytest.param("h.csv", "length,count\n10,3\n\n20,2\n", id="csv-header"),
        pytest.param("h.csv", "# from the logs\n10, 3\n20, 2", id="csv-bare"),
        pytest.param("h.txt", "10,1.5\n20,2\n10,1.5\n", id="other-suffix-is-csv"),
    ],
)
def test_histogram_formats(tmp_path: Path, name: str, content: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    spec = parse_lengths(str(path))
    assert spec.lengths == (10, 20)
    assert spec.mean == pytest.approx((10 * 3 + 20 * 2) / 5)
    assert str(spec) == str(path)
    assert pickle.loads(pickle.dumps(spec)) == spec  # noqa: S301 - our own bytes


def test_length_for_is_a_function_of_seed_index_and_salt() -> None:
    spec = parse_lengths(NORMAL)
    run = [length_for(spec, 3, index, 1) for index in range(1000)]
    # two workers taking every other request draw exactly the one-process run
    workers = {index: length_for(spec, 3, index, 1) for index in range(1, 1000, 2)}
    workers |= {index: length_for(spec, 3, index, 1) for index in range(0, 1000, 2)}
    assert [workers[index] for index in range(1000)] == run
    assert len(set(run)) > 200
    assert [length_for(spec, 4, index, 1) for index in range(1000)] != run
    assert [length_for(spec, 3, index, 2) for index in range(1000)] != run
    assert [length_for(spec, -3, index, 1) for index in range(1000)] != run


def test_sample_is_seeded() -> None:
    spec = parse_lengths("1-1000000")
    assert by_sample(spec, 50).tolist() == by_sample(spec, 50).tolist()
    assert by_sample(spec, 50).tolist() != by_sample(spec, 50, seed=8).tolist()


def test_draw_takes_a_stdlib_generator() -> None:
    spec = parse_lengths("5-9")
    rng = random.Random(1)
    assert {spec.draw(rng) for _ in range(500)} == set(range(5, 10))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty length spec"),
        ("0", "'0' must be >= 1"),
        ("-5", "'-5' must be >= 1"),
        ("12.5", "'12.5' is not a whole number"),
        ("10-5", "'10-5': low 10 is above high 5"),
        ("0-5", "range low '0' must be >= 1"),
        ("mean=512", "a normal needs stdev="),
        ("stdev=3", "a normal needs mean="),
        ("mean=512,stdev=128,foo=1", "unknown part 'foo=1'"),
        ("mean=512,stdev", "unknown part 'stdev'"),
        ("mean=abc,stdev=1", "mean='abc' is not a number"),
        ("mean=5,stdev=nan", "stdev='nan' is not a number"),
        ("mean=512,stdev=0", "stdev must be > 0"),
        ("mean=5,stdev=1,min=0", "min '0' must be >= 1"),
        ("mean=5,stdev=1,max=2.5", "max '2.5' is not a whole number"),
        ("mean=5,stdev=1,min=10,max=5", "min 10 is above max 5"),
        ("mean=5,stdev=1,mean=6", "mean given twice"),
        ("no/such/file.csv", "no/such/file.csv: cannot read the length histogram"),
        ("word", "word: cannot read the length histogram"),
    ],
)
def test_bad_specs_say_what_and_where(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_lengths(text)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("h.csv", "length,count\n10,3\n20,-1\n", "h.csv:3: count '-1' is negative"),
        ("h.csv", "10,3\n0,1\n", "h.csv:2: length '0' must be >= 1"),
        ("h.csv", "10,3\n12.5,1\n", "h.csv:2: length '12.5' is not a whole number"),
        ("h.csv", "10,3\n20,many\n", "h.csv:2: count 'many' is not a number"),
        ("h.csv", "10,3\nlength,count\n", "h.csv:2: length 'length' is not a whole number"),
        ("h.csv", "10,3,1\n", "h.csv:1: expected two columns"),
        ("h.csv", "length,count\n", "h.csv: the histogram is empty"),
        ("h.csv", "10,0\n20,0\n", "h.csv: the histogram is empty"),
        ("h.json", '{"10": 3, "20": -2}', "h.json: key '20': count -2 is negative"),
        ("h.json", '{"ten": 3}', "h.json: key 'ten': length 'ten' is not a whole number"),
        ("h.json", "[[10, 3], [20]]", "h.json: item 2: expected [length, count]"),
        ("h.json", "[[10, 3], [0, 1]]", "h.json: item 2: length 0 must be >= 1"),
        ("h.json", '{"10": 3,\n "20" 4}', "h.json:2:7: not JSON"),
        ("h.json", '"512"', "h.json: a histogram is an object or a list"),
        ("h.json", "[]", "h.json: the histogram is empty"),
    ],
)
def test_bad_histograms_name_the_file_and_line(
    tmp_path: Path, name: str, content: str, message: str
) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        parse_lengths(str(path))
    assert str(tmp_path) in str(info.value)
