"""Smoke test of the benchmark suite: `run_all.py --quick` runs and writes every figure, and
the batch and mock benchmarks run at tiny sizes.

No timing assertions: CI machines are noisy. This checks that every client and every figure
is present, that both paths of the hot path are reported, and that the plots are real PNG
files.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import engine
from engine._compiled import HOT

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


def run_benchmark(script: str, *argv: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *argv],
        capture_output=True,
        text=True,
        timeout=200,
        check=False,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
@pytest.mark.timeout(220)
def test_batch_reports_both_paths(tmp_path: Path) -> None:
    out = tmp_path / "batch.json"
    argv = ("--requests", "40", "--tokens", "5", "--concurrency", "8", "--repeats", "1")
    proc = run_benchmark("batch.py", *argv, "--out", str(out))
    result = json.loads(out.read_text())["result"]
    rows = result["rows"]
    assert list(rows) == ["bare", "batch", "bare-pure", "batch-pure"]
    for name, row in rows.items():
        # the default path runs as this process does (same build, same environment)
        assert row["compiled"] is (engine.COMPILED and not name.endswith("-pure")), name
        assert row["req_per_s"]["max"] > 0, name
        assert row["cpu_us_per_request"]["min"] > 0, name
        assert f"  {name} " in proc.stdout
    assert set(result["ratios"]["batch_over_bare_cpu"]) == {"compiled", "pure"}
    for key in ("pure_over_compiled_cpu", "pure_over_compiled_req_per_s"):
        assert set(result["ratios"][key]) == {"bare", "batch"}
    assert result["compiled_modules"]["pure"] == []
    assert "batch / bare CPU per request: " in proc.stdout
    assert "pure / compiled CPU per request" in proc.stdout


@pytest.mark.slow
@pytest.mark.timeout(220)
def test_mock_server_checks_both_paths(tmp_path: Path) -> None:
    out = tmp_path / "mock_server.json"
    argv = ("--figure", "1", "--streams", "5", "--tokens", "20", "--seconds", "0.5")
    proc = run_benchmark("mock_server.py", *argv, "--out", str(out))
    stored = json.loads(out.read_text())
    paths = stored["paths"]["result"]
    assert paths["same_on_both_paths"] is True
    assert paths["pure_path_ran_pure"] is True
    assert paths["hot_calls_while_serving_pure"] == {}
    assert paths["paths"]["pure"]["calls_into_mock"] > 0  # the hook saw the server
    compiled = set(paths["mock_compiled_modules"])
    assert compiled >= set(HOT) if engine.COMPILED else not compiled
    figure = stored["figure_1"]["result"]
    assert figure["failed"] == 0
    assert figure["mock_process_loaded_compiled"] is engine.COMPILED
    assert "its figures are the same on both paths" in proc.stdout
