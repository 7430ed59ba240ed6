"""The request log: every /v1 request of an org (its UsageEvent), filtered and paged, for the
dashboard's request log and the management API (`/api/orgs/{org}/requests/`).

Who sees what: owners and admins see every request of their org; a member sees the requests made
with the keys they created (`ApiKey.created_by`). A request refused with 401 names no key and no
org, so it appears in no log. Events are pruned after `TOKIOS_USAGE_RETENTION_DAYS`
(billing.rollups.prune_events), so the log reaches back that far and no further.

Pages are keyset pages over (created_at, id), newest first: the page a million rows in costs what
the first one does (an index range, never an OFFSET), and there is no total count. A cursor is the
(created_at, id) of a page's edge row, as `<epoch microseconds>-<id>`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django import forms
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import OperationalError, connection, transaction
from django.db.models import Q, QuerySet
from psycopg.errors import QueryCanceled

from accounts.models import ApiKey, Membership
from accounts.tenancy import can_manage
from deployments.models import Deployment

from .models import MAX_REQUESTED_MODEL_CHARS, UsageEvent, UsageEventQuerySet

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
QUERY_TIMEOUT_MS = 5000  # PostgreSQL: a page that takes longer is refused (see read_bounded)
# The instants a filter or a cursor may name, as the usage filter's days (billing.forms).
FIRST_INSTANT = datetime(2000, 1, 1, tzinfo=UTC)
LAST_INSTANT = datetime(2999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
INSTANT_RANGE = "Pick a time from 2000-01-01 to 2999-12-31 (UTC)."
MAX_ID = 2**63 - 1
CURSOR_RE = re.compile(r"(\d{1,17})-(\d{1,19})")
REQUEST_ID_RE = re.compile(r"[A-Za-z0-9_]{1,64}")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def visible_keys(membership: Membership) -> QuerySet[ApiKey]:
    """The keys whose requests `membership` may see: all of the org's for owners and admins, the
    ones they created for members."""
    keys = ApiKey.objects.for_org(membership.org)
    return keys if can_manage(membership) else keys.filter(created_by_id=membership.user_id)


def visible_events(membership: Membership) -> UsageEventQuerySet:
    """The events `membership` may see. For a member, their keys' ids are read first (a short list,
    which the (api_key, created_at) index serves, rather than a join on the keys table)."""
    events = UsageEvent.objects.for_org(membership.org)
    if can_manage(membership):
        return events
    return events.for_keys(list(visible_keys(membership).values_list("id", flat=True)))


def find_request(membership: Membership, request_id: str) -> UsageEvent | None:
    """One request by its id, if `membership` may see it (else None: the caller answers 404)."""
    if not REQUEST_ID_RE.fullmatch(request_id):
        return None
    return visible_events(membership).select_related("api_key", "deployment").filter(request_id=request_id).first()


@dataclass(frozen=True)
class Cursor:
    created_at: datetime
    id: int

    @classmethod
    def of(cls, event: UsageEvent) -> Cursor:
        return cls(event.created_at, event.id)

    def __str__(self) -> str:
        delta = self.created_at - _EPOCH
        micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
        return f"{micros}-{self.id}"

    @classmethod
    def parse(cls, text: str) -> Cursor:
        """A cursor from a query string; ValidationError unless it names an instant and an id in range."""
        match = CURSOR_RE.fullmatch(text)
        if match is not None:
            micros, row_id = int(match[1]), int(match[2])
            if 0 < row_id <= MAX_ID:
                moment = _EPOCH + timedelta(microseconds=micros)  # 17 digits: year 5138 at most
                if FIRST_INSTANT <= moment <= LAST_INSTANT:
                    return cls(moment, row_id)
        raise ValidationError("Not a page of this log; start again from the newest requests.", code="cursor")


class InstantField(forms.DateTimeField):
    """An aware UTC instant from 2000 to 2999, typed as ISO 8601 (`2026-12-05T10:30`, an offset optional)."""

    default_validators = [
        MinValueValidator(FIRST_INSTANT, INSTANT_RANGE),
        MaxValueValidator(LAST_INSTANT, INSTANT_RANGE),
    ]

    def __init__(self, **kwargs):
        kwargs.setdefault("widget", forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"))
        super().__init__(**kwargs)


class CursorField(forms.CharField):
    def __init__(self, **kwargs):
        super().__init__(required=False, max_length=40, widget=forms.HiddenInput, **kwargs)

    def clean(self, value: Any) -> Cursor | None:
        text = super().clean(value)
        return Cursor.parse(text) if text else None


class RequestLogFilter(forms.Form):
    """The request log's filters and page (dashboard and API). Every bound is checked here: a bad
    value is a form error (a 400), never a query."""

    request_id = forms.CharField(
        required=False,
        max_length=64,
        label="Request id",
        widget=forms.TextInput(attrs={"placeholder": "req_…", "spellcheck": "false", "autocomplete": "off"}),
    )
    key = forms.ModelChoiceField(
        queryset=ApiKey.objects.none(), required=False, empty_label="All keys", label="API key"
    )
    model = forms.CharField(
        required=False,
        max_length=MAX_REQUESTED_MODEL_CHARS,
        label="Model",
        widget=forms.TextInput(attrs={"list": "request-models", "spellcheck": "false", "autocomplete": "off"}),
    )
    status = forms.IntegerField(required=False, min_value=100, max_value=599, label="Status")
    errors_only = forms.BooleanField(required=False, label="Errors only")
    since = InstantField(required=False, label="From (UTC)")
    until = InstantField(required=False, label="Before (UTC)")
    limit = forms.IntegerField(required=False, min_value=1, max_value=MAX_PAGE_SIZE, label="Per page")
    before = CursorField()
    after = CursorField()

    def __init__(self, data, *, membership: Membership):
        super().__init__(data)
        self.membership = membership
        self.fields["key"].queryset = visible_keys(membership).order_by("name", "id")  # type: ignore[attr-defined]
        self.fields["limit"].widget.attrs["placeholder"] = str(DEFAULT_PAGE_SIZE)

    def clean(self) -> dict[str, Any]:
        super().clean()
        data = self.cleaned_data
        if data.get("before") and data.get("after"):
            raise ValidationError("Ask for the page before a request or after one, not both.")
        since, until = data.get("since"), data.get("until")
        if since and until and since >= until:
            raise ValidationError("“From” must be before “Before”.")
        return data

    def events(self) -> UsageEventQuerySet:
        """The events matching the filters, unpaged (call after `is_valid()`)."""
        data = self.cleaned_data
        events = visible_events(self.membership)
        if data["request_id"]:
            events = events.filter(request_id=data["request_id"])
        if data["key"] is not None:
            events = events.filter(api_key=data["key"])
        if data["model"]:
            named = Deployment.objects.filter(name=data["model"]).values_list("id", flat=True).first()
            events = events.for_model(data["model"], named)
        if data["status"] is not None:
            events = events.filter(status_code=data["status"])
        if data["errors_only"]:
            events = events.errors()
        if data["since"] is not None:
            events = events.filter(created_at__gte=data["since"])
        if data["until"] is not None:
            events = events.filter(created_at__lt=data["until"])
        return events

    def page(self) -> RequestPage | None:
        """The page asked for (call after `is_valid()`), or None with a form error when reading it
        took longer than QUERY_TIMEOUT_MS."""
        data = self.cleaned_data
        try:
            return request_page(
                self.events().select_related("api_key", "deployment"),
                limit=data["limit"] or DEFAULT_PAGE_SIZE,
                before=data["before"],
                after=data["after"],
            )
        except SearchTooSlow:
            self.add_error(
                None,
                f"This search took more than {QUERY_TIMEOUT_MS / 1000:g} s without filling a page; "
                "narrow it with a time range or a key.",
            )
            return None


class SearchTooSlow(Exception):
    """Reading a page took longer than QUERY_TIMEOUT_MS (PostgreSQL stopped the query)."""


def read_bounded(events: QuerySet[UsageEvent]) -> list[UsageEvent]:
    """The rows of `events`; on PostgreSQL, SearchTooSlow past QUERY_TIMEOUT_MS.

    Every filter is served by an index except a rare model name or status, which PostgreSQL finds by
    reading the org's requests until a page is full (about 300 ms per 2 million measured): on a
    large table that must not hold a database connection, and a web worker, for minutes."""
    if connection.vendor != "postgresql":
        return list(events)
    try:
        with transaction.atomic(using=events.db), connection.cursor() as cursor:
            cursor.execute("SELECT set_config('statement_timeout', %s, true)", [f"{QUERY_TIMEOUT_MS}ms"])
            return list(events)
    except OperationalError as exc:
        if isinstance(exc.__cause__, QueryCanceled):
            raise SearchTooSlow from None
        raise


@dataclass(frozen=True)
class RequestPage:
    events: list[UsageEvent]
    newer: Cursor | None  # `after=` for the page of newer requests (None: this is the newest, or none came since)
    older: Cursor | None  # `before=` for the page of older requests (None: nothing older)
    first: bool  # the newest page (no cursor asked for)


def request_page(
    events: UsageEventQuerySet, *, limit: int, before: Cursor | None = None, after: Cursor | None = None
) -> RequestPage:
    """One page of `events`, newest first: the newest, or those just older than `before`, or those
    just newer than `after`. One query; `limit` + 1 rows are read to know whether more follow."""
    # `created_at >= c` (or `<=`) on its own, so that PostgreSQL bounds its index range with it.
    if after is not None:
        newer = events.filter(created_at__gte=after.created_at).filter(
            Q(created_at__gt=after.created_at) | Q(id__gt=after.id)
        )
        rows = read_bounded(newer.order_by("created_at", "id")[: limit + 1])
        more_newer = len(rows) > limit
        rows = rows[:limit][::-1]
        return RequestPage(
            events=rows,
            newer=Cursor.of(rows[0]) if more_newer else None,
            older=Cursor.of(rows[-1]) if rows else None,
            first=False,
        )
    if before is not None:
        events = events.filter(created_at__lte=before.created_at).filter(
            Q(created_at__lt=before.created_at) | Q(id__lt=before.id)
        )
    rows = read_bounded(events.order_by("-created_at", "-id")[: limit + 1])
    more_older = len(rows) > limit
    rows = rows[:limit]
    return RequestPage(
        events=rows,
        newer=Cursor.of(rows[0]) if before is not None and rows else None,
        older=Cursor.of(rows[-1]) if more_older else None,
        first=before is None,
    )
