from __future__ import annotations

from datetime import datetime, timedelta

from django.db import connection, models
from django.utils import timezone

from accounts.models import ApiKey, Organization


class StoredResponseQuerySet(models.QuerySet["StoredResponse"]):
    def for_org(self, org_id: int) -> StoredResponseQuerySet:
        return self.filter(org_id=org_id)

    def chain(self, *, org_id: int, response_id: str) -> list[StoredResponse]:
        """The conversation that ends with `response_id`, oldest turn first, in one query (a
        recursive walk of the `previous_response_id` links, within the org, at most MAX_TURNS rows).
        Empty if the org has no such response. Rows carry only `id`, `items`, the links and sizes."""
        table = connection.ops.quote_name(StoredResponse._meta.db_table)
        query = f"""
            WITH RECURSIVE walk (id, previous_response_id, steps) AS (
                SELECT id, previous_response_id, 0 FROM {table} WHERE id = %s AND org_id = %s
                UNION ALL
                SELECT r.id, r.previous_response_id, walk.steps + 1
                FROM {table} r JOIN walk ON r.id = walk.previous_response_id
                WHERE r.org_id = %s AND walk.steps < %s
            )
            SELECT r.id, r.items, r.previous_response_id, r.thread, r.turn, r.conversation_bytes
            FROM {table} r JOIN walk ON r.id = walk.id
            ORDER BY walk.steps DESC
        """  # noqa: S608 (the table name is the model's own; values are parameters)
        return list(self.raw(query, [response_id, org_id, org_id, StoredResponse.MAX_TURNS]))

    def idle_since(self, cutoff: datetime) -> StoredResponseQuerySet:
        """Responses of conversations with no turn stored since `cutoff` (a conversation goes as a
        whole, so no chain still in use loses its start)."""
        active = StoredResponse.objects.filter(created_at__gte=cutoff).values("thread")
        return self.filter(created_at__lt=cutoff).exclude(thread__in=active)

    def prune(self, *, now: datetime, days: int, batch: int = 2000) -> int:
        """Delete the conversations idle for `days`; returns how many responses went. Batched, so
        that no single statement holds locks on a large table for long."""
        cutoff = now - timedelta(days=days)
        deleted = 0
        while True:
            ids = list(self.idle_since(cutoff).values_list("pk", flat=True)[:batch])
            if not ids:
                return deleted
            deleted += StoredResponse.objects.filter(pk__in=ids).delete()[0]


class StoredResponse(models.Model):
    """A /v1/responses result kept (store=true) for `previous_response_id` and retrieval.

    Each row holds its own turn only: the input items the request brought and the output items the
    model gave, linked to the response it continued. A conversation is read back by walking the links
    (`StoredResponse.objects.chain`); it may grow to MAX_TURNS turns and, with the next request's
    body, to settings.MAX_BODY_BYTES of items, so a chain never costs more than one request could.
    Rows stored before the links existed hold their whole conversation and start their own thread.

    Private to the org whose key created it: every lookup goes through `for_org` or `chain`.
    """

    MAX_TURNS = 4096

    id = models.CharField(primary_key=True, max_length=64)
    org = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    api_key = models.ForeignKey(ApiKey, null=True, on_delete=models.SET_NULL, related_name="+")
    model = models.CharField(max_length=64)
    # This turn's input items then its output items, as Responses items.
    items = models.JSONField(default=list)
    response = models.JSONField(default=dict)
    # The response this one continued ("" for the first turn), the first response of the
    # conversation (what retention counts from), and this turn's number in it.
    previous_response_id = models.CharField(max_length=64, blank=True, default="")
    thread = models.CharField(max_length=64, db_index=True)
    turn = models.PositiveIntegerField(default=1)
    # Bytes of items (as JSON) in the conversation up to and including this turn.
    conversation_bytes = models.BigIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    objects = StoredResponseQuerySet.as_manager()

    def __str__(self) -> str:
        return self.id
