"""One-time form tokens: a create form submitted twice (a reload of the page it answered, a double
click, the back button) makes its object once.

The form carries a random token from the page that showed it. The view makes the object inside
`submit_once`, which records the token with what was made (`SubmittedForm`) in the same
transaction. The same token again finds that record and raises `AlreadySubmitted`, so the view
shows "already created" instead of making a second object. Two submissions at the same instant
both try to insert the token; the unique constraint lets one commit and rolls the other back
whole, object included.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

from django.db import IntegrityError, models, transaction
from django.utils import timezone

from .models import SubmittedForm, User

TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{16,64}")
# A form page older than this cannot be told from a new one any more: its record is deleted (the
# token of a page left open longer than this makes its object again).
KEEP_FOR = timedelta(days=7)


def new_form_token() -> str:
    return secrets.token_urlsafe(24)


class AlreadySubmitted(Exception):
    def __init__(self, submitted: SubmittedForm):
        super().__init__(f"form {submitted.kind} already submitted")
        self.submitted = submitted


class Claim:
    """What the block inside `submit_once` made: it calls `made(obj)` once the object exists."""

    def __init__(self) -> None:
        self.obj: models.Model | None = None
        self.label = ""

    def made(self, obj: models.Model, label: str = "") -> None:
        self.obj = obj
        self.label = label or str(obj)


def earlier_submission(*, user: User, token: str) -> SubmittedForm | None:
    return SubmittedForm.objects.filter(user=user, token=token).first()


@contextmanager
def submit_once(*, user: User, token: str, kind: str) -> Iterator[Claim]:
    """Run the block (which makes one object and reports it with `claim.made(obj)`) unless `token`
    was submitted before; then raise AlreadySubmitted with the earlier record. The block and the
    record commit together or not at all."""
    if not TOKEN_RE.fullmatch(token):
        raise ValueError("not a form token")
    earlier = earlier_submission(user=user, token=token)
    if earlier is not None:
        raise AlreadySubmitted(earlier)
    claim = Claim()
    try:
        with transaction.atomic():
            yield claim
            if claim.obj is None:
                raise RuntimeError("submit_once: the block made nothing (call claim.made(obj))")
            SubmittedForm.objects.create(
                user=user, token=token, kind=kind, object_id=claim.obj.pk, label=claim.label[:200]
            )
    except IntegrityError:
        # Another submission of the same token committed first (a double click).
        earlier = earlier_submission(user=user, token=token)
        if earlier is None:
            raise
        raise AlreadySubmitted(earlier) from None
    SubmittedForm.objects.filter(created_at__lt=timezone.now() - KEEP_FOR).delete()
