"""ServerMetricsScraper: exact series, rates and histogram deltas from a scripted /metrics.

A tiny aiohttp server on 127.0.0.1 answers /metrics from a script (one answer per GET, the last
one again once the script runs out): canned vLLM- and SGLang-style expositions whose counters
and histograms grow, failures in between, and the real llama-server's and vLLM's /metrics as
recorded in tests/real_servers/metrics/ (record_metrics.py). One test scrapes a live
llama-server when STREAM_ENGINE_REAL_SERVERS names one.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from engine.loadtest.servermetrics import (
    ServerMetricsScraper,
    build_document,
    metrics_url,
    snapshot,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Sequence

FIXTURES = Path(__file__).resolve().parent / "real_servers" / "metrics"
DEADLINE_S = 10.0
INTERVAL_S = 0.05
KEY = "sk-metrics-secret-0123456789"
SERVERS = dict(
    item.split("=", 1)
    for item in os.environ.get("STREAM_ENGINE_REAL_SERVERS", "").split(",")
    if "=" in item
)


# --- the scripted server ---------------------------------------------------------------------


@dataclass
class Stall:
    """An answer that never comes (until the server stops)."""


@dataclass
class Script:
    """What /metrics answers, GET after GET: text (200), an int (that status, KEY in the body)."""

    answers: Sequence[str | int | Stall]
    hits: int = 0
    authorization: list[str] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        self.authorization.append(request.headers.get("Authorization", ""))
        answer = self.answers[min(self.hits, len(self.answers) - 1)]
        self.hits += 1
        if isinstance(answer, Stall):
            await self.release.wait()
            return web.Response(status=503)
        if isinstance(answer, int):
            return web.Response(status=answer, text=f"internal error; you sent Bearer {KEY}")
        return web.Response(text=answer, content_type="text/plain")


@contextlib.asynccontextmanager
async def serving(*answers: str | int | Stall) -> AsyncIterator[tuple[str, Script]]:
    script = Script(answers)
    app = web.Application()
    app.router.add_get("/metrics", script.handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/metrics", script
    finally:
        script.release.set()
        await runner.cleanup()


async def until(condition: Callable[[], bool]) -> None:
    """Poll `condition` until it holds (a deadline, not a guess at how long it takes)."""
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, "condition not met before the deadline"
        await asyncio.sleep(0.005)


async def scrape_all(
    url: str,
    script: Script,
    *,
    headers: dict[str, str] | None = None,
    timeout_s: float | None = None,
) -> tuple[ServerMetricsScraper, int]:
    """Scrape until every scripted answer has been taken; origin = just after the first one."""
    async with ServerMetricsScraper(
        url, INTERVAL_S, headers=headers, timeout_s=timeout_s
    ) as scraper:
        origin = time.perf_counter_ns()
        await until(lambda: scraper.scrapes >= len(script.answers))
    return scraper, origin


def values(points: list[list[float]]) -> list[float]:
    return [v for _, v in points]


def rates_of(points: list[list[float]], totals: Sequence[float]) -> list[float]:
    """What the rate points must be: the increase over each interval / its length."""
    ts = [t for t, _ in points]
    return [(totals[i] - totals[i - 1]) / (ts[i] - ts[i - 1]) for i in range(1, len(ts))]


# --- canned expositions ----------------------------------------------------------------------

TTFT_LE = ("0.1", "0.5", "+Inf")


def vllm_text(step: int) -> str:
    """vLLM's names and layout (two engines, `_created` as separate gauges), growing by step."""
    lines = []

    def family(name: str, kind: str) -> None:
        lines.extend((f"# HELP {name} .", f"# TYPE {name} {kind}"))

    family("vllm:num_requests_running", "gauge")
    lines += [
        f'vllm:num_requests_running{{engine="{e}",model_name="m"}} {2 + e + step}.0' for e in (0, 1)
    ]
    family("vllm:num_requests_waiting", "gauge")
    lines += [
        f'vllm:num_requests_waiting{{engine="{e}",model_name="m"}} {step * e}.0' for e in (0, 1)
    ]
    family("vllm:kv_cache_usage_perc", "gauge")
    lines += [
        f'vllm:kv_cache_usage_perc{{engine="{e}",model_name="m"}} {0.1 * step + 0.2 * e}'
        for e in (0, 1)
    ]
    family("vllm:prompt_tokens_total", "counter")
    lines += [
        f'vllm:prompt_tokens_total{{engine="{e}",model_name="m"}} {100 * (e + 1) + 60 * step}'
        for e in (0, 1)
    ]
    family("vllm:prompt_tokens_created", "gauge")
    lines += [f'vllm:prompt_tokens_created{{engine="{e}",model_name="m"}} 1.7e9' for e in (0, 1)]
    family("vllm:generation_tokens_total", "counter")
    lines += [
        f'vllm:generation_tokens_total{{engine="{e}",model_name="m"}} {10 + 200 * step}'
        for e in (0, 1)
    ]
    for name in (
        "time_to_first_token_seconds",
        "inter_token_latency_seconds",
        "e2e_request_latency_seconds",
    ):
        family(f"vllm:{name}", "histogram")
        for e in (0, 1):
            base = 5 * (e + 1)  # observations before the run
            for i, le in enumerate(TTFT_LE):
                lines.append(
                    f'vllm:{name}_bucket{{engine="{e}",le="{le}",model_name="m"}} '
                    f"{base + (i + 1) * step}.0"
                )
            lines.append(f'vllm:{name}_count{{engine="{e}",model_name="m"}} {base + 3 * step}.0')
            lines.append(f'vllm:{name}_sum{{engine="{e}",model_name="m"}} {0.25 * (base + step)}')
    family("vllm:some_future_metric", "gauge")
    lines.append("vllm:some_future_metric 1.0")
    return "\n".join(lines) + "\n"


