"""Delivering alerts: one attempt at a time, each logged; retries with backoff, bounded; what the far
end may do (fail, redirect, stall, answer a lot, resolve to a private address) stays bounded."""

from __future__ import annotations

import logging
import shutil
import ssl
import subprocess
import threading
import time
from http.server import ThreadingHTTPServer

import pytest
from django.db import connection
from django.utils import timezone

from alerts import webhooks
from alerts.actions import create_endpoint, send_test, update_endpoint
from alerts.delivery import attempt, backoff, email_text
from alerts.models import AlertSettings, Delivery, DeliveryAttempt, DeliveryStatus
from alerts.raising import raise_alert

from .conftest import Receiver, _handler

pytestmark = pytest.mark.django_db


def webhook_delivery(endpoint) -> Delivery:
    raised = send_test(endpoint=endpoint)
    [pk] = raised.deliveries
    return Delivery.objects.get(pk=pk)


def log_of(delivery) -> list[tuple]:
    return list(DeliveryAttempt.objects.filter(delivery=delivery).values_list("number", "ok", "http_status", "error"))


def resolve_to(*addresses):
    async def resolve(host, port):
        return list(addresses)

    return resolve


def test_a_failing_receiver_is_retried_with_backoff_and_every_attempt_is_logged(endpoint, receiver):
    receiver.replies = [500, 503]
    delivery = webhook_delivery(endpoint)

    assert attempt(delivery.pk).retry_in == 30
    assert attempt(delivery.pk).retry_in == 60
    assert attempt(delivery.pk).status == DeliveryStatus.DELIVERED
    assert attempt(delivery.pk).status == DeliveryStatus.DELIVERED  # a task run again sends nothing

    assert len(receiver.received) == 3 and all(r.signed for r in receiver.received)
    assert {r.body for r in receiver.received} == {receiver.received[0].body}  # the same payload each time
    assert [r.headers["Tokios-Delivery"] for r in receiver.received] == [f"{delivery.pk}.{n}" for n in (1, 2, 3)]
    assert log_of(delivery) == [(1, False, 500, "HTTP 500"), (2, False, 503, "HTTP 503"), (3, True, 200, "")]
    delivery.refresh_from_db()
    assert delivery.attempts == 3 and delivery.delivered_at is not None
    assert DeliveryAttempt.objects.filter(delivery=delivery, duration_ms__gte=0).count() == 3


def test_attempts_stop_at_the_configured_bound(endpoint, receiver, settings):
    settings.WEBHOOK_MAX_ATTEMPTS = 2
    receiver.replies = [500] * 5
    delivery = webhook_delivery(endpoint)
    assert attempt(delivery.pk).retry_in == 30
    outcome = attempt(delivery.pk)
    assert outcome.status == DeliveryStatus.FAILED and outcome.retry_in is None
    assert attempt(delivery.pk).status == DeliveryStatus.FAILED
    assert len(receiver.received) == 2


def test_backoff_doubles_and_is_capped_at_an_hour(settings):
    settings.WEBHOOK_BACKOFF_SECONDS = 30
    assert [backoff(n) for n in (1, 2, 3, 4, 8, 20, 65_000)] == [30, 60, 120, 240, 3600, 3600, 3600]


def test_redirects_are_not_followed(endpoint, receiver):
    receiver.replies = [302]
    receiver.extra_headers = {"Location": "http://169.254.169.254/latest/meta-data"}
    delivery = webhook_delivery(endpoint)
    assert attempt(delivery.pk).retry_in is not None
    assert log_of(delivery) == [(1, False, 302, "HTTP 302 (redirects are not followed)")]
    assert len(receiver.received) == 1


def test_a_stalled_receiver_is_abandoned_at_the_total_timeout(endpoint, receiver, monkeypatch):
    monkeypatch.setattr(webhooks, "TOTAL_TIMEOUT", 0.5)
    receiver.delay = 3
    delivery = webhook_delivery(endpoint)
    attempt(delivery.pk)
    [(ok, error, duration)] = DeliveryAttempt.objects.filter(delivery=delivery).values_list(
        "ok", "error", "duration_ms"
    )
    assert (ok, error) == (False, "timed out")
    assert duration < 2000


def test_an_answer_dripping_in_is_abandoned_at_the_total_timeout(endpoint, receiver, monkeypatch):
    """Each byte comes well within the read timeout; the attempt as a whole still ends on time."""
    monkeypatch.setattr(webhooks, "TOTAL_TIMEOUT", 1)
    receiver.drip_seconds = 4
    delivery = webhook_delivery(endpoint)
    attempt(delivery.pk)
    [(ok, error, duration)] = DeliveryAttempt.objects.filter(delivery=delivery).values_list(
        "ok", "error", "duration_ms"
    )
    assert (ok, error) == (False, "timed out")
    assert duration < 2500


def test_only_a_short_excerpt_of_the_answer_is_kept(endpoint, receiver):
    receiver.reply_body = b"x" * 100_000
    delivery = webhook_delivery(endpoint)
    attempt(delivery.pk)
    excerpt = DeliveryAttempt.objects.get(delivery=delivery).response_excerpt
    assert 0 < len(excerpt) <= 500


def test_an_endless_answer_is_cut_after_the_excerpt(endpoint, receiver, monkeypatch):
    monkeypatch.setattr(webhooks, "TOTAL_TIMEOUT", 3)
    receiver.stream_seconds = 5
    delivery = webhook_delivery(endpoint)
    assert attempt(delivery.pk).status == DeliveryStatus.DELIVERED
    assert DeliveryAttempt.objects.get(delivery=delivery).duration_ms < 2000


