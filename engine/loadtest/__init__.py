"""Load tester (`stream-engine bench`): TTFT, ITL, TPOT, throughput and goodput you can trust.

from engine.loadtest import LoadConfig, run_load
result = await run_load(LoadConfig(base_url="http://127.0.0.1:8000/v1", rate=50))
doc = result.summary()          # the JSON document of docs/loadtest.md
"""

from engine.loadtest.config import LoadConfig, parse_slo
from engine.loadtest.metrics import RequestRecord, merge, stats, summarize
from engine.loadtest.result import SCHEMA_VERSION, BenchResult, combine
from engine.loadtest.runner import Runner, WorkerResult
from engine.loadtest.workers import run_load, run_sweep

__all__ = [
    "SCHEMA_VERSION",
    "BenchResult",
    "LoadConfig",
    "RequestRecord",
    "Runner",
    "WorkerResult",
    "combine",
    "merge",
    "parse_slo",
    "run_load",
    "run_sweep",
    "stats",
    "summarize",
]