def sglang_text(step: int) -> str:
    """SGLang's names (two data-parallel ranks) as its production_metrics page shows them."""
    labels = [
        f'model_name="m",engine_type="unified",tp_rank="0",pp_rank="0",dp_rank="{d}"'
        for d in (0, 1)
    ]
    lines = []
    for name, kind, value in (
        ("sglang:num_running_reqs", "gauge", lambda d: 4 * step + d),
        ("sglang:num_queue_reqs", "gauge", lambda d: step),
        ("sglang:token_usage", "gauge", lambda d: 0.5 * d + 0.05 * step),
        ("sglang:gen_throughput", "gauge", lambda d: 123.0),
        ("sglang:prompt_tokens_total", "counter", lambda d: 1000 + 512 * step),
        ("sglang:generation_tokens_total", "counter", lambda d: 2000 + 64 * step * (d + 1)),
    ):
        lines += [f"# HELP {name} .", f"# TYPE {name} {kind}"]
        lines += [f"{name}{{{lab}}} {value(d)}" for d, lab in enumerate(labels)]
    for name in (
        "time_to_first_token_seconds",
        "inter_token_latency_seconds",
        "time_per_output_token_seconds",
        "e2e_request_latency_seconds",
    ):
        lines += [f"# HELP sglang:{name} .", f"# TYPE sglang:{name} histogram"]
        for d, lab in enumerate(labels):
            # time_per_output_token has other counts: it must not be taken for the ITL
            grow = 10 * step if name == "time_per_output_token_seconds" else step * (d + 1)
            lines.append(f"sglang:{name}_sum{{{lab}}} {0.5 * grow}")
            for i, le in enumerate(("0.02", "0.04", "+Inf")):
                lines.append(f'sglang:{name}_bucket{{le="{le}",{lab}}} {grow * (i + 1)}.0')
            lines.append(f"sglang:{name}_count{{{lab}}} {grow * 3}.0")
    return "\n".join(lines) + "\n"


# --- scraping canned servers -----------------------------------------------------------------


