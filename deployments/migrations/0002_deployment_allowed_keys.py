# ApiKey.allowed_deployments (accounts 0002) becomes Deployment.allowed_keys on the same table, whose
# columns (apikey_id, deployment_id) are what the auto-created through model of either side names.
# Only the state changes; `key.allowed_deployments` stays the accessor from the key's side.

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('accounts', '0005_remove_apikey_allowed_deployments'),
        ('deployments', '0001_initial'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AddField(
                    model_name='deployment',
                    name='allowed_keys',
                    field=models.ManyToManyField(blank=True, db_table='accounts_apikey_allowed_deployments', related_name='allowed_deployments', to='accounts.apikey'),
                ),
            ],
            database_operations=[],
        ),
    ]