@pytest.mark.django_db(transaction=True)
def test_a_second_run_while_an_attempt_is_on_its_way_sends_nothing(org, endpoint, receiver):
    """Celery may run a task twice; the claim (attempt number and lease) lets one of them send."""
    raised = raise_alert(
        org=org,
        rules=AlertSettings.for_org(org),
        kind="test",
        title="t",
        data={},
        now=timezone.now(),
        endpoints=[endpoint],
    )
    [pk] = raised.deliveries
    receiver.delay = 1.0
    outcomes = []

    def first_run():
        try:
            outcomes.append(attempt(pk))
        finally:
            connection.close()

    thread = threading.Thread(target=first_run)
    thread.start()
    deadline = time.monotonic() + 5
    while not receiver.received:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    second = attempt(pk)
    thread.join()

    assert second.status == "claimed elsewhere"
    assert [o.status for o in outcomes] == [DeliveryStatus.DELIVERED]
    assert len(receiver.received) == 1
    assert Delivery.objects.get(pk=pk).attempts == 1


def test_a_name_that_resolves_to_a_private_address_is_refused_at_send_time(endpoint, receiver, settings, monkeypatch):
    port = receiver.url.split(":")[2].split("/")[0]
    update_endpoint(endpoint=endpoint, url=f"http://hooks.test:{port}/hooks/tokios")
    settings.WEBHOOK_ALLOW_PRIVATE = False
    monkeypatch.setattr(webhooks, "resolve", resolve_to("127.0.0.1"))
    delivery = webhook_delivery(endpoint)
    attempt(delivery.pk)
    monkeypatch.setattr(webhooks, "resolve", resolve_to("93.184.216.34", "10.0.0.7"))  # one bad answer is enough
    attempt(delivery.pk)
    assert [error for *_, error in log_of(delivery)] == [
        "The webhook's host resolves to a private or loopback address."
    ] * 2
    assert receiver.received == []

    # Allowed (an internal receiver): the connection goes to the checked address, named in Host.
    settings.WEBHOOK_ALLOW_PRIVATE = True
    monkeypatch.setattr(webhooks, "resolve", resolve_to("127.0.0.1"))
    assert attempt(delivery.pk).status == DeliveryStatus.DELIVERED
    assert receiver.received[0].headers["Host"] == f"hooks.test:{port}"


def test_a_disabled_endpoint_is_not_called_nor_retried(endpoint, receiver):
    delivery = webhook_delivery(endpoint)
    update_endpoint(endpoint=endpoint, enabled=False)
    outcome = attempt(delivery.pk)
    assert (outcome.status, outcome.retry_in) == (DeliveryStatus.FAILED, None)
    assert receiver.received == []


def test_logs_name_the_host_only_never_the_path_or_secret(endpoint, receiver, caplog):
    caplog.set_level(logging.DEBUG)
    receiver.replies = [500]
    delivery = webhook_delivery(endpoint)
    attempt(delivery.pk)
    assert "127.0.0.1" in caplog.text
    assert "/hooks/tokios" not in caplog.text and endpoint.secret not in caplog.text


def test_names_from_admins_cannot_break_the_mail_subject(org, endpoint):
    raised = raise_alert(
        org=org,
        rules=AlertSettings.for_org(org),
        kind="test",
        title="a\r\nBcc: x@evil.test",
        data={},
        now=timezone.now(),
    )
    subject, _ = email_text(raised.alert)
    assert subject == "[Tokios] a Bcc: x@evil.test"


def test_an_alert_email_goes_to_the_managers_and_holds_no_secret(org, key, endpoint, admin, member):
    raised = send_test(endpoint=endpoint)
    subject, body = email_text(raised.alert)
    assert subject == "[Tokios] Acme: a test alert from Tokios"
    assert key.secret not in body and endpoint.secret not in body and endpoint.salt not in body


# --- https: the pinned address, the name's certificate ---------------------------------------------


@pytest.fixture
def certificate(tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=hooks.test"]
        + ["-addext", "subjectAltName=DNS:hooks.test", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture
def tls_receiver(certificate):
    cert, key = certificate
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(Receiver(url="")))
    found = Receiver(url=f"https://hooks.test:{server.server_address[1]}/hooks/tokios")
    server.RequestHandlerClass = _handler(found)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield found
    server.shutdown()
    server.server_close()


def test_https_goes_to_the_checked_address_and_verifies_the_names_certificate(
    org, tls_receiver, certificate, settings, monkeypatch
):
    settings.WEBHOOK_ALLOW_HTTP = False
    monkeypatch.setattr(webhooks, "resolve", resolve_to("127.0.0.1"))
    monkeypatch.setattr(webhooks, "ssl_context", lambda: ssl.create_default_context(cafile=str(certificate[0])))
    endpoint, secret = create_endpoint(org=org, url=tls_receiver.url)
    tls_receiver.secret = secret
    delivery = webhook_delivery(endpoint)
    assert attempt(delivery.pk).status == DeliveryStatus.DELIVERED
    assert tls_receiver.signed()[0]["event"] == "test.firing"

    # A certificate for another name is refused.
    update_endpoint(endpoint=endpoint, url=tls_receiver.url.replace("hooks.test", "other.test"))
    delivery = webhook_delivery(endpoint)
    attempt(delivery.pk)
    [(_, ok, status, error)] = log_of(delivery)
    assert (ok, status) == (False, None) and "CERTIFICATE_VERIFY_FAILED" in error
    assert len(tls_receiver.received) == 1
