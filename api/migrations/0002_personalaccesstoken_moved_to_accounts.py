# PersonalAccessToken now belongs to accounts (accounts 0004), on the same table: only the state moves.

from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ('api', '0001_initial'),
        ('accounts', '0004_invitation_personalaccesstoken'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.DeleteModel(name='PersonalAccessToken')],
            database_operations=[],
        ),
    ]