async def test_vllm_style_series_rates_and_histogram_deltas_are_exact() -> None:
    async with serving(*(vllm_text(s) for s in range(4))) as (url, script):
        scraper, origin = await scrape_all(url, script)
    doc = scraper.document(origin)
    assert doc["server"] == "vllm"
    assert doc["failed"] == 0
    assert doc["errors"] == []
    snaps = scraper._tally.snaps
    steps = [0, 1, 2, 3] + [3] * (len(snaps) - 4)  # the script's last answer, again
    assert doc["scrapes"] == len(snaps) >= 5  # the one on entry, the loop's, the one on exit
    series = doc["series"]
    # t_s: each scrape's stamp from the origin; the baseline came before it
    assert [t for t, _ in series["requests_running"]] == [(s.t_ns - origin) / 1e9 for s in snaps]
    assert series["requests_running"][0][0] < 0 < series["requests_running"][1][0]
    assert values(series["requests_running"]) == [5 + 2 * s for s in steps]  # summed engines
    assert values(series["requests_waiting"]) == steps
    assert values(series["kv_cache_usage"]) == pytest.approx(
        [0.1 * s + 0.1 for s in steps], rel=1e-12
    )  # averaged: a fraction, not a count
    assert values(series["prompt_tokens_per_s"]) == pytest.approx(
        rates_of(series["requests_running"], [300 + 120 * s for s in steps]), rel=1e-9
    )
    assert values(series["generation_tokens_per_s"]) == pytest.approx(
        rates_of(series["requests_running"], [20 + 400 * s for s in steps]), rel=1e-9
    )
    assert values(series["generation_tokens_per_s"])[0] > 0
    # from the first scrape (the last one at or before the origin) to the last: step 0 -> 3
    for name in ("server_ttft_s", "server_itl_s", "server_e2e_s"):
        hist = doc["histograms"][name]
        assert hist["le"] == [0.1, 0.5, "+Inf"]
        assert hist["counts"] == [6, 6, 6]  # per bucket: 3 new per bucket and engine
        assert hist["count"] == 18
        assert hist["sum"] == pytest.approx(1.5)
        assert hist["from_s"] == series["requests_running"][0][0]
        assert hist["to_s"] == series["requests_running"][-1][0]
    assert doc["sources"] == {
        "requests_running": "vllm:num_requests_running",
        "requests_waiting": "vllm:num_requests_waiting",
        "kv_cache_usage": "vllm:kv_cache_usage_perc",
        "prompt_tokens_per_s": "vllm:prompt_tokens_total",
        "generation_tokens_per_s": "vllm:generation_tokens_total",
        "server_ttft_s": "vllm:time_to_first_token_seconds",
        "server_itl_s": "vllm:inter_token_latency_seconds",
        "server_e2e_s": "vllm:e2e_request_latency_seconds",
    }
    assert {"vllm:some_future_metric", "vllm:prompt_tokens_created", "vllm:prompt_tokens"} <= set(
        doc["raw_names"]
    )
    orjson.dumps(doc)  # JSON-ready as it is


async def test_histograms_count_from_the_last_scrape_before_the_origin() -> None:
    async with serving(*(vllm_text(s) for s in range(4))) as (url, script):
        scraper, _ = await scrape_all(url, script)
    second = scraper._tally.snaps[1].t_ns  # step 1: the window started here
    doc = scraper.document(second + 1)
    assert doc["histograms"]["server_ttft_s"]["counts"] == [4, 4, 4]  # step 1 -> 3
    assert doc["histograms"]["server_ttft_s"]["from_s"] == pytest.approx(-1e-9)


async def test_sglang_style_names_and_label_sets() -> None:
    async with serving(*(sglang_text(s) for s in range(3))) as (url, script):
        scraper, origin = await scrape_all(url, script)
    doc = scraper.document(origin)
    assert doc["server"] == "sglang"
    steps = [0, 1, 2] + [2] * (doc["scrapes"] - 3)
    series = doc["series"]
    assert values(series["requests_running"]) == [8 * s + 1 for s in steps]
    assert values(series["requests_waiting"]) == [2 * s for s in steps]
    assert values(series["kv_cache_usage"]) == pytest.approx([0.25 + 0.05 * s for s in steps])
    assert values(series["prompt_tokens_per_s"]) == pytest.approx(
        rates_of(series["requests_running"], [2000 + 1024 * s for s in steps]), rel=1e-9
    )
    assert values(series["generation_tokens_per_s"]) == pytest.approx(
        rates_of(series["requests_running"], [4000 + 192 * s for s in steps]), rel=1e-9
    )
    itl = doc["histograms"]["server_itl_s"]
    assert doc["sources"]["server_itl_s"] == "sglang:inter_token_latency_seconds"
    assert itl["le"] == [0.02, 0.04, "+Inf"]
    assert itl["counts"] == [6, 6, 6]  # dp0 grew 2 per bucket, dp1 4
    assert itl["count"] == 18
    assert itl["sum"] == pytest.approx(3.0)
    assert "sglang:gen_throughput" in doc["raw_names"]


