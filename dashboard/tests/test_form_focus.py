"""Forms on a phone: a page that is one form focuses its first field (`autofocus`); a form sent back
with errors starts with an error summary (role="alert", focusable, a link to each field), which
dashboard.js focuses (seen in Chromium: browser/test_layout.py), so no field has `autofocus` then.
Tables scroll in their own focusable region; a name cut to fit keeps its whole value in its title."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth.tokens import default_token_generator
from django.test import Client
from django.urls import reverse
from django.utils.encoding import force_bytes
from django.utils.http import urlsafe_base64_encode

from accounts.actions import create_api_key
from accounts.invitations import invite
from accounts.once import new_form_token
from dashboard.forms import ApiKeyForm
from dashboard.templatetags.tokios import error_items

pytestmark = pytest.mark.django_db

SUMMARY = re.compile(r'<div class="error-summary" role="alert" tabindex="-1" data-error-summary>(.*?)</div>', re.S)


def autofocused_ids(html: str) -> list[str]:
    tags = re.findall(r"<(?:input|select|textarea)\b[^>]*\bautofocus\b[^>]*>", html)
    return [re.search(r'\bid="([^"]+)"', tag).group(1) for tag in tags]


def summary(html: str) -> str:
    found = SUMMARY.findall(html)
    assert len(found) == 1, f"{len(found)} error summaries"
    return found[0]


def test_the_sign_in_and_password_pages_focus_their_first_field(client, owner):
    assert autofocused_ids(client.get(reverse("dashboard:login")).text) == ["id_username"]
    assert autofocused_ids(client.get(reverse("dashboard:password_reset")).text) == ["id_email"]
    link = reverse(
        "dashboard:password_reset_confirm",
        args=[urlsafe_base64_encode(force_bytes(owner.pk)), default_token_generator.make_token(owner)],
    )
    assert autofocused_ids(client.get(link, follow=True).text) == ["id_new_password1"]
    client.force_login(owner)
    assert autofocused_ids(client.get(reverse("dashboard:password_change")).text) == ["id_old_password"]


def test_the_invitation_page_focuses_its_first_field(client, org, owner):
    _, secret = invite(org=org, email="new@acme.test", role="member", actor=owner)
    assert autofocused_ids(client.get(reverse("dashboard:accept_invitation", args=[secret])).text) == ["id_name"]


@pytest.mark.parametrize("name", ["key_create", "deployment_create"])
def test_create_pages_focus_their_first_field(as_owner, name):
    assert autofocused_ids(as_owner.get(reverse(f"dashboard:{name}")).text) == ["id_name"]


def test_the_key_edit_page_focuses_the_name(as_owner, org):
    key, _ = create_api_key(org=org, name="ci")
    assert autofocused_ids(as_owner.get(reverse("dashboard:key_edit", args=[key.pk])).text) == ["id_name"]


@pytest.mark.parametrize("name", ["members", "profile", "alerts", "keys", "usage", "audit", "requests"])
def test_pages_that_are_more_than_a_form_take_no_field_s_focus(as_owner, name):
    # Focus in the middle of a list page would skip its content for a screen reader.
    assert autofocused_ids(as_owner.get(reverse(f"dashboard:{name}")).text) == []


def test_a_page_of_several_forms_takes_no_field_s_focus(as_owner, deployment):
    assert autofocused_ids(as_owner.get(reverse("dashboard:deployment_detail", args=[deployment.pk])).text) == []


def test_an_invalid_key_starts_with_a_summary_linking_each_field_and_no_autofocus(as_owner, deployment):
    response = as_owner.post(
        reverse("dashboard:key_create"),
        {"form_token": new_form_token(), "name": "", "rpm_limit": "0", "deployments": ["999"]},
    )
    assert response.status_code == 200
    found = summary(response.text)
    assert "There are 3 problems" in found
    assert '<a href="#id_name">Name: This field is required.</a>' in found
    assert 'href="#id_rpm_limit">Requests per minute: Ensure this value is greater than or equal to 1.' in found
    assert 'href="#id_deployments_0">Model access: Select a valid choice.' in found  # a list of boxes: the first
    assert 'id="id_deployments_0"' in response.text
    assert autofocused_ids(response.text) == []
    # The summary comes first in the form; the messages stay next to their fields too.
    form = response.text.split('<form method="post" class="stack card" novalidate>')[1]
    assert form.index("data-error-summary") < form.index('<label for="id_name">')
    assert 'aria-invalid="true"' in response.text


def test_an_invalid_deployment_name_is_summarised(as_owner):
    prices = {"form_token": new_form_token(), "price_input_micros": "0", "price_output_micros": "0"}
    response = as_owner.post(reverse("dashboard:deployment_create"), {"name": "Not Valid!", **prices})
    assert 'href="#id_name">Name:' in summary(response.text)
    response = as_owner.post(
        reverse("dashboard:deployment_create"),
        {"form_token": new_form_token(), "name": "ok-name", "price_input_micros": "0"},
    )
    assert 'href="#id_price_output_micros">Output price (USD per million tokens):' in summary(response.text)


def test_a_wrong_password_is_summarised_without_a_link(client, owner):
    response = client.post(reverse("dashboard:login"), {"username": "owner@acme.test", "password": "nope"})
    found = summary(response.text)
    assert "Please enter a correct email and password" in found and "href=" not in found


def test_a_form_lower_on_a_page_gets_its_own_summary(as_owner, deployment):
    response = as_owner.post(reverse("dashboard:deployment_grant_create", args=[deployment.pk]), {"org": "org_nope"})
    found = summary(response.text)
    assert 'href="#id_org">Share ID:' in found
    grants = response.text.split('id="grants-heading"')[1]
    assert "data-error-summary" in grants  # inside the form that failed, not at the top of the page


def test_an_invalid_invitation_is_summarised_in_the_invite_form(as_owner):
    response = as_owner.post(reverse("dashboard:member_add"), {"email": "not an address", "role": "member"})
    assert 'href="#id_email">Email: Enter a valid email address.' in summary(response.text)


def test_an_invalid_usage_filter_is_summarised_in_the_filter_form(as_owner):
    response = as_owner.get(reverse("dashboard:usage"), {"start": "2026-12-10", "end": "2026-12-01"})
    assert response.status_code == 400
    assert "There is a problem" in summary(response.text)


def test_a_valid_page_has_no_summary(as_owner):
    assert "data-error-summary" not in as_owner.get(reverse("dashboard:key_create")).text
    assert "data-error-summary" not in as_owner.get(reverse("dashboard:usage")).text


def test_error_items_lists_the_forms_own_errors_first(org):
    form = ApiKeyForm({"name": "", "rpm_limit": "0"}, org=org)
    form.is_valid()
    form.add_error(None, "The organisation has too many keys.")
    items = error_items(form)
    assert items[0] == {"text": "The organisation has too many keys.", "target": "", "label": ""}
    assert [i["target"] for i in items[1:]] == ["id_name", "id_rpm_limit"]


def test_every_table_scrolls_in_its_own_labelled_focusable_region(as_owner, org, deployment, member):
    create_api_key(org=org, name="n" * 100)
    for name in ["overview", "keys", "members", "deployments"]:
        html = as_owner.get(reverse(f"dashboard:{name}")).text
        tables = html.count("<table")
        regions = len(re.findall(r'<div class="table-wrap[^"]*" tabindex="0" role="region" aria-label="[^"]+">', html))
        assert tables > 0 and regions == tables, name


def test_a_long_key_name_is_cut_in_the_list_with_its_whole_value_in_the_title(as_owner, org):
    name = "n" * 100
    create_api_key(org=org, name=name)
    html = as_owner.get(reverse("dashboard:keys")).text
    assert f'<span class="clip" title="{name}">{name}</span>' in html


def test_the_header_keeps_the_whole_email_and_org_name_in_titles(org, owner):
    owner.email = "o" * 200 + "@acme.test"
    owner.save()
    org.name = "Acme" * 50
    org.save()
    client = Client()
    client.force_login(owner)
    html = client.get("/").text
    assert f'class="who" href="{reverse("dashboard:profile")}" title="{owner.email}"' in html
    assert f'class="org-name" title="{org.name}"' in html
