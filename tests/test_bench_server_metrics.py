"""`bench --server-metrics`: the server's Prometheus series land in the result beside the
client's own figures, on the same clock."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from tests.conftest import bench_main as main
from tests.helpers import bench_flags
from tests.netfront import Front

if TYPE_CHECKING:
    from collections.abc import Iterator

FIXTURE = (
    Path(__file__).resolve().parent / "real_servers" / "metrics" / "llama-server-busy.txt"
).read_bytes()


class _Metrics(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(FIXTURE)))
        self.end_headers()
        self.wfile.write(FIXTURE)

    def log_message(self, *args: object) -> None:
        pass


def metrics_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Metrics)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/metrics"
    finally:
        server.shutdown()
        server.server_close()


def test_bench_keeps_the_servers_series_beside_its_own(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    mock = ["--mock-ttft-ms", "5", "--mock-itl-ms", "2", "--output-tokens", "8"]
    load = ["--duration", "1.5", "--warmup", "0.3", "--concurrency", "2"]
    for url in metrics_server():
        scrape = ["--server-metrics", url, "--server-metrics-interval", "0.2"]
        assert main(bench_flags(*mock, *load, *scrape, out=out)) == 0
    doc = orjson.loads(out.read_bytes())
    section = doc["server_metrics"]
    assert section["server"] == "llama.cpp"
    assert section["failed"] == 0
    assert section["scrapes"] >= 3
    times = [t for t, _ in section["series"]["requests_running"]]
    assert times == sorted(times)
    assert times[0] <= 0.3  # the scrapes span the measured window
    assert times[-1] >= 1.0


def test_the_scraper_reaches_the_server_the_loads_way(base_url: str, tmp_path: Path) -> None:
    """`--proxy` (and the TLS options) carry the scrapes too: /metrics sits beside the API."""
    out = tmp_path / "proxied.json"
    with Front.proxy() as proxy:
        for url in metrics_server():
            flags = ["--base-url", base_url, "--proxy", proxy.url, "--requests", "4"]
            metrics = ["--server-metrics", url, "--server-metrics-interval", "0.2"]
            assert main(bench_flags(*flags, *metrics, "--warmup", "0", out=out)) == 0
    section = orjson.loads(out.read_bytes())["server_metrics"]
    assert (section["failed"], section["server"]) == (0, "llama.cpp")
    assert proxy.served >= 4 + section["scrapes"]
