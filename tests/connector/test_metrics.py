"""The connector's own metrics (tokios_connector/metrics.py) and `--metrics-port`: what they count,
that they are served, and that the connector without prometheus-client still runs while
`--metrics-port` then refuses with a clear message."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest

from tokios_connector import metrics as connector_metrics
from tokios_connector.cli import parse_config

ROOT = Path(__file__).resolve().parents[2]
BASE = ["--server", "http://127.0.0.1:1", "--upstream", "http://127.0.0.1:2/v1"]
ENV = {"TOKIOS_CONNECTOR_TOKEN": "ctk-tokios-for-tests"}


def value(m: connector_metrics.ConnectorMetrics, name: str, **labels: str) -> float:
    return m.registry.get_sample_value(name, labels) or 0.0


def test_requests_count_by_status_and_outcome_with_the_model_server_s_timings():
    m = connector_metrics.ConnectorMetrics()
    m.request_started()
    m.request_started()
    assert value(m, "tokios_connector_requests_in_flight") == 2

    m.request_finished(200, "ok", 1.5, 0.25)
    m.request_finished(None, "upstream_unreachable", 0.01, None)
    m.refused("path_not_allowed")
    m.request_finished(999, "ok", 0.1, 0.1)  # not an HTTP status: `other`, never a new label
    m.refused("something new")  # not a known outcome: counted as an upstream error

    assert value(m, "tokios_connector_requests_in_flight") == -1  # three ended, two started here
    assert value(m, "tokios_connector_requests_total", status="200", outcome="ok") == 1
    assert value(m, "tokios_connector_requests_total", status="none", outcome="upstream_unreachable") == 1
    assert value(m, "tokios_connector_requests_total", status="none", outcome="path_not_allowed") == 1
    assert value(m, "tokios_connector_requests_total", status="other", outcome="ok") == 1
    assert value(m, "tokios_connector_requests_total", status="none", outcome="upstream_error") == 1
    assert value(m, "tokios_connector_upstream_duration_seconds_sum") == pytest.approx(1.6)
    assert value(m, "tokios_connector_upstream_duration_seconds_count") == 2  # only answered requests
    assert value(m, "tokios_connector_upstream_first_byte_seconds_count") == 2


def test_frames_count_by_direction_and_kind_in_utf8_bytes():
    m = connector_metrics.ConnectorMetrics()
    text = '{"type":"request","body":"héllo"}'
    m.text_in("request", text)
    m.text_in("no-such-kind", "{}")
    m.frame_out("chunk", 100)
    m.text_out("pong", '{"type":"pong"}')

    assert value(m, "tokios_connector_frames_total", direction="in", kind="request") == 1
    assert (
        value(m, "tokios_connector_frame_bytes_total", direction="in", kind="request") == len(text) + 1
    )  # é is 2 bytes
    assert value(m, "tokios_connector_frames_total", direction="in", kind="invalid") == 1
    assert value(m, "tokios_connector_frame_bytes_total", direction="out", kind="chunk") == 100
    assert value(m, "tokios_connector_frames_total", direction="out", kind="pong") == 1


def test_connected_and_reconnects():
    m = connector_metrics.ConnectorMetrics()
    m.connected(True)
    assert value(m, "tokios_connector_connected") == 1
    m.connected(False)
    m.reconnecting()
    m.reconnecting()
    assert (value(m, "tokios_connector_connected"), value(m, "tokios_connector_reconnects_total")) == (0, 2)


def test_the_metrics_are_served_on_the_port_given():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    m = connector_metrics.serve("127.0.0.1", port)
    m.connected(True)
    body = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    assert "tokios_connector_connected 1.0" in body
    assert "process_cpu_seconds_total" in body


def test_the_port_and_address_come_from_the_command_line_or_the_environment():
    config, _, _ = parse_config([*BASE, "--metrics-port", "9464"], ENV)
    assert (config.metrics_port, config.metrics_host) == (9464, "127.0.0.1")
    env = {**ENV, "TOKIOS_CONNECTOR_METRICS_PORT": "9100", "TOKIOS_CONNECTOR_METRICS_HOST": "0.0.0.0"}
    config, _, _ = parse_config(BASE, env)
    assert (config.metrics_port, config.metrics_host) == (9100, "0.0.0.0")
    assert parse_config(BASE, ENV)[0].metrics_port is None


@pytest.mark.parametrize("port", ["0", "65536", "-1", "http", "9464.5"])
def test_a_bad_port_is_refused(port, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_config([*BASE, "--metrics-port", port], ENV)
    assert exit_info.value.code == 2
    assert "--metrics-port must be a port number, 1-65535" in capsys.readouterr().err


WITHOUT_PROMETHEUS = textwrap.dedent(
    """
    import sys

    class NoPrometheus:  # this interpreter has no prometheus-client installed
        def find_spec(self, name, path=None, target=None):
            if name == "prometheus_client" or name.startswith("prometheus_client."):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, NoPrometheus())
    from tokios_connector import cli, metrics
    assert not metrics.available()
    config, _, _ = cli.parse_config(sys.argv[1:], {"TOKIOS_CONNECTOR_TOKEN": "ctk-tokios-for-tests"})
    print("parsed", config.metrics_port)
    """
)


def run_without_prometheus(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_PROMETHEUS, *BASE, *args],
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if not k.startswith("TOKIOS")},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_without_prometheus_client_the_connector_still_starts():
    result = run_without_prometheus()
    assert result.returncode == 0, result.stderr
    assert result.stdout == "parsed None\n"


def test_without_prometheus_client_metrics_port_says_what_to_install():
    result = run_without_prometheus("--metrics-port", "9464")
    assert result.returncode == 2
    assert "--metrics-port needs the prometheus-client package" in result.stderr
    assert "tokios-connector[metrics]" in result.stderr
