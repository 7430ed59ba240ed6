"""403, 404 and 500 pages: inside the dashboard's frame (its navigation when signed in, a sign-in
link when not), the 500 page static (no database, no request context); /api/ and /v1 keep JSON."""

from __future__ import annotations

import json

import pytest
from django.test import Client, RequestFactory
from django.urls import reverse

from dashboard.views.errors import permission_denied, server_error

MAIN_NAV = '<nav aria-label="Main">'
STYLESHEET = "/static/dashboard/dashboard.css"


@pytest.mark.django_db
def test_an_unknown_page_is_a_404_inside_the_frame_with_the_navigation(as_owner):
    response = as_owner.get("/no-such-page/")
    assert response.status_code == 404
    assert "<h1" in response.text and "Page not found" in response.text
    assert MAIN_NAV in response.text and STYLESHEET in response.text
    assert reverse("dashboard:keys") in response.text  # an owner's navigation
    assert "Go to the overview" in response.text
    assert "script-src 'self'" in response["Content-Security-Policy"]


@pytest.mark.django_db
def test_another_orgs_object_is_the_same_framed_404_and_names_nothing(as_outsider, deployment):
    response = as_outsider.get(reverse("dashboard:deployment_detail", args=[deployment.pk]))
    assert response.status_code == 404
    assert "Page not found" in response.text and MAIN_NAV in response.text
    assert "matches the given query" not in response.text  # the exception's text stays out
    assert deployment.name not in response.text


@pytest.mark.django_db
def test_signed_out_the_404_offers_sign_in_and_no_navigation(client):
    response = client.get("/no-such-page/")
    assert response.status_code == 404
    assert "Page not found" in response.text
    assert f'href="{reverse("dashboard:login")}"' in response.text
    assert MAIN_NAV not in response.text and "Sign out" not in response.text


@pytest.mark.django_db
def test_a_member_gets_a_framed_403_that_says_why(as_member):
    response = as_member.get(reverse("dashboard:keys"))
    assert response.status_code == 403
    assert "You may not open this page" in response.text
    assert "Only owners and admins can do this." in response.text
    assert "You are member in Acme" in response.text
    assert MAIN_NAV in response.text
    assert f'href="{reverse("dashboard:usage")}"' in response.text
    assert f'href="{reverse("dashboard:keys")}"' not in response.text  # a member's navigation


def test_the_500_page_is_static_and_needs_no_database():
    # No `db` fixture: any query would fail this test.
    response = server_error(RequestFactory().get("/keys/"))
    assert response.status_code == 500
    body = response.content.decode()
    assert "Something went wrong on our side" in body
    assert 'class="sidebar"' in body and STYLESHEET in body
    assert MAIN_NAV not in body and "Sign out" not in body


@pytest.mark.django_db
@pytest.mark.urls("dashboard.tests.error_urls")
def test_a_bug_in_a_view_answers_the_framed_500(owner, org):
    client = Client(raise_request_exception=False)
    client.force_login(owner)
    response = client.get("/boom/")
    assert response.status_code == 500
    assert "Something went wrong on our side" in response.text and STYLESHEET in response.text
    assert "a bug" not in response.text and "RuntimeError" not in response.text


@pytest.mark.django_db
@pytest.mark.urls("dashboard.tests.error_urls")
def test_the_api_keeps_json_errors():
    client = Client(raise_request_exception=False)
    missing = client.get("/api/no-such-thing/")
    assert missing.status_code == 404 and missing["Content-Type"] == "application/json"
    assert missing.json() == {"detail": "Not found."}
    failed = client.get("/api/boom/")
    assert failed.status_code == 500 and failed.json() == {"detail": "A server error occurred."}
    refused = client.get("/api/refuse/")
    assert refused.status_code == 403 and refused.json() == {"detail": "Only owners can do this."}
    # The API's own refusals are untouched (DRF answers them).
    unauthenticated = client.get("/api/orgs/acme/keys/")
    assert unauthenticated.status_code == 401 and "detail" in unauthenticated.json()


@pytest.mark.django_db
def test_v1_keeps_its_openai_shaped_errors(client):
    response = client.get("/v1/no-such-thing")
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_a_v1_error_reaching_the_handlers_is_openai_shaped():
    response = permission_denied(RequestFactory().get("/v1/models"), None)
    assert response.status_code == 403
    assert json.loads(response.content)["error"]["message"] == "You do not have permission to perform this action."


@pytest.mark.django_db
def test_an_expired_form_is_a_framed_page_not_djangos_bare_one(owner):
    client = Client(enforce_csrf_checks=True)
    response = client.post(reverse("dashboard:login"), {"username": "owner@acme.test", "password": "x"})
    assert response.status_code == 403
    assert "This form has expired" in response.text and STYLESHEET in response.text
    assert "CSRF verification failed" not in response.text
