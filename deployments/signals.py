from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from accounts.access import invalidate_deployment

from .models import Deployment, ModelGrant


@receiver(post_save, sender=Deployment)
@receiver(post_delete, sender=Deployment)
def forget_deleted_deployment(sender, instance: Deployment, **kwargs) -> None:
    invalidate_deployment(instance.name)


@receiver(post_save, sender=ModelGrant)
@receiver(post_delete, sender=ModelGrant)
def forget_deleted_grant(sender, instance: ModelGrant, **kwargs) -> None:
    # Grants deleted in bulk (an org removed, admin bulk delete) bypass revoke_grant.
    invalidate_deployment(instance.deployment.name)
