# Every personal access token now has an organisation and an expiry (filled in by 0007).

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('accounts', '0007_pat_org_role_throttle'),
    ]

    operations = [
        migrations.AlterField(
            model_name='personalaccesstoken',
            name='org',
            field=models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='access_tokens', to='accounts.organization'),
        ),
        migrations.AlterField(
            model_name='personalaccesstoken',
            name='expires_at',
            field=models.DateTimeField(),
        ),
    ]
