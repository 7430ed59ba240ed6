"""The audit log's search: by a key's or token's name (their rows name them by prefix), over the
target and the details; and details in words, not Python's list repr."""

from __future__ import annotations

import pytest
from django.urls import reverse

from accounts.actions import audit, revoke_api_key, update_api_key
from deployments.actions import revoke_connector_token

from .test_audit_page import table

pytestmark = pytest.mark.django_db


def search(client, text: str) -> str:
    return table(client.get(reverse("dashboard:audit"), {"target": text}))


def test_a_keys_name_finds_every_entry_about_it_even_those_naming_it_by_prefix(as_owner, owner, key, restricted_key):
    revoke_api_key(key=key, actor=owner)
    page = search(as_owner, "BACK")  # the key is "backend"; any case
    assert "API key created" in page and "API key revoked" in page
    assert page.count(f"<code>{key.prefix}</code>") == 2
    assert restricted_key.prefix not in page


def test_a_key_is_found_by_its_new_name_after_a_rename(as_owner, owner, key):
    update_api_key(key=key, name="nightly-batch", actor=owner)
    page = search(as_owner, "nightly")
    assert "API key created" in page and "API key updated" in page


def test_the_details_are_searched(as_owner, restricted_key, deployment):
    # restricted_key's row holds models=["gemma-tunnel"] in its details, not in its target.
    page = search(as_owner, "gemma-tun")
    assert restricted_key.prefix in page and "API key created" in page


def test_details_with_quotes_and_accents_are_found(as_owner, org):
    audit(org=org, action="key.updated", target="t-1", note='the "Zürich" box')
    audit(org=org, action="key.updated", target="t-2", note="elsewhere")
    assert "t-1" in search(as_owner, "zürich") and "t-2" not in search(as_owner, "zürich")
    assert "t-1" in search(as_owner, '"Zürich"')


def test_a_connector_tokens_name_finds_its_entries(as_owner, owner, connector_token):
    revoke_connector_token(token=connector_token, actor=owner)
    page = search(as_owner, "gpu-bo")
    assert "Connector token created" in page and "Connector token revoked" in page


def test_another_orgs_key_of_the_same_name_finds_nothing_here(as_owner, other_key):
    page = as_owner.get(reverse("dashboard:audit"), {"target": "globex"}).text
    assert other_key.prefix not in page and "No entry matches" in page


def test_lists_in_details_read_as_comma_separated_names(as_owner, org):
    audit(org=org, action="key.created", target="sk-x", name="two", models=["llama-local", "gemma-tunnel"])
    audit(org=org, action="key.updated", target="sk-y", changes=[], paused=True)
    page = search(as_owner, "sk-")
    assert "models: llama-local, gemma-tunnel" in page
    assert "paused: yes" in page and "changes: —" in page
    assert "[" not in page and "&#x27;" not in page


def test_an_overlong_search_is_refused_with_the_form(as_owner):
    response = as_owner.get(reverse("dashboard:audit"), {"target": "x" * 201})
    assert response.status_code == 400 and "at most 200 characters" in response.text
