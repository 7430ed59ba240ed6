"""GET /metrics (tokios_site/metrics.py): who may scrape it, what it answers, and the scrape itself
(lib/metrics.py): the label cap, and several worker processes summed through the multiprocess
directory."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

from lib import metrics

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "metrics-token-for-tests-0123456789"

pytestmark = pytest.mark.django_db


def samples(body: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


@pytest.fixture
def off(settings):
    settings.METRICS_TOKEN, settings.METRICS_ALLOW, settings.DEBUG = "", [], False
    return settings


# --- who may scrape ----------------------------------------------------------------------------------


def test_it_does_not_exist_when_neither_a_token_nor_networks_are_configured(client: Client, off):
    assert client.get("/metrics").status_code == 404
    assert client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 404


def test_with_debug_and_nothing_configured_only_loopback_may_scrape(client: Client, off):
    off.DEBUG = True
    assert client.get("/metrics", REMOTE_ADDR="127.0.0.1").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="::1").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="10.0.0.7").status_code == 403


def test_a_token_alone_needs_the_right_bearer_token(client: Client, off):
    off.METRICS_TOKEN = TOKEN

    missing = client.get("/metrics")
    wrong = client.get("/metrics", HTTP_AUTHORIZATION="Bearer metrics-token-for-tests-0123456788")
    other_scheme = client.get("/metrics", HTTP_AUTHORIZATION=f"Basic {TOKEN}")
    right = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}", REMOTE_ADDR="203.0.113.9")

    assert [missing.status_code, wrong.status_code, other_scheme.status_code] == [401, 401, 401]
    assert missing["WWW-Authenticate"].startswith("Bearer")
    assert TOKEN.encode() not in missing.content + wrong.content
    assert right.status_code == 200
    assert right["Content-Type"].startswith("text/plain; version=0.0.4")
    assert b"tokios_requests_in_flight" in right.content


def test_networks_alone_admit_their_addresses_and_refuse_the_rest(client: Client, off):
    off.METRICS_ALLOW = ["10.0.0.0/8", "fd00::/8"]
    assert client.get("/metrics", REMOTE_ADDR="10.20.30.40").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="::ffff:10.1.1.1").status_code == 200  # IPv4-mapped
    assert client.get("/metrics", REMOTE_ADDR="fd12::1").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="192.168.1.1").status_code == 403
    assert client.get("/metrics", REMOTE_ADDR="not-an-address").status_code == 403


def test_with_both_a_scrape_needs_both(client: Client, off):
    off.METRICS_TOKEN, off.METRICS_ALLOW = TOKEN, ["10.0.0.0/8"]
    bearer = f"Bearer {TOKEN}"
    assert client.get("/metrics", REMOTE_ADDR="10.0.0.1").status_code == 401
    assert client.get("/metrics", REMOTE_ADDR="192.168.0.1", HTTP_AUTHORIZATION=bearer).status_code == 403
    assert client.get("/metrics", REMOTE_ADDR="10.0.0.1", HTTP_AUTHORIZATION=bearer).status_code == 200


def test_only_get_and_head_are_answered(client: Client, off):
    off.METRICS_ALLOW = ["127.0.0.1"]
    assert client.head("/metrics").status_code == 200
    assert client.post("/metrics").status_code == 405


def test_plain_http_is_not_redirected_to_https_and_nothing_is_cached(client: Client, off):
    off.METRICS_ALLOW = ["127.0.0.1"]
    off.SECURE_SSL_REDIRECT = True

    response = client.get("/metrics")

    assert response.status_code == 200
    assert "no-cache" in response["Cache-Control"]
    assert client.get("/login/").status_code == 301  # the rest of the site still is


def test_a_scraper_that_takes_gzip_gets_it(client: Client, off):
    off.METRICS_ALLOW = ["127.0.0.1"]
    response = client.get("/metrics", HTTP_ACCEPT_ENCODING="gzip")
    assert response["Content-Encoding"] == "gzip"
    assert b"# TYPE tokios_requests_in_flight gauge" in gzip.decompress(response.content)


def test_a_scraper_that_asks_for_openmetrics_gets_it(client: Client, off):
    off.METRICS_ALLOW = ["127.0.0.1"]
    response = client.get("/metrics", HTTP_ACCEPT="application/openmetrics-text; version=1.0.0")
    assert response["Content-Type"].startswith("application/openmetrics-text")
    assert response.content.endswith(b"# EOF\n")


@pytest.mark.parametrize(
    "variable, value, complaint",
    [
        ("TOKIOS_METRICS_ALLOW", "10.0.0.0/8,not-a-network", "'not-a-network' is not an IP network"),
        ("TOKIOS_METRICS_ALLOW", "10.0.0.1/8", "has host bits set"),
        ("TOKIOS_METRICS_TOKEN", "short", "at least 16 printable characters"),
        ("TOKIOS_METRICS_MAX_DEPLOYMENTS", "0", "between 1 and 100000"),
        ("TOKIOS_METRICS_MAX_DEPLOYMENTS", "many", "must be an integer"),
    ],
)
def test_a_bad_setting_stops_the_server_from_starting_and_says_why(variable, value, complaint, tmp_path):
    env = {**os.environ, variable: value, "TOKIOS_DATA_DIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-c", "import tokios_site.settings"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 1
    assert variable in result.stderr and complaint in result.stderr


# --- the label cap ---------------------------------------------------------------------------------------


def test_deployments_beyond_the_cap_share_the_label_other():
    labels = metrics.DeploymentLabels(limit=2)
    assert [labels(name) for name in ("alpha", "beta", "gamma", "alpha", "delta", "beta")] == [
        "alpha",
        "beta",
        "other",
        "alpha",
        "other",
        "beta",
    ]
    assert len(labels.known) == 2


def test_the_cap_comes_from_the_setting(settings):
    settings.METRICS_MAX_DEPLOYMENTS = 3
    labels = metrics.DeploymentLabels()
    assert [labels(f"model-{i}") for i in range(5)] == ["model-0", "model-1", "model-2", "other", "other"]


# --- several worker processes --------------------------------------------------------------------------------

WORKER = textwrap.dedent(
    """
    import sys
    from lib import metrics
    metrics.REQUESTS.labels("chat", "gemma", "200").inc(int(sys.argv[1]))
    metrics.TOKENS.labels("chat", "gemma", "output").inc(int(sys.argv[2]))
    metrics.REQUEST_DURATION.labels("chat").observe(0.2)
    metrics.IN_FLIGHT.inc(int(sys.argv[3]))
    print("ready", flush=True)
    sys.stdin.readline()  # stays alive, its requests in flight, until told to go
    """
)


def _worker(directory: Path, *counts: int) -> subprocess.Popen:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    proc = subprocess.Popen(
        [sys.executable, "-c", WORKER, *map(str, counts)],
        cwd=ROOT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    return proc


def _end(proc: subprocess.Popen) -> None:
    proc.communicate("go\n", timeout=10)


def test_one_scrape_sums_every_worker_and_forgets_the_in_flight_requests_of_dead_ones(tmp_path):
    first, second = _worker(tmp_path, 3, 40, 2), _worker(tmp_path, 4, 2, 1)
    try:
        body, headers = metrics.render(multiprocess_dir=str(tmp_path))
        live = samples(body)
    finally:
        _end(first)
    after_one = samples(metrics.render(multiprocess_dir=str(tmp_path))[0])
    _end(second)
    after_both = samples(metrics.render(multiprocess_dir=str(tmp_path))[0])

    requests = ("tokios_requests_total", (("deployment", "gemma"), ("status", "200"), ("surface", "chat")))
    tokens = ("tokios_tokens_total", (("deployment", "gemma"), ("direction", "output"), ("surface", "chat")))
    in_flight = ("tokios_requests_in_flight", ())
    duration_count = ("tokios_request_duration_seconds_count", (("surface", "chat"),))
    assert (live[requests], live[tokens], live[in_flight], live[duration_count]) == (7, 42, 3, 2)
    # A worker that is gone keeps its counts, but what it had in flight no longer is.
    assert (after_one[requests], after_one[in_flight]) == (7, 1)
    assert (after_both[requests], after_both[tokens], after_both.get(in_flight, 0)) == (7, 42, 0)
    assert not list(tmp_path.glob("gauge_livesum_*.db"))
    assert headers["Content-Type"].startswith("text/plain")


def test_this_process_alone_is_scraped_without_a_multiprocess_directory():
    child = metrics.REQUESTS.labels("chat", "solo-process-test", "200")
    child.inc(5)
    body, _ = metrics.render(multiprocess_dir="")
    key = ("tokios_requests_total", (("deployment", "solo-process-test"), ("status", "200"), ("surface", "chat")))
    assert samples(body)[key] == 5
    assert b"process_cpu_seconds_total" in body