async def test_failed_scrapes_are_counted_and_the_run_goes_on() -> None:
    headers = {"Authorization": f"Bearer {KEY}"}
    async with serving(
        vllm_text(0), 500, "<html>not metrics</html>", vllm_text(1), vllm_text(2)
    ) as (url, script):
        scraper, origin = await scrape_all(url, script, headers=headers)
    doc = scraper.document(origin)
    assert set(script.authorization) == {f"Bearer {KEY}"}  # sent on every scrape
    assert doc["failed"] == 2
    assert doc["scrapes"] == len(scraper._tally.snaps) + 2
    assert len(doc["errors"]) == 2
    assert doc["errors"][0].startswith("HTTP 500: internal error; you sent [redacted]")
    assert doc["errors"][1].startswith("not a Prometheus exposition")
    steps = [0, 1, 2] + [2] * (len(scraper._tally.snaps) - 3)
    running = doc["series"]["requests_running"]
    assert values(running) == [5 + 2 * s for s in steps]
    # the rate across the gap covers both failed intervals
    assert values(doc["series"]["prompt_tokens_per_s"]) == pytest.approx(
        rates_of(running, [300 + 120 * s for s in steps]), rel=1e-9
    )
    assert doc["histograms"]["server_ttft_s"]["count"] == 12
    assert KEY not in orjson.dumps(doc).decode()


async def test_a_refused_connection_is_an_error_not_an_exception() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with ServerMetricsScraper(
        f"http://127.0.0.1:{port}/metrics", INTERVAL_S, headers={"Authorization": f"Bearer {KEY}"}
    ) as scraper:
        await until(lambda: scraper.scrapes >= 3)
    doc = scraper.document(0)
    assert doc["failed"] == doc["scrapes"] >= 4
    assert len(doc["errors"]) == 1  # the same message is kept once
    assert "ClientConnectorError" in doc["errors"][0]
    assert doc["server"] == "unknown"
    assert doc["series"] == {}
    assert doc["histograms"] == {}
    assert doc["raw_names"] == []
    assert KEY not in orjson.dumps(doc).decode()


async def test_a_scrape_that_hangs_times_out_and_the_next_one_counts() -> None:
    async with serving(vllm_text(0), Stall(), vllm_text(1)) as (url, script):
        scraper, origin = await scrape_all(url, script, timeout_s=0.2)
    doc = scraper.document(origin)
    assert doc["failed"] == 1
    assert doc["errors"] == ["no answer within 0.2 s"]
    assert values(doc["series"]["requests_running"])[:2] == [5, 7]


async def test_the_url_keeps_no_credentials() -> None:
    async with serving(vllm_text(0)) as (url, _):
        with_user = url.replace("http://", f"http://user:{KEY}@")
        async with ServerMetricsScraper(with_user, INTERVAL_S) as scraper:
            pass
    doc = scraper.document(0)
    assert doc["url"] == url
    assert KEY not in orjson.dumps(doc).decode()


def test_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match="interval_s"):
        ServerMetricsScraper("http://127.0.0.1:1/metrics", 0)


def test_metrics_url_from_the_base_url() -> None:
    assert metrics_url("http://127.0.0.1:8000/v1") == "http://127.0.0.1:8000/metrics"
    assert metrics_url("http://127.0.0.1:8080/v1/") == "http://127.0.0.1:8080/metrics"
    assert metrics_url("http://h:30000") == "http://h:30000/metrics"


# --- the pure parts --------------------------------------------------------------------------


def test_a_counter_reset_counts_from_zero() -> None:
    text = "# TYPE vllm:generation_tokens_total counter\nvllm:generation_tokens_total {}\n"
    snaps = [
        snapshot(text.format(v), t)
        for v, t in ((1000, 0), (1500, 1_000_000_000), (200, 3_000_000_000))
    ]
    doc = build_document(snaps, origin_ns=0)
    assert doc["series"]["generation_tokens_per_s"] == [[1.0, 500.0], [3.0, 100.0]]


