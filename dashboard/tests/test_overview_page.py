from __future__ import annotations

import pytest
from django.urls import reverse

from billing.models import UsageEvent
from dashboard.tests.conftest import connector_info
from dashboard.tests.usage_data import rollup

pytestmark = pytest.mark.django_db


def test_it_shows_this_months_usage_and_budget(as_member, org, key, deployment):
    org.monthly_budget_micros = 10_000_000
    org.save()
    rollup(
        org,
        key=key,
        deployment=deployment,
        requests=1234,
        errors=3,
        input_tokens=56_000,
        output_tokens=7_800,
        cost_micros=2_500_000,
    )
    response = as_member.get(reverse("dashboard:overview"))
    assert response.context["month"]["requests"] == 1234
    page = response.text
    assert "1.2k" in page and "56k" in page and "7.8k" in page and "$2.50" in page
    assert "25%" in page and 'value="25"' in page and "of $10.00 a month" in page


def test_it_shows_models_with_live_state(as_member, deployment, other_deployment, live):
    page = as_member.get(reverse("dashboard:overview")).text
    assert "gemma-tunnel" in page and 'badge-bad">offline' in page
    assert "globex-llama" not in page
    live[deployment.id] = [connector_info(deployment)]
    assert 'badge-ok">online' in as_member.get(reverse("dashboard:overview")).text


def test_members_do_not_get_links_to_management_pages(as_member, deployment):
    page = as_member.get(reverse("dashboard:overview")).text
    assert reverse("dashboard:deployment_detail", args=[deployment.pk]) not in page
    assert reverse("dashboard:keys") not in page and reverse("dashboard:members") not in page
    assert reverse("dashboard:usage") in page and reverse("dashboard:statements") in page


def test_it_lists_recent_errors_of_this_org_only(as_owner, org, other_org, key, deployment):
    UsageEvent.objects.create(
        request_id="req-bad-1",
        org=org,
        api_key=key,
        deployment=deployment,
        surface="chat",
        status_code=503,
        error_code="connector_offline",
    )
    UsageEvent.objects.create(
        request_id="req-ok-1", org=org, api_key=key, deployment=deployment, surface="chat", status_code=200
    )
    UsageEvent.objects.create(request_id="req-theirs", org=other_org, surface="chat", status_code=500)
    page = as_owner.get(reverse("dashboard:overview")).text
    assert "req-bad-1" in page and "connector_offline" in page
    assert "req-ok-1" not in page and "req-theirs" not in page


def test_a_new_org_is_told_how_to_start(as_owner, org):
    page = as_owner.get(reverse("dashboard:overview")).text
    assert "No models yet" in page and reverse("dashboard:deployment_create") in page
    assert "No errors recently" in page
