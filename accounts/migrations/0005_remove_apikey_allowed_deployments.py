# The key → deployment list becomes Deployment.allowed_keys (deployments 0002), on the same table:
# only the state moves, so that accounts no longer refers to deployments.

from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ('accounts', '0004_invitation_personalaccesstoken'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.RemoveField(model_name='apikey', name='allowed_deployments')],
            database_operations=[],
        ),
    ]