def test_label_sets_with_different_buckets_merge_on_the_union() -> None:
    def text(a: int, b: int) -> str:
        return (
            "# TYPE vllm:e2e_request_latency_seconds histogram\n"
            f'vllm:e2e_request_latency_seconds_bucket{{engine="0",le="1.0"}} {a}\n'
            f'vllm:e2e_request_latency_seconds_bucket{{engine="0",le="+Inf"}} {2 * a}\n'
            f'vllm:e2e_request_latency_seconds_count{{engine="0"}} {2 * a}\n'
            f'vllm:e2e_request_latency_seconds_sum{{engine="0"}} {a}\n'
            f'vllm:e2e_request_latency_seconds_bucket{{engine="1",le="2.0"}} {b}\n'
            f'vllm:e2e_request_latency_seconds_bucket{{engine="1",le="+Inf"}} {b}\n'
            f'vllm:e2e_request_latency_seconds_count{{engine="1"}} {b}\n'
            f'vllm:e2e_request_latency_seconds_sum{{engine="1"}} {b}\n'
        )

    doc = build_document([snapshot(text(1, 1), 0), snapshot(text(4, 3), 10)], origin_ns=0)
    hist = doc["histograms"]["server_e2e_s"]
    # <=1: 3 (engine 0); <=2: 3 + 2 (engine 1 lands in (1, 2]); +Inf: engine 0's other 3
    assert hist["le"] == [1.0, 2.0, "+Inf"]
    assert hist["counts"] == [3, 2, 3]
    assert hist["count"] == 8 == sum(hist["counts"])
    assert hist["sum"] == 5.0


def test_a_histogram_that_appears_mid_run_counts_from_zero() -> None:
    hist = (
        "# TYPE sglang:time_to_first_token_seconds histogram\n"
        'sglang:time_to_first_token_seconds_bucket{le="0.1"} 2\n'
        'sglang:time_to_first_token_seconds_bucket{le="+Inf"} 3\n'
        "sglang:time_to_first_token_seconds_count 3\n"
        "sglang:time_to_first_token_seconds_sum 0.4\n"
    )
    gauge = "# TYPE sglang:num_running_reqs gauge\nsglang:num_running_reqs 1\n"
    doc = build_document([snapshot(gauge, 0), snapshot(gauge + hist, 5)], origin_ns=0)
    assert doc["histograms"]["server_ttft_s"]["counts"] == [2, 1]
    assert doc["histograms"]["server_ttft_s"]["sum"] == 0.4


def test_non_finite_gauges_are_left_out() -> None:
    text = "# TYPE vllm:kv_cache_usage_perc gauge\nvllm:kv_cache_usage_perc {}\n"
    doc = build_document([snapshot(text.format("NaN"), 0), snapshot(text.format("0.5"), 1)], 0)
    assert doc["series"]["kv_cache_usage"] == [[1e-9, 0.5]]


def test_garbage_and_empty_answers_are_not_expositions() -> None:
    for text in ("<html><body>Not here</body></html>", "", "ok"):
        with pytest.raises(ValueError):  # noqa: PT011 - the parser's own messages vary
            snapshot(text, 0)


# --- the real servers' /metrics, recorded ----------------------------------------------------


async def test_recorded_llama_server_metrics() -> None:
    idle = (FIXTURES / "llama-server-idle.txt").read_text()
    busy = (FIXTURES / "llama-server-busy.txt").read_text()
    async with serving(idle, busy) as (url, script):
        scraper, origin = await scrape_all(url, script)
    doc = scraper.document(origin)
    assert doc["server"] == "llama.cpp"
    assert doc["failed"] == 0
    series = doc["series"]
    assert set(series) == {
        "requests_running",
        "requests_waiting",
        "prompt_tokens_per_s",
        "generation_tokens_per_s",
    }  # no KV-cache gauge in this build
    n = len(series["requests_running"])
    assert values(series["requests_running"]) == [0] + [6] * (n - 1)  # 6 streams decoding
    assert values(series["requests_waiting"]) == [0] * n
    # prompt tokens are counted as they are decoded (19353 -> 19479) ...
    assert values(series["prompt_tokens_per_s"]) == pytest.approx(
        rates_of(series["requests_running"], [19353] + [19479] * (n - 1)), rel=1e-9
    )
    # ... generated ones only when a request ends: none had
    assert values(series["generation_tokens_per_s"]) == [0.0] * (n - 1)
    assert doc["histograms"] == {}  # llama-server exposes none
    assert doc["sources"]["requests_running"] == "llamacpp:requests_processing"
    assert doc["sources"]["generation_tokens_per_s"] == "llamacpp:tokens_predicted_total"
    assert {
        "llamacpp:n_busy_slots_per_decode",
        "llamacpp:n_decode",
        "llamacpp:prompt_tokens_seconds",
    } <= set(doc["raw_names"])


