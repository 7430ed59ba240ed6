# Personal access tokens get an organisation, a role and a required expiry (0008 makes org and
# expires_at NOT NULL, in its own transaction: PostgreSQL refuses to alter a table whose rows this
# transaction updated while their foreign-key checks are still pending). Password-reset throttling
# gets its counters.
#
# Existing tokens acted in every organisation of their user, with the user's role in each, and
# might never expire. Each is scoped to its user's oldest membership (the org they joined first)
# with the role the user holds there now, and made to expire: in 90 days when it had no expiry,
# in 365 days at the latest. A token whose user belongs to no organisation could do nothing, and is
# deleted. docs/security.md says so to operators.

from datetime import timedelta

import django.db.models.deletion
from django.db import migrations, models
from django.utils import timezone

LIFETIME_WITHOUT_EXPIRY = timedelta(days=90)
LONGEST_LIFETIME = timedelta(days=365)


def scope_existing_tokens(apps, schema_editor):
    Token = apps.get_model("accounts", "PersonalAccessToken")
    Membership = apps.get_model("accounts", "Membership")
    now = timezone.now()
    for token in Token.objects.all().iterator():
        membership = Membership.objects.filter(user_id=token.user_id).order_by("created_at", "id").first()
        if membership is None:
            token.delete()
            continue
        token.org_id = membership.org_id
        token.role = membership.role
        if token.expires_at is None:
            token.expires_at = now + LIFETIME_WITHOUT_EXPIRY
        token.expires_at = min(token.expires_at, now + LONGEST_LIFETIME)
        token.save(update_fields=["org", "role", "expires_at"])


class Migration(migrations.Migration):

    dependencies = [
        ('accounts', '0006_limit_bounds'),
    ]

    operations = [
        migrations.AddField(
            model_name='personalaccesstoken',
            name='org',
            field=models.ForeignKey(null=True, on_delete=django.db.models.deletion.CASCADE, related_name='access_tokens', to='accounts.organization'),
        ),
        migrations.AddField(
            model_name='personalaccesstoken',
            name='role',
            field=models.CharField(choices=[('owner', 'Owner'), ('admin', 'Admin'), ('member', 'Member')], default='member', max_length=10),
        ),
        migrations.RunPython(scope_existing_tokens, migrations.RunPython.noop),
        migrations.CreateModel(
            name='ThrottleBucket',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('scope', models.CharField(max_length=32)),
                ('key', models.CharField(max_length=64)),
                ('window_start', models.DateTimeField()),
                ('hits', models.PositiveIntegerField(default=0)),
            ],
            options={
                'constraints': [models.UniqueConstraint(fields=('scope', 'key'), name='unique_throttle_bucket')],
            },
        ),
    ]
