# A share ID for every organisation made before 0009: 128 random bits each, as new_share_id makes.

import secrets

from django.db import migrations


def fill_share_ids(apps, schema_editor):
    Organization = apps.get_model('accounts', 'Organization')
    orgs = list(Organization.objects.filter(share_id__isnull=True).only('pk'))
    for org in orgs:
        org.share_id = 'org_' + secrets.token_urlsafe(16)
    Organization.objects.bulk_update(orgs, ['share_id'], batch_size=500)


class Migration(migrations.Migration):

    dependencies = [
        ('accounts', '0009_organization_share_id'),
    ]

    operations = [
        migrations.RunPython(fill_share_ids, migrations.RunPython.noop, elidable=True),
    ]
