"""accounts.once: a form's one-time token makes its object once, also when two submissions race."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from accounts import once
from accounts.actions import create_api_key
from accounts.models import ApiKey, SubmittedForm
from accounts.once import KEEP_FOR, AlreadySubmitted, new_form_token, submit_once

pytestmark = pytest.mark.django_db

KIND = SubmittedForm.Kind.API_KEY


def make_key(owner, org, token: str) -> ApiKey:
    with submit_once(user=owner, token=token, kind=KIND) as claim:
        key, _ = create_api_key(org=org, name="once")
        claim.made(key)
    return key


def test_the_same_token_makes_one_object_and_then_names_it(owner, org):
    token = new_form_token()
    key = make_key(owner, org, token)
    with pytest.raises(AlreadySubmitted) as again:
        make_key(owner, org, token)
    assert (again.value.submitted.object_id, again.value.submitted.kind) == (key.pk, KIND)
    assert ApiKey.objects.count() == 1


def test_another_token_or_another_user_makes_another(owner, admin, org):
    token = new_form_token()
    make_key(owner, org, token)
    make_key(owner, org, new_form_token())
    make_key(admin, org, token)  # tokens are per user
    assert ApiKey.objects.count() == 3


def test_a_submission_that_loses_the_race_is_rolled_back_whole(owner, org, monkeypatch):
    """Two submissions of one page at once: both pass the first look-up; the one that inserts the
    token second fails on the unique constraint, and its key goes with it."""
    token = new_form_token()
    winner = make_key(owner, org, token)
    lookups = iter([None])  # this submission's first look-up ran before the winner committed
    real = once.earlier_submission
    monkeypatch.setattr(once, "earlier_submission", lambda **kw: next(lookups, None) or real(**kw))
    with pytest.raises(AlreadySubmitted) as lost:
        with submit_once(user=owner, token=token, kind=KIND) as claim:
            key, _ = create_api_key(org=org, name="loser")
            claim.made(key)
    assert lost.value.submitted.object_id == winner.pk
    assert not ApiKey.objects.filter(name="loser").exists()


def test_a_failed_block_leaves_the_token_free(owner, org):
    token = new_form_token()
    with pytest.raises(RuntimeError):
        with submit_once(user=owner, token=token, kind=KIND):
            create_api_key(org=org, name="half")
            raise RuntimeError("the block failed")
    assert not ApiKey.objects.exists() and not SubmittedForm.objects.exists()
    make_key(owner, org, token)
    assert ApiKey.objects.count() == 1


def test_a_block_that_reports_nothing_is_a_bug_and_rolls_back(owner, org):
    with pytest.raises(RuntimeError, match="made nothing"):
        with submit_once(user=owner, token=new_form_token(), kind=KIND):
            create_api_key(org=org, name="unreported")
    assert not ApiKey.objects.exists()


@pytest.mark.parametrize("token", ["", "short", "x" * 65, "has space in it!", "\x00" * 20])
def test_a_malformed_token_is_refused(owner, token):
    with pytest.raises(ValueError):
        with submit_once(user=owner, token=token, kind=KIND):
            pass


def test_old_records_are_pruned(owner, org):
    old = SubmittedForm.objects.create(user=owner, token=new_form_token(), kind=KIND, object_id=1)
    SubmittedForm.objects.filter(pk=old.pk).update(created_at=timezone.now() - KEEP_FOR - timedelta(minutes=1))
    make_key(owner, org, new_form_token())
    assert not SubmittedForm.objects.filter(pk=old.pk).exists() and SubmittedForm.objects.count() == 1
