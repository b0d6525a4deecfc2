from django.db import migrations, models
from django.db.models import F


def mark_existing_as_sent(apps, schema_editor):
    # Jobs queued before this field existed were handed to the broker when they were created;
    # without this the workers' sweep would send them all a second time.
    Job = apps.get_model("evalsite", "Job")
    Job.objects.exclude(celery_task_id="").update(sent_at=F("created_at"))


class Migration(migrations.Migration):

    dependencies = [
        ('evalsite', '0008_queue_indexes'),
    ]

    operations = [
        migrations.AddField(
            model_name='job',
            name='sent_at',
            field=models.DateTimeField(blank=True, help_text="When the broker last accepted this job's task; empty while the broker was unreachable (the workers' sweep sends it again).", null=True),
        ),
        migrations.RunPython(mark_existing_as_sent, migrations.RunPython.noop),
    ]
