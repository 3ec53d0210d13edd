"""Issue 22, the bench half: `--proxy`, `--ca-bundle`, `--client-cert/--client-key` and
`--insecure` reach every Engine a bench makes (the open loop's probe, every worker process's
runner), through a real forward proxy and a TLS front with trustme's CA (tests/netfront.py),
and a proxy's password is in no output."""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson

from tests.conftest import bench_main
from tests.helpers import bench_flags
from tests.netfront import Front
from tests.test_transport import ca, tls_front  # noqa: F401 - the TLS front, as a fixture

if TYPE_CHECKING:
    from pathlib import Path

    import pytest
    import trustme

PASSWORD = "s3cr3t-proxy-pw"  # noqa: S105 - the test proxy's own
FAST = ["--header", "x-mock-ttft-ms: 2", "--header", "x-mock-itl-ms: 1", "--output-tokens", "4"]


def test_bench_goes_through_a_proxy_from_every_worker_and_never_shows_its_password(
    base_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "proxied.json"
    with Front.proxy(auth=f"user:{PASSWORD}") as proxy:
        flags = ["--base-url", base_url, "--proxy", proxy.url, "--workers", "2", *FAST]
        argv = [*flags, "--concurrency", "4", "--requests", "12", "--warmup", "0"]
        assert bench_main(bench_flags(*argv, out=out)) == 0
    doc = orjson.loads(out.read_bytes())
    assert (doc["completed"], doc["failed"], doc["config"]["workers"]) == (12, 0, 2)
    # Every request went through it: the measured ones and each worker's primers.
    assert proxy.served >= 12 + doc["warmup"]["connections_primed"]
    assert proxy.refused == 0
    assert doc["config"]["network"]["proxy"] == proxy.url.replace(PASSWORD, "[redacted]")
    said = capsys.readouterr()
    assert PASSWORD not in out.read_text() + said.out + said.err


def test_bench_trusts_a_private_ca_when_given_and_says_insecure_loudly(
    ca: trustme.CA,  # noqa: F811 - the fixture
    tls_front: Front,  # noqa: F811 - the fixture
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = f"{tls_front.url}/v1"
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    out = tmp_path / "tls.json"
    # An open loop with --workers auto: its probe request goes first, by the same options.
    load = ["--base-url", url, *FAST, "--rate", "20", "--requests", "6", "--warmup", "0"]
    assert bench_main(bench_flags(*load, "--ca-bundle", str(bundle), out=out)) == 0
    doc = orjson.loads(out.read_bytes())
    assert (doc["completed"], doc["failed"]) == (6, 0)
    assert doc["config"]["network"]["ca_bundle"] == str(bundle)
    assert "WARNING" not in capsys.readouterr().err

    assert bench_main(bench_flags(*load, out=out)) == 2  # the system's CAs: not this one
    assert "certificate" in capsys.readouterr().err

    assert bench_main(bench_flags(*load, "--insecure", out=out)) == 0
    assert "WARNING: --insecure" in capsys.readouterr().err


def test_a_ca_bundle_that_cannot_be_read_is_one_line_before_any_request(
    base_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.pem"
    flags = bench_flags("--base-url", base_url, "--ca-bundle", str(missing), "--requests", "2")
    assert bench_main(flags) == 2
    err = capsys.readouterr().err
    assert "cannot read the CA bundle" in err
    assert "Traceback" not in err
