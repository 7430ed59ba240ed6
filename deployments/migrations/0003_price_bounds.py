# Bounds on prices: validators only, no change to the columns.

import django.core.validators
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('deployments', '0002_deployment_allowed_keys'),
    ]

    operations = [
        migrations.AlterField(
            model_name='deployment',
            name='price_input_micros',
            field=models.BigIntegerField(default=0, validators=[django.core.validators.MinValueValidator(0), django.core.validators.MaxValueValidator(1000000000)]),
        ),
        migrations.AlterField(
            model_name='deployment',
            name='price_output_micros',
            field=models.BigIntegerField(default=0, validators=[django.core.validators.MinValueValidator(0), django.core.validators.MaxValueValidator(1000000000)]),
        ),
    ]
