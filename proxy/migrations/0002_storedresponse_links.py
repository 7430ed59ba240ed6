"""Stored responses hold their own turn and link to the one they continued (no history repeated).

Rows stored before hold their whole conversation so far: each becomes the first turn of its own
thread, sized for the conversation limit, and chains on it keep working unchanged."""

import orjson
from django.db import migrations, models


def link_old_rows(apps, schema_editor):
    StoredResponse = apps.get_model("proxy", "StoredResponse")
    batch = []
    for row in StoredResponse.objects.filter(thread="").only("id", "items").iterator(chunk_size=500):
        row.thread = row.id
        row.conversation_bytes = len(orjson.dumps(row.items))
        batch.append(row)
        if len(batch) == 500:
            StoredResponse.objects.bulk_update(batch, ["thread", "conversation_bytes"])
            batch = []
    if batch:
        StoredResponse.objects.bulk_update(batch, ["thread", "conversation_bytes"])


class Migration(migrations.Migration):
    dependencies = [
        ("proxy", "0001_initial"),
    ]

    operations = [
        migrations.AddField(
            model_name="storedresponse",
            name="previous_response_id",
            field=models.CharField(blank=True, default="", max_length=64),
        ),
        migrations.AddField(
            model_name="storedresponse",
            name="thread",
            field=models.CharField(db_index=True, default="", max_length=64),
            preserve_default=False,
        ),
        migrations.AddField(
            model_name="storedresponse",
            name="turn",
            field=models.PositiveIntegerField(default=1),
        ),
        migrations.AddField(
            model_name="storedresponse",
            name="conversation_bytes",
            field=models.BigIntegerField(default=0),
        ),
        migrations.RunPython(link_old_rows, migrations.RunPython.noop),
    ]
