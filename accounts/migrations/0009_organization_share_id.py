# Organisations get a share ID (accounts.models.new_share_id). Added empty here, filled for the
# existing rows by 0010, made required and unique by 0011: three migrations, so that PostgreSQL never
# alters the table in the transaction that updated its rows.

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('accounts', '0008_pat_org_expiry_required'),
    ]

    operations = [
        migrations.AddField(
            model_name='organization',
            name='share_id',
            field=models.CharField(editable=False, max_length=26, null=True),
        ),
        migrations.AlterField(
            model_name='auditlog',
            name='action',
            field=models.CharField(choices=[('key.created', 'API key created'), ('key.revoked', 'API key revoked'), ('key.updated', 'API key updated'), ('connector_token.created', 'Connector token created'), ('connector_token.revoked', 'Connector token revoked'), ('grant.created', 'Model grant created'), ('grant.revoked', 'Model grant revoked'), ('member.added', 'Member added'), ('member.role_changed', 'Member role changed'), ('member.removed', 'Member removed'), ('member.invited', 'Member invited'), ('invitation.revoked', 'Invitation revoked'), ('pat.created', 'Personal access token created'), ('pat.revoked', 'Personal access token revoked'), ('deployment.created', 'Deployment created'), ('deployment.updated', 'Deployment updated'), ('org.created', 'Organisation created'), ('org.share_id_rotated', 'Share ID replaced')], max_length=40),
        ),
    ]
