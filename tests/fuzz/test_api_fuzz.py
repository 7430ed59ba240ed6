"""Fuzzing the management API with schemathesis: every operation of /api/schema/, every method it
documents, with the data its schema allows and the data it does not; the answer is never a 5xx.

In process (the WSGI app), as acme's owner with a personal access token. Each generated request is
sent twice: as generated (random ids, an org slug that is not acme's) and with the org and ids of
real objects, so that the bodies and query strings reach the code behind the 404s. A 5xx is
accepted only when its exception is in tests/fuzz/known.py's KNOWN_FAILURES. Sized by budget.py.
"""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import schemathesis
from django.core import signals
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from django.test import override_settings
from hypothesis import currently_in_test_context, event, note
from schemathesis.checks import not_a_server_error

from accounts.actions import create_personal_access_token
from alerts.actions import create_endpoint
from alerts.models import Alert, AlertKind, Channel, Delivery
from deployments.actions import grant_model

from .budget import LONG, RANDOM, fuzz
from .known import ServerErrors

app = get_wsgi_application()
config = schemathesis.Config.from_dict(
    {
        # The schema's examples and random data (fuzzing); its boundaries (coverage: ~2 minutes
        # more) in a long run only. Sequences of calls (stateful) are not run.
        "phases": {"stateful": {"enabled": False}, "coverage": {"enabled": LONG}},
        "generation": {"deterministic": not RANDOM, "database": ":memory:" if RANDOM else "none"},
        "warnings": False,
    }
)
# The schema is for signed-in users and token holders (api/docs.py); the fuzzer reads it as the
# public one a deployment may choose to serve.
with override_settings(API_DOCS_PUBLIC=True):
    schema = schemathesis.openapi.from_wsgi("/api/schema/?format=json", app, config=config)


@contextmanager
def connection_kept():
    """As Django's test client does: the WSGI app must not close the test's database connection
    (and with it the test's transaction) at the end of each request."""
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    try:
        yield
    finally:
        signals.request_started.connect(close_old_connections)
        signals.request_finished.connect(close_old_connections)


@pytest.fixture
def real_objects(client, owner, org, member, deployment, other_org, connector_token, key):
    """Acme's owner's token, and the ids of one real object behind each id in a path."""
    grant = grant_model(deployment=deployment, org=other_org)
    _, secret = create_personal_access_token(user=owner, org=org, role="owner", name="fuzz")
    headers = {"Authorization": f"Bearer {secret}"}
    client.post(
        f"/api/orgs/{org.slug}/members/",
        {"email": "newcomer@example.test", "role": "member"},
        content_type="application/json",
        HTTP_AUTHORIZATION=headers["Authorization"],
    )
    invitations = client.get(f"/api/orgs/{org.slug}/invitations/", HTTP_AUTHORIZATION=headers["Authorization"])
    members = client.get(f"/api/orgs/{org.slug}/members/", HTTP_AUTHORIZATION=headers["Authorization"])
    member_id = next(m["id"] for m in members.json()["results"] if m["email"] == member.email)
    endpoint, _ = create_endpoint(org=org, url="https://hooks.example.com/tokios")
    alert = Alert.objects.create(org=org, kind=AlertKind.choices[0][0], title="fuzz")
    delivery = Delivery.objects.create(org=org, alert=alert, channel=Channel.WEBHOOK, endpoint=endpoint)
    ids = {
        "/keys/": key.id,
        "/tokens/": connector_token.id,
        "/grants/": grant.id,
        "/invitations/": invitations.json()["results"][0]["id"],
        "/members/": member_id,
        "/deployments/": deployment.id,
        "/alerts/webhooks/": endpoint.id,
        "/alerts/history/": alert.id,
        "/alerts/deliveries/": delivery.id,
    }
    return {"headers": headers, "org": org.slug, "deployment_pk": deployment.id, "ids": ids}


def with_real_objects(case, real: dict) -> dict:
    """The path parameters of `case`, pointing at acme and its objects."""
    parameters = dict(case.path_parameters or {})
    if "org" in parameters:
        parameters["org"] = real["org"]
    if "deployment_pk" in parameters:
        parameters["deployment_pk"] = real["deployment_pk"]
    if "id" in parameters:
        collection = case.path.split("{id}")[0]
        parameters["id"] = next(value for suffix, value in real["ids"].items() if collection.endswith(suffix))
    if "month" in parameters:
        parameters["month"] = "2026-11"
    return parameters


def call_and_check(case, headers: dict) -> None:
    with ServerErrors() as errors, connection_kept():
        response = case.call(headers=headers)
    event(f"{case.operation.label}: {response.status_code}")
    if response.status_code >= 500:
        known = errors.all_known()
        if known is not None:
            event(f"known failure: {known.name}")
            return
        if currently_in_test_context():
            note(f"server error: {errors.describe()}")
    case.validate_response(response, checks=[not_a_server_error])


@schema.parametrize()
@fuzz(weight=0.4)  # 30 operations, each request sent twice
def test_no_request_makes_the_management_api_fail(case, db, real_objects):
    call_and_check(case, real_objects["headers"])
    case.path_parameters = with_real_objects(case, real_objects)
    call_and_check(case, real_objects["headers"])
