"""Changes made outside the action functions (Django admin, bulk edits) still reach the access
cache: any save or delete of a key or an organisation forgets the affected cached records."""

from django.db.models.signals import m2m_changed, post_delete, post_save
from django.dispatch import receiver

from .access import invalidate_key
from .models import ApiKey, Organization


@receiver(post_save, sender=ApiKey)
@receiver(post_delete, sender=ApiKey)
def forget_key(sender, instance: ApiKey, **kwargs) -> None:
    invalidate_key(instance.key_hash)


@receiver(m2m_changed, sender=ApiKey.allowed_deployments.through)
def forget_key_models(sender, instance, **kwargs) -> None:
    if isinstance(instance, ApiKey):
        invalidate_key(instance.key_hash)


@receiver(post_save, sender=Organization)
def forget_org_keys(sender, instance: Organization, created: bool, **kwargs) -> None:
    # Org-wide limits and budgets travel inside each key's cached record.
    if not created:
        for key_hash in ApiKey.objects.filter(org=instance).values_list("key_hash", flat=True):
            invalidate_key(key_hash)
