"""Secrets are stored hashed: no row anywhere holds a key or token in plain text."""

from __future__ import annotations

import pytest
from django.apps import apps
from django.db import connection

from accounts.secrets import API_KEY_PREFIX, CONNECTOR_TOKEN_PREFIX, hash_secret


def all_text_in_database() -> str:
    chunks = []
    tables = set(connection.introspection.table_names())
    with connection.cursor() as cursor:
        for model in apps.get_models():
            table = model._meta.db_table
            if table not in tables:
                continue
            cursor.execute(f'SELECT * FROM "{table}"')
            for row in cursor.fetchall():
                chunks.append(" ".join(str(value) for value in row))
    return "\n".join(chunks)


@pytest.mark.django_db
def test_the_database_never_holds_a_plaintext_key_or_token(key, connector_token):
    _, secret = key
    _, token = connector_token
    assert secret.startswith(API_KEY_PREFIX) and token.startswith(CONNECTOR_TOKEN_PREFIX)
    text = all_text_in_database()
    assert secret not in text
    assert token not in text
    assert secret[len(API_KEY_PREFIX) + 8 :] not in text  # not even the part after the prefix
    assert hash_secret(secret) in text  # what is stored is the hash


@pytest.mark.django_db
def test_keys_have_high_entropy_and_a_short_display_prefix(org):
    from accounts.actions import create_api_key

    keys = [create_api_key(org=org, name=f"k{i}") for i in range(3)]
    secrets = {secret for _, secret in keys}
    assert len(secrets) == 3
    for api_key, secret in keys:
        assert len(secret) >= len(API_KEY_PREFIX) + 40
        assert secret.startswith(api_key.prefix)
        assert len(api_key.prefix) == len(API_KEY_PREFIX) + 8


@pytest.mark.django_db
def test_key_creation_and_revocation_are_audited(org, owner, key):
    from accounts.actions import revoke_api_key
    from accounts.models import AuditAction, AuditLog

    revoke_api_key(key=key[0], actor=owner)
    actions = list(AuditLog.objects.for_org(org).values_list("action", flat=True))
    assert AuditAction.KEY_CREATED in actions
    assert AuditAction.KEY_REVOKED in actions
    entry = AuditLog.objects.get(action=AuditAction.KEY_REVOKED)
    assert entry.actor == owner and entry.target == key[0].prefix
