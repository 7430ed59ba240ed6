from __future__ import annotations

from django.db import models
from django.utils import timezone

from accounts.models import ApiKey, Organization


class StoredResponseQuerySet(models.QuerySet["StoredResponse"]):
    def for_org(self, org_id: int) -> StoredResponseQuerySet:
        return self.filter(org_id=org_id)


class StoredResponse(models.Model):
    """A /v1/responses result kept (store=true) for `previous_response_id` and retrieval.

    Private to the org whose key created it: every lookup goes through `for_org`.
    """

    id = models.CharField(primary_key=True, max_length=64)
    org = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    api_key = models.ForeignKey(ApiKey, null=True, on_delete=models.SET_NULL, related_name="+")
    model = models.CharField(max_length=64)
    # The whole conversation up to and including this response, as Responses input items,
    # so that a chain is one lookup however long it grows.
    items = models.JSONField(default=list)
    response = models.JSONField(default=dict)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    objects = StoredResponseQuerySet.as_manager()

    def __str__(self) -> str:
        return self.id