async def test_recorded_vllm_metrics() -> None:
    idle = (FIXTURES / "vllm-idle.txt").read_text()
    busy = (FIXTURES / "vllm-busy.txt").read_text()
    async with serving(idle, busy) as (url, script):
        scraper, origin = await scrape_all(url, script)
    doc = scraper.document(origin)
    assert doc["server"] == "vllm"
    series = doc["series"]
    n = len(series["requests_running"])
    assert values(series["requests_running"]) == [0] + [6] * (n - 1)
    assert values(series["requests_waiting"]) == [0] * n
    assert values(series["kv_cache_usage"]) == [0] + [0.0007325112928824318] * (n - 1)
    assert values(series["prompt_tokens_per_s"]) == pytest.approx(
        rates_of(series["requests_running"], [61240] + [61480] * (n - 1)), rel=1e-9
    )
    assert values(series["generation_tokens_per_s"]) == pytest.approx(
        rates_of(series["requests_running"], [24924] + [24931] * (n - 1)), rel=1e-9
    )
    ttft = doc["histograms"]["server_ttft_s"]
    assert len(ttft["le"]) == 23
    assert ttft["le"][-1] == "+Inf"
    assert ttft["counts"][:7] == [0, 0, 0, 0, 1, 5, 0]  # 6 first tokens: (0.02, 0.04], (0.04, 0.06]
    assert ttft["count"] == 6 == sum(ttft["counts"])
    assert ttft["sum"] == pytest.approx(17.05787968635559 - 16.79569411277771)
    itl = doc["histograms"]["server_itl_s"]
    assert itl["count"] == 1
    assert itl["counts"][1] == 1  # (0.01, 0.025]
    assert doc["histograms"]["server_e2e_s"]["count"] == 0  # none had finished
    assert doc["sources"]["kv_cache_usage"] == "vllm:kv_cache_usage_perc"
    assert doc["sources"]["server_itl_s"] == "vllm:inter_token_latency_seconds"
    assert "vllm:request_time_per_output_token_seconds" in doc["raw_names"]


# --- a live llama-server ---------------------------------------------------------------------


def _llama_server() -> str | None:
    return next((url for name, url in SERVERS.items() if name.startswith("llama")), None)


@pytest.mark.real_server
@pytest.mark.skipif(
    _llama_server() is None,
    reason="no live llama-server: set "
    "STREAM_ENGINE_REAL_SERVERS=llama-server=http://127.0.0.1:8080/v1",
)
async def test_live_llama_server_while_requests_run() -> None:
    base = str(_llama_server())
    body: dict[str, Any] = {
        "model": os.environ.get("STREAM_ENGINE_REAL_MODEL", "tiny-random-llama"),
        "messages": [{"role": "user", "content": "Write a short story about a lighthouse."}],
        "max_tokens": 200,
        "temperature": 1.0,
    }
    async with aiohttp.ClientSession() as session:

        async def load(deadline: float) -> int:
            done = 0
            while time.monotonic() < deadline:
                async with session.post(f"{base.rstrip('/')}/chat/completions", json=body) as resp:
                    resp.raise_for_status()
                    await resp.read()
                done += 1
            return done

        async with ServerMetricsScraper(metrics_url(base), 0.2) as scraper:
            origin = time.perf_counter_ns()
            deadline = time.monotonic() + 2.0
            done = await asyncio.gather(*(load(deadline) for _ in range(4)))
    doc = scraper.document(origin)
    assert sum(done) > 0
    assert doc["server"] == "llama.cpp"
    assert doc["failed"] == 0, doc["errors"]
    assert doc["scrapes"] >= 8
    series = doc["series"]
    for name in (
        "requests_running",
        "requests_waiting",
        "prompt_tokens_per_s",
        "generation_tokens_per_s",
    ):
        assert len(series[name]) >= 7, name
        assert all(math.isfinite(v) and v >= 0 for v in values(series[name])), name
    assert max(values(series["requests_running"])) > 0
    assert sum(values(series["generation_tokens_per_s"])) > 0
