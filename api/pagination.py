"""Pages of the management API's lists: `?limit=` and `?offset=`, bounded."""

from __future__ import annotations

from rest_framework.pagination import LimitOffsetPagination

MAX_PAGE_SIZE = 1000


class BoundedLimitOffsetPagination(LimitOffsetPagination):
    """DRF's limit/offset pages with a largest page: a larger `limit` gets MAX_PAGE_SIZE rows (and
    a `next` link). An `offset` needs no bound: past the row count, DRF answers an empty page
    without a query, so neither number can overflow the database's 64-bit LIMIT and OFFSET."""

    max_limit = MAX_PAGE_SIZE
