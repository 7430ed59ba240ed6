"""proxy/access_log.py: one structured line per /v1 request on `tokios.access`, whatever its end.

Through the real /v1 app in process (`call_v1`) with the scripted model (fake_call.py, a TEST
DOUBLE) in place of the tunnel. The lines are taken from the logger as the configured handler would
write them (its filters, if any, and its bare format, from settings.LOGGING), so a test sees the very
text that reaches stderr.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from datetime import datetime

import orjson
import pytest
from asgiref.sync import sync_to_async

from accounts.actions import create_api_key
from deployments.actions import create_api_key as create_limited_api_key
from deployments.actions import create_deployment
from proxy import access_log

from .fake_call import COMPLETION_TOKENS, PROMPT_TOKENS, SILENCE, chat_body, streamed, whole
from .v1 import V1_DB, call_v1

# `ledger`: fresh limits before, and the usage rows written after, each test (conftest.py).
pytestmark = [V1_DB, pytest.mark.asyncio, pytest.mark.timeout(60), pytest.mark.usefixtures("ledger")]

PROMPT = "Tell me the launch codes"
FIELDS = [
    "time",
    "request_id",
    "method",
    "path",
    "status",
    "error",
    "surface",
    "org_id",
    "org",
    "key_id",
    "key",
    "deployment",
    "model",
    "connector",
    "streamed",
    "cancelled",
    "tokens_in",
    "tokens_out",
    "estimated",
    "cost_micros",
    "total_ms",
    "added_ms",
    "upstream_ms",
    "queue_ms",
    "ttft_ms",
    "upstream_ttfb_ms",
    "client",
]


class Written(logging.Handler):
    """Keeps what the configured `tokios.access` handler would write: its filters, its format."""

    def __init__(self, configured: logging.Handler):
        super().__init__()
        self.configured = configured
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if self.configured.filter(record):
            self.lines.append(self.configured.format(record))

    def only(self) -> dict:
        assert len(self.lines) == 1, self.lines
        return orjson.loads(self.lines[0])


@pytest.fixture
def written() -> Iterator[Written]:
    logger = logging.getLogger("tokios.access")
    [configured] = logger.handlers
    capture = Written(configured)
    logger.addHandler(capture)
    yield capture
    logger.removeHandler(capture)


@pytest.fixture
def key_and_secret(org, deployment):
    return create_api_key(org=org, name="ci")


def chat(model: str, *, stream: bool = False) -> dict:
    return {"model": model, "stream": stream, "messages": [{"role": "user", "content": PROMPT}]}


def text_fields(line: str) -> dict[str, str]:
    """A `text` line back into its fields: bare values as written, quoted ones JSON-decoded."""
    pairs = re.findall(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)', line)
    assert " ".join(f"{k}={v}" for k, v in pairs) == line  # nothing between the pairs
    return {k: orjson.loads(v) if v.startswith('"') else v for k, v in pairs}


# --- what a line holds ---------------------------------------------------------------------------


async def test_an_answered_request_is_one_line_with_who_what_and_the_timings(
    org, deployment, key_and_secret, upstream, written
):
    key, secret = key_and_secret
    upstream.answer(*whole(chat_body()))  # the connector says: 12 ms in all, first byte at 3 ms

    response = await call_v1("POST", "/v1/chat/completions", chat(deployment.name), secret=secret)

    assert response.status == 200
    line = written.only()
    assert list(line) == FIELDS
    assert line["request_id"] == response.headers["x-request-id"]
    assert (line["method"], line["path"], line["status"], line["error"]) == ("POST", "/v1/chat/completions", 200, None)
    assert (line["surface"], line["org_id"], line["org"], line["key_id"]) == ("chat", org.pk, "acme", key.pk)
    assert line["key"] == key.prefix.removeprefix("sk-tokios-") and len(line["key"]) == 8
    assert (line["deployment"], line["model"], line["connector"]) == (
        deployment.name,
        deployment.name,
        "conn_scripted01",
    )
    assert (line["streamed"], line["cancelled"], line["estimated"]) == (False, False, False)
    assert (line["tokens_in"], line["tokens_out"]) == (PROMPT_TOKENS, COMPLETION_TOKENS)
    assert line["cost_micros"] == deployment.cost_micros(PROMPT_TOKENS, COMPLETION_TOKENS) > 0
    assert (line["upstream_ms"], line["upstream_ttfb_ms"], line["queue_ms"]) == (12, 3, 0)
    assert line["added_ms"] == max(0, line["total_ms"] - 12)
    assert line["client"] == "127.0.0.1"
    assert abs(datetime.fromisoformat(line["time"]).timestamp() - datetime.now().timestamp()) < 60


async def test_a_streamed_request_says_so_with_its_time_to_first_token(deployment, key_and_secret, upstream, written):
    upstream.answer(*streamed("Hel", "lo"))

    response = await call_v1(
        "POST", "/v1/chat/completions", chat(deployment.name, stream=True), secret=key_and_secret[1]
    )

    assert response.status == 200
    line = written.only()
    assert (line["status"], line["streamed"], line["cancelled"]) == (200, True, False)
    assert line["ttft_ms"] is not None and 0 <= line["ttft_ms"] <= line["total_ms"]
    assert line["tokens_out"] == COMPLETION_TOKENS


async def test_a_bad_key_is_a_401_line_naming_no_key_and_no_org(deployment, upstream, written):
    response = await call_v1("POST", "/v1/chat/completions", chat(deployment.name), secret="sk-tokios-" + "0" * 40)

    assert response.status == 401
    line = written.only()
    assert (line["status"], line["error"], line["surface"]) == (401, "invalid_api_key", "chat")
    assert (line["key"], line["key_id"], line["org"], line["org_id"], line["deployment"]) == (None,) * 5
    assert (line["upstream_ms"], line["added_ms"], line["tokens_in"]) == (None, None, 0)


async def test_a_model_the_key_may_not_use_is_a_403_line_with_the_name_asked_for(
    org, owner, deployment, upstream, written
):
    other = await sync_to_async(create_deployment)(org=org, name="llama-big")
    _, secret = await sync_to_async(create_limited_api_key)(
        org=org, name="gemma only", created_by=owner, deployments=[deployment]
    )

    response = await call_v1("POST", "/v1/chat/completions", chat(other.name), secret=secret)

    assert response.status == 403
    line = written.only()
    assert (line["status"], line["deployment"], line["model"], line["org"]) == (403, None, "llama-big", "acme")
    assert line["error"]
    assert upstream.calls == []


async def test_an_unknown_model_and_an_unknown_path_are_404_lines(key_and_secret, upstream, written):
    secret = key_and_secret[1]

    model = await call_v1("POST", "/v1/chat/completions", chat("gpt-4o-mini"), secret=secret)
    path = await call_v1("POST", "/v1/no/such/surface", chat("gpt-4o-mini"), secret=secret)

    assert model.status == path.status == 404
    by_model, by_path = (orjson.loads(line) for line in written.lines)
    assert (by_model["status"], by_model["error"], by_model["model"]) == (404, "model_not_found", "gpt-4o-mini")
    # No surface took it: not metered, but the line is there, with the status the client got.
    assert (by_path["status"], by_path["surface"], by_path["path"]) == (404, None, "/v1/no/such/surface")
    assert by_path["request_id"].startswith("req_") and by_path["request_id"] != by_model["request_id"]


async def test_a_request_over_its_rate_limit_is_a_429_line(org, deployment, upstream, written):
    _, secret = await sync_to_async(create_api_key)(org=org, name="one a minute", rpm_limit=1)
    upstream.answer(*streamed("Hi"))
    await call_v1("POST", "/v1/chat/completions", chat(deployment.name, stream=True), secret=secret)

    response = await call_v1("POST", "/v1/chat/completions", chat(deployment.name, stream=True), secret=secret)

    assert response.status == 429
    first, second = (orjson.loads(line) for line in written.lines)
    assert (first["status"], second["status"], second["error"]) == (200, 429, "rate_limit_exceeded")
    assert second["connector"] is None and second["upstream_ms"] is None


async def test_a_refusal_before_the_key_is_looked_at_has_its_status(deployment, key_and_secret, upstream, written):
    response = await call_v1(
        "POST", "/v1/chat/completions", chat(deployment.name), secret=key_and_secret[1], headers={"host": "evil.test"}
    )

    assert response.status == 400
    line = written.only()
    assert (line["status"], line["error"], line["surface"], line["key"]) == (400, "invalid_host", None, None)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_a_client_that_left_before_any_response_is_a_499_cancelled_line(
    deployment, key_and_secret, upstream, written, stream
):
    upstream.answer(SILENCE)

    response = await call_v1(
        "POST",
        "/v1/chat/completions",
        chat(deployment.name, stream=stream),
        secret=key_and_secret[1],
        leave_when=upstream.silent,
    )

    assert response.status is None
    line = written.only()
    assert (line["status"], line["cancelled"], line["deployment"]) == (499, True, deployment.name)
    assert line["upstream_ms"] is None  # the model never finished


# --- shapes, and what a line never holds ------------------------------------------------------------


async def test_the_text_shape_holds_the_same_fields_as_key_value_pairs(
    settings, org, deployment, key_and_secret, upstream, written
):
    settings.ACCESS_LOG = "text"
    upstream.answer(*whole(chat_body()))

    response = await call_v1("POST", "/v1/chat/completions", chat(deployment.name), secret=key_and_secret[1])

    [line] = written.lines
    assert not line.startswith("{")
    fields = text_fields(line)
    assert list(fields) == FIELDS
    assert fields["request_id"] == response.headers["x-request-id"]
    assert (fields["status"], fields["org"], fields["upstream_ms"], fields["error"]) == ("200", "acme", "12", "-")
    assert (fields["streamed"], fields["org_id"]) == ("false", str(org.pk))


async def test_a_text_value_with_spaces_or_quotes_is_quoted(settings, key_and_secret, upstream, written):
    settings.ACCESS_LOG = "text"

    await call_v1("POST", "/v1/chat/completions", chat('two words "quoted" a=b'), secret=key_and_secret[1])

    assert text_fields(written.lines[0])["model"] == 'two words "quoted" a=b'


async def test_off_writes_no_line(settings, deployment, key_and_secret, upstream, written):
    settings.ACCESS_LOG = "off"
    upstream.answer(*whole(chat_body()))

    response = await call_v1("POST", "/v1/chat/completions", chat(deployment.name), secret=key_and_secret[1])

    assert response.status == 200
    assert written.lines == []


async def test_no_line_holds_the_secret_or_the_prompt_and_a_secret_sent_as_a_model_is_masked(
    deployment, key_and_secret, upstream, written
):
    key, secret = key_and_secret
    upstream.answer(*whole(chat_body()))
    await call_v1("POST", "/v1/chat/completions", chat(deployment.name), secret=secret)
    await call_v1("POST", "/v1/chat/completions", chat(secret), secret=secret)  # pasted in the wrong place
    await call_v1("POST", f"/v1/{secret}", chat(deployment.name), secret=secret)

    assert len(written.lines) == 3
    for line in written.lines:
        assert secret not in line and secret[10:] not in line
        assert PROMPT not in line and "Hello" not in line  # neither the prompt nor the answer
        orjson.loads(line)  # still JSON after masking
    assert orjson.loads(written.lines[1])["model"] == "sk-tokios-***"
    assert orjson.loads(written.lines[2])["path"] == "/v1/sk-tokios-***"


async def test_a_line_that_cannot_be_built_is_logged_as_an_error_and_the_request_is_unharmed(
    monkeypatch, deployment, key_and_secret, upstream, written, caplog
):
    def broken(scope):
        raise ValueError("a bug in the access log")

    monkeypatch.setattr(access_log, "access_fields", broken)
    upstream.answer(*whole(chat_body()))

    response = await call_v1("POST", "/v1/chat/completions", chat(deployment.name), secret=key_and_secret[1])

    assert response.status == 200
    assert written.lines == []
    assert any("could not write the access line" in r.getMessage() for r in caplog.records)


# --- the logging set-up ----------------------------------------------------------------------------


async def test_the_access_logger_writes_the_bare_line_to_stderr_through_the_secret_filter_and_nowhere_else(settings):
    logger = logging.getLogger("tokios.access")
    [handler] = logger.handlers

    assert logger.propagate is False and logger.isEnabledFor(logging.INFO)
    assert isinstance(handler, logging.StreamHandler)
    assert "stream" not in settings.LOGGING["handlers"]["access"]  # a StreamHandler's default: stderr
    record = logger.makeRecord("tokios.access", logging.INFO, __file__, 1, '{"status":200}', None, None)
    assert handler.format(record) == '{"status":200}'
