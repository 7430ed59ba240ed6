"""Webhook endpoints: the URL rules (no SSRF), the signing secret (derived, never stored, shown
once, rotatable with a grace period) and the signature receivers check."""

from __future__ import annotations

import re
import time
from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.forms.models import model_to_dict
from django.utils import timezone

from alerts.actions import create_endpoint, rotate_secret, update_endpoint
from alerts.models import MAX_ENDPOINTS_PER_ORG, WebhookEndpoint
from alerts.webhooks import check_url, secrets_for, sign, signing_secret, verify

pytestmark = pytest.mark.django_db

BODY = b'{"id":1,"event":"budget.firing"}'


def test_the_signature_is_an_hmac_of_the_timestamp_and_body_that_receivers_check():
    header = sign(BODY, ["whsec-tokios-abc"], 1_700_000_000)
    assert re.fullmatch(r"t=1700000000,v1=[0-9a-f]{64}", header)
    assert verify(header, BODY, "whsec-tokios-abc", now=1_700_000_100)
    assert not verify(header, BODY, "whsec-tokios-abd", now=1_700_000_100)  # another secret
    assert not verify(header, BODY + b" ", "whsec-tokios-abc", now=1_700_000_100)  # another body
    assert not verify(header, BODY, "whsec-tokios-abc", now=1_700_000_301)  # stale: replayed later
    assert not verify("v1=" + header.split("v1=")[1], BODY, "whsec-tokios-abc", now=1_700_000_000)  # no t


def test_the_secret_is_shown_once_and_the_database_alone_cannot_sign(org, owner, settings):
    endpoint, secret = create_endpoint(org=org, url="https://hooks.example.com/tokios", created_by=owner)
    assert secret.startswith("whsec-tokios-") and len(secret) >= 50
    assert secret.startswith(endpoint.prefix) and len(endpoint.prefix) < len(secret) - 30
    stored = " ".join(str(v) for v in model_to_dict(WebhookEndpoint.objects.get(pk=endpoint.pk)).values())
    assert secret not in stored and secret[len(endpoint.prefix) :] not in stored
    assert signing_secret(endpoint.pk, endpoint.salt) == secret
    settings.SECRET_KEY = "another-server-" + "x" * 40
    assert signing_secret(endpoint.pk, endpoint.salt) != secret


def test_rotation_gives_a_new_secret_and_the_old_one_signs_too_for_a_day(org):
    endpoint, old = create_endpoint(org=org, url="https://hooks.example.com/tokios")
    endpoint, new = rotate_secret(endpoint=endpoint)
    assert new != old and endpoint.prefix == new[: len(endpoint.prefix)]

    header = sign(BODY, secrets_for(endpoint, timezone.now()), int(time.time()))
    assert header.count("v1=") == 2
    assert verify(header, BODY, old) and verify(header, BODY, new)

    later = timezone.now() + timedelta(hours=25)
    header = sign(BODY, secrets_for(endpoint, later), int(time.time()))
    assert verify(header, BODY, new) and not verify(header, BODY, old)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://hooks.example.com/x", "https"),
        ("ftp://hooks.example.com/x", "https"),
        ("https://127.0.0.1/x", "public address"),
        ("https://10.1.2.3/x", "public address"),
        ("https://192.168.0.10:8443/x", "public address"),
        ("https://169.254.169.254/latest/meta-data", "public address"),  # the cloud metadata service
        ("https://[::1]/x", "public address"),
        ("https://[::ffff:127.0.0.1]/x", "public address"),
        ("https://[fd00::1]/x", "public address"),
        ("https://100.64.0.1/x", "public address"),
        ("https://0.0.0.0/x", "public address"),
        ("https://224.0.0.1/x", "public address"),
        ("https://localhost/x", "public address"),
        ("https://api.localhost/x", "public address"),
        ("https://user:pass@hooks.example.com/x", "user name or password"),
        ("https://hooks.example.com/x#frag", "fragment"),
        ("https://hooks.example.com:0/x", "port 0"),
        ("https://hooks.example.com:99999/x", "valid URL"),
        ("https:///x", "needs a host"),
        ("https://hooks.example.com/" + "a" * 2000, "2000 characters"),
    ],
)
def test_webhook_urls_must_be_public_https(settings, url, reason):
    settings.WEBHOOK_ALLOW_PRIVATE = False
    settings.WEBHOOK_ALLOW_HTTP = False
    with pytest.raises(ValidationError) as caught:
        check_url(url)
    assert reason in " ".join(caught.value.messages)


def test_a_public_https_url_is_accepted_and_the_settings_open_private_and_http(settings):
    settings.WEBHOOK_ALLOW_PRIVATE = False
    settings.WEBHOOK_ALLOW_HTTP = False
    assert check_url("https://hooks.example.com:8443/t/abc?x=1").hostname == "hooks.example.com"
    assert check_url("https://93.184.216.34/x").port is None
    settings.WEBHOOK_ALLOW_PRIVATE = True
    settings.WEBHOOK_ALLOW_HTTP = True
    assert check_url("http://127.0.0.1:8080/x").port == 8080


def test_the_actions_refuse_bad_urls_and_more_than_ten_endpoints(org, settings):
    settings.WEBHOOK_ALLOW_PRIVATE = False
    with pytest.raises(ValidationError) as caught:
        create_endpoint(org=org, url="https://10.0.0.1/x")
    assert "url" in caught.value.message_dict
    endpoint, _ = create_endpoint(org=org, url="https://hooks.example.com/0")
    with pytest.raises(ValidationError):
        update_endpoint(endpoint=endpoint, url="https://127.0.0.1/x")
    with pytest.raises(ValidationError):
        update_endpoint(endpoint=endpoint, salt="chosen")
    for i in range(1, MAX_ENDPOINTS_PER_ORG):
        create_endpoint(org=org, url=f"https://hooks.example.com/{i}")
    with pytest.raises(ValidationError, match="at most 10"):
        create_endpoint(org=org, url="https://hooks.example.com/11")
