# Every organisation has a share ID now (0010): required and unique from here on.

from django.db import migrations, models

import accounts.models


class Migration(migrations.Migration):

    dependencies = [
        ('accounts', '0010_organization_share_id_fill'),
    ]

    operations = [
        migrations.AlterField(
            model_name='organization',
            name='share_id',
            field=models.CharField(default=accounts.models.new_share_id, editable=False, help_text='Given to a model owner who wants to share a model with this organisation; not a secret.', max_length=26, unique=True),
        ),
    ]
