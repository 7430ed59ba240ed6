"""Fuzzing the request log's query string (dashboard page, request page and API): whatever a person or
a script types, the answer is a page or a 4xx, never a 5xx. Sized by budget.py. (The API endpoint
is also in schemathesis' run over the whole schema, test_api_fuzz.py.)"""

from __future__ import annotations

from urllib.parse import quote, urlencode

import pytest
from django.test import Client
from hypothesis import event, given, note
from hypothesis import strategies as st

from accounts.actions import create_api_key
from dashboard.tests.request_data import request_event

from .budget import fuzz
from .known import ServerErrors
from .strategies import EDGE_INTS, odd_strings

pytestmark = pytest.mark.django_db

numbers = st.one_of(st.integers(), st.sampled_from(EDGE_INTS), st.text(max_size=8)).map(str)
instants = st.one_of(
    st.datetimes().map(lambda d: d.isoformat()),
    st.sampled_from(
        [
            "9999-12-31T23:59:59-23:59",
            "0001-01-01T00:00:00+23:59",
            "2026-12-05T10:30",
            "2026-12-05T10:30:00Z",
            "2026-02-30T00:00",
            "2026-12-05T25:00",
            "10000-01-01T00:00",
            "2026-12-05T10:30:00+99:00",
        ]
    ),
    st.text(max_size=24),
)
cursors = st.one_of(
    st.tuples(st.integers(min_value=-1, max_value=10**18), st.integers(min_value=-1, max_value=2**64)).map(
        lambda pair: f"{pair[0]}-{pair[1]}"
    ),
    st.text(max_size=40),
    odd_strings,
)
queries = st.fixed_dictionaries(
    {},
    optional={
        "request_id": st.text(max_size=70) | odd_strings,
        "key": numbers,
        "model": st.text(max_size=8) | odd_strings,
        "status": numbers,
        "errors_only": st.sampled_from(["on", "true", "false", "0", "", "x"]),
        "since": instants,
        "until": instants,
        "limit": numbers,
        "before": cursors,
        "after": cursors,
    },
)


@pytest.fixture
def browser(owner, org, key, member, deployment) -> Client:
    """Acme's owner, signed in, with a few requests in the log; a 500 is answered, not raised."""
    mine = create_api_key(org=org, name="member's", created_by=member)[0]
    for minutes, used in enumerate((key, mine, None)):
        request_event(org, key=used, deployment=deployment, minutes_ago=minutes)
    client = Client(raise_request_exception=False)
    client.force_login(owner)
    return client


def get(client: Client, url: str, **headers) -> None:
    with ServerErrors() as errors:
        response = client.get(url, **headers)
    note(f"GET {url} -> {response.status_code}: {errors.describe()}")
    event(f"{url.split('?')[0]}: {response.status_code}")
    assert response.status_code < 500, errors.describe()


@fuzz(weight=1)
@given(query=queries)
def test_no_query_makes_the_request_log_fail(browser, org, query):
    encoded = urlencode(query)
    get(browser, f"/requests/?{encoded}")
    get(browser, f"/api/orgs/{org.slug}/requests/?{encoded}", HTTP_ACCEPT="application/json")


@fuzz(weight=0.5)
@given(request_id=st.text(max_size=80) | odd_strings)
def test_no_request_id_makes_the_request_page_fail(browser, request_id):
    get(browser, f"/requests/{quote(request_id, safe='')}/")
