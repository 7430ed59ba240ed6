"""Metrics through real processes: a real uvicorn (two worker processes when Redis is there to join
them, one otherwise) with PROMETHEUS_MULTIPROC_DIR, a real connector with `--metrics-port`, and the
fake upstream (tests/fakes/fake_upstream.py, a TEST DOUBLE standing in for the model server).
Real traffic goes through, and both /metrics endpoints must have moved by exactly what was sent:
requests, tokens, the connector online, frames; with two workers, a scrape answered by either one
sums both.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from .conftest import Proc, Server, base_env, free_port, wait_http

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

TOKEN = "e2e-metrics-token-0123456789abcdef"
PROMPT = "Say hello to the metrics"  # 5 words: the fake upstream counts 5 prompt tokens
ANSWER_WORDS = 8  # its answer, w0 … w7: 8 completion tokens


def parse(text: str) -> dict[tuple[str, tuple], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape(url: str, token: str | None = TOKEN) -> dict[tuple[str, tuple], float]:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    response = httpx.get(url, headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    return parse(response.text)


@pytest.fixture
def metrics_server(_db_env, tmp_path):
    workers = 2 if os.environ.get("REDIS_URL") else 1  # processes share connectors through Redis only
    directory = tmp_path / "prometheus"
    directory.mkdir()  # empty at start, one per server
    port = free_port()
    env = base_env(**_db_env, PROMETHEUS_MULTIPROC_DIR=str(directory), TOKIOS_METRICS_TOKEN=TOKEN)
    args = ["--host", "127.0.0.1", "--port", str(port), "--workers", str(workers), "--log-level", "warning"]
    proc = Proc(
        f"uvicorn-metrics-{port}", [sys.executable, "-m", "uvicorn", "tokios_site.asgi:application", *args], env
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", proc=proc)
        server = Server(url=f"http://127.0.0.1:{port}", proc=proc, env=env, port=port)
        server.workers = workers  # type: ignore[attr-defined]
        server.directory = directory  # type: ignore[attr-defined]
        yield server
    finally:
        proc.stop()


def per_worker(directory: Path, name: str, labels: dict[str, str], scratch: Path) -> dict[str, float]:
    """What each worker process counted, from its own file of the multiprocess directory."""
    counts = {}
    for path in directory.glob("counter_*.db"):
        alone = scratch / path.stem
        alone.mkdir(parents=True)
        shutil.copy(path, alone)
        total = 0.0
        for family in MultiProcessCollector(None, path=str(alone)).collect():
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    total += sample.value
        counts[path.stem.rpartition("_")[2]] = total
    return counts


def chat(server: Server, tenant, *, stream: bool) -> None:
    body = {"model": tenant.model, "stream": stream, "messages": [{"role": "user", "content": PROMPT}]}
    if stream:
        body["stream_options"] = {"include_usage": True}
    # A new connection each time, so that the kernel hands requests to every worker.
    response = httpx.post(
        f"{server.url}/v1/chat/completions", json=body, headers={"authorization": f"Bearer {tenant.key}"}, timeout=30
    )
    assert response.status_code == 200, response.text


def test_both_metrics_endpoints_move_by_exactly_the_traffic_sent(
    metrics_server, tenant, start_connector, fake_upstream, tmp_path
):
    server = metrics_server
    connector_port = free_port()
    start_connector(tenant.token, "--metrics-port", str(connector_port), srv=server)
    wait_http(f"http://127.0.0.1:{connector_port}/metrics")
    model = tenant.model
    assert httpx.get(f"{server.url}/metrics").status_code == 401  # the endpoint is protected

    ok = (("deployment", model), ("status", "200"), ("surface", "chat"))
    labels = {"surface": "chat", "deployment": model, "status": "200"}
    total = 0
    deadline = time.monotonic() + 60
    while True:  # enough requests for every worker to have served some (the kernel picks the worker)
        chat(server, tenant, stream=total % 3 == 2)  # a third of them streamed
        total += 1
        served = per_worker(server.directory, "tokios_requests_total", labels, tmp_path / f"after-{total}")
        if total >= 12 and len([n for n in served.values() if n]) == server.workers:
            break
        assert time.monotonic() < deadline, f"the requests never reached every worker: {served}"

    expected = {
        ("tokios_requests_total", ok): total,
        ("tokios_tokens_total", (("deployment", model), ("direction", "input"), ("surface", "chat"))): 5 * total,
        ("tokios_tokens_total", (("deployment", model), ("direction", "output"), ("surface", "chat"))): (
            ANSWER_WORDS * total
        ),
        ("tokios_connectors_online", (("deployment", model),)): 1,
        ("tokios_tunnel_frames_total", (("direction", "out"), ("kind", "request"))): total,
        ("tokios_tunnel_frames_total", (("direction", "in"), ("kind", "response.start"))): total,
        ("tokios_tunnel_frames_total", (("direction", "in"), ("kind", "response.end"))): total,
        ("tokios_request_duration_seconds_count", (("surface", "chat"),)): total,
        ("tokios_upstream_duration_seconds_count", (("surface", "chat"),)): total,
        ("tokios_requests_in_flight", ()): 0,
    }
    deadline = time.monotonic() + 10
    while True:  # a request's scope closes just after its last byte went out
        seen = scrape(f"{server.url}/metrics")
        got = {key: seen.get(key) for key in expected}
        if got == expected or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert got == expected
    chunks = seen[("tokios_tunnel_frames_total", (("direction", "in"), ("kind", "chunk")))]
    assert chunks >= total  # every answer's body came in chunk frames
    assert seen[("tokios_tunnel_bytes_total", (("direction", "in"), ("kind", "chunk")))] > chunks
    served = per_worker(server.directory, "tokios_requests_total", labels, tmp_path / "final")
    assert sum(served.values()) == total
    assert len([n for n in served.values() if n]) == server.workers  # so the scrape summed them all

    connector = scrape(f"http://127.0.0.1:{connector_port}/metrics", token=None)
    assert connector[("tokios_connector_requests_total", (("outcome", "ok"), ("status", "200")))] == total
    assert connector[("tokios_connector_connected", ())] == 1
    assert connector[("tokios_connector_requests_in_flight", ())] == 0
    assert connector[("tokios_connector_frames_total", (("direction", "in"), ("kind", "request")))] == total
    assert connector[("tokios_connector_frames_total", (("direction", "out"), ("kind", "response.start")))] == total
    assert connector[("tokios_connector_frames_total", (("direction", "out"), ("kind", "chunk")))] == chunks
    assert connector[("tokios_connector_upstream_duration_seconds_count", ())] == total
