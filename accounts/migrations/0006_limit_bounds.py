# Bounds on rate limits and budgets: validators only, no change to the columns.

import django.core.validators
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('accounts', '0005_remove_apikey_allowed_deployments'),
    ]

    operations = [
        migrations.AlterField(
            model_name='apikey',
            name='monthly_budget_micros',
            field=models.BigIntegerField(blank=True, help_text='Monthly spend cap in micro-USD (1 USD = 1,000,000).', null=True, validators=[django.core.validators.MinValueValidator(0), django.core.validators.MaxValueValidator(1000000000000000)]),
        ),
        migrations.AlterField(
            model_name='apikey',
            name='rpm_limit',
            field=models.PositiveIntegerField(blank=True, null=True, validators=[django.core.validators.MaxValueValidator(1000000000)]),
        ),
        migrations.AlterField(
            model_name='apikey',
            name='tpm_limit',
            field=models.PositiveIntegerField(blank=True, null=True, validators=[django.core.validators.MaxValueValidator(1000000000)]),
        ),
        migrations.AlterField(
            model_name='organization',
            name='monthly_budget_micros',
            field=models.BigIntegerField(blank=True, help_text='Monthly spend cap in micro-USD (1 USD = 1,000,000).', null=True, validators=[django.core.validators.MinValueValidator(0), django.core.validators.MaxValueValidator(1000000000000000)]),
        ),
        migrations.AlterField(
            model_name='organization',
            name='rpm_limit',
            field=models.PositiveIntegerField(blank=True, null=True, validators=[django.core.validators.MaxValueValidator(1000000000)]),
        ),
        migrations.AlterField(
            model_name='organization',
            name='tpm_limit',
            field=models.PositiveIntegerField(blank=True, null=True, validators=[django.core.validators.MaxValueValidator(1000000000)]),
        ),
    ]
