"""Smoke test of the benchmark suite: `run_all.py --quick` runs and writes every figure.

No timing assertions: CI machines are noisy. This checks that every client and every figure
is present, and that the plots are real PNG files.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CLIENTS = {"engine-stream", "engine-run", "openai", "httpx-sse", "aiohttp-naive", "floor"}
CPU_CLIENTS = CLIENTS | {"engine-stream-pure"}  # both paths of the hot path, side by side
ENGINE_LINES = {"engine", "engine-events", "engine-pure", "engine-events-pure"}
PARSERS = {"httpx-sse", "openai", "aiohttp-lines"} | ENGINE_LINES
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("bench")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run_all.py"), "--quick", "--out", str(out)],
        capture_output=True,
        timeout=300,
        check=False,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-3000:]
    return json.loads((out / "results.json").read_text()), out


@pytest.mark.slow
@pytest.mark.timeout(320)
def test_machine_facts(quick_run: tuple[dict, Path]) -> None:
    machine = quick_run[0]["machine"]
    for key in (
        "cpu",
        "cores",
        "python",
        "packages",
        "load_average_1_5_15",
        "date",
        "load_average_after",
    ):
        assert machine[key] is not None, key
    assert machine["packages"]["orjson"]


@pytest.mark.slow
@pytest.mark.timeout(320)
def test_parser_figures(quick_run: tuple[dict, Path]) -> None:
    parser = quick_run[0]["parser"]
    assert len(parser["cases"]) == 8
    for case in parser["cases"]:
        assert set(case["results"]) == PARSERS
        for res in case["results"].values():
            assert res["us_per_event"]["min"] > 0
            assert res["mb_per_s_at_min"] > 0
        assert set(case["ratios_vs_engine"]) == PARSERS - ENGINE_LINES
        assert set(case["pure_over_compiled"]) == {"engine", "engine-events"}
    assert set(parser["budget"]) == {"lf_coalesced_us_per_event", "crlf_coalesced_us_per_event"}


@pytest.mark.slow
@pytest.mark.timeout(320)
def test_pipeline_cpu_figures(quick_run: tuple[dict, Path]) -> None:
    cpu = quick_run[0]["pipeline_cpu"]
    assert set(cpu["clients"]) == CPU_CLIENTS
    assert cpu["clients"]["engine-stream-pure"]["compiled"] is False
    for client, res in cpu["clients"].items():
        assert res["us_per_event"] is not None, (client, res["errors"])
        assert res["events_per_s"]["median"] > 0
        assert res["streams_failed"] == 0, (client, res["errors"])
        assert res["tokens_exact"], client
    assert set(cpu["ratios"]) == (CPU_CLIENTS - {"engine-stream"}) | {"budget"}
    assert set(cpu["ratios"]["budget"]) == {
        "engine_us_per_event",
        "engine_over_naive",
        "engine_pure_over_naive",
    }


@pytest.mark.slow
@pytest.mark.timeout(320)
def test_ttft_figures(quick_run: tuple[dict, Path]) -> None:
    results = quick_run[0]
    scaling = results["ttft_concurrency"]
    assert set(scaling["clients"]) == CLIENTS
    for points in scaling["clients"].values():
        assert [int(level) for level in points] == scaling["levels"]
        assert "error_ms_p50" in points[str(scaling["levels"][0])]
    accuracy = results["ttft_accuracy"]
    assert set(accuracy["clients"]) == CLIENTS
    for client, res in accuracy["clients"].items():
        assert {"error_ms_p50", "error_ms_p99"} <= set(res), (client, res)


@pytest.mark.slow
@pytest.mark.timeout(320)
def test_plots_are_pngs(quick_run: tuple[dict, Path]) -> None:
    out = quick_run[1]
    for name in ("cpu_per_event.png", "ttft_error.png", "parser.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG_MAGIC), name
        assert len(data) > 10_000, name
