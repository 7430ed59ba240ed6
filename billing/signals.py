"""Keep rollups consistent when a key or deployment is deleted.

Rollup rows point at keys and deployments with SET_NULL so the money survives a deletion. Setting
the pointer to NULL could collide with the bucket's existing NULL row (the unique constraint treats
NULL as one value), so the deleted object's rows are first folded into that row.
"""

from __future__ import annotations

from django.db.models.signals import pre_delete
from django.dispatch import receiver

from accounts.models import ApiKey
from deployments.models import Deployment

from .models import UsageRollup
from .sums import saturating_add

SUM_FIELDS = ("requests", "errors", "input_tokens", "output_tokens", "cost_micros")


def _fold_into_null(field: str, pk: int) -> None:
    for row in UsageRollup.objects.filter(**{field: pk}):
        target = UsageRollup.objects.filter(
            period=row.period,
            bucket_start=row.bucket_start,
            org_id=row.org_id,
            api_key=None if field == "api_key_id" else row.api_key_id,
            deployment=None if field == "deployment_id" else row.deployment_id,
        )
        if target.update(**{name: saturating_add(name, getattr(row, name)) for name in SUM_FIELDS}):
            row.delete()
        else:
            setattr(row, field, None)
            row.save(update_fields=[field])


@receiver(pre_delete, sender=Deployment, dispatch_uid="billing_fold_deployment_rollups")
def fold_deployment_rollups(sender, instance: Deployment, **kwargs) -> None:
    _fold_into_null("deployment_id", instance.pk)


@receiver(pre_delete, sender=ApiKey, dispatch_uid="billing_fold_key_rollups")
def fold_key_rollups(sender, instance: ApiKey, **kwargs) -> None:
    _fold_into_null("api_key_id", instance.pk)
