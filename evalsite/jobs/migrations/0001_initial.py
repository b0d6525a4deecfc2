"""Job and JobMetric move from the evalsite app into this one; their tables keep their names."""
from functools import partial

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


def move_content_types(old_label, new_label, model_names, apps, schema_editor):
    """Keep each model's content type row (and so the permissions and admin log entries that
    point at it) under its new app label."""
    ContentType = apps.get_model("contenttypes", "ContentType")
    for model in model_names:
        if not ContentType.objects.filter(app_label=new_label, model=model).exists():
            ContentType.objects.filter(app_label=old_label, model=model).update(app_label=new_label)


class Migration(migrations.Migration):

    initial = True

    dependencies = [
        ('evalsite', '0012_policy_format'),
        ('contenttypes', '0002_remove_content_type_name'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        # The tables stay where they are (db_table): only Django's idea of which app owns them moves.
        migrations.SeparateDatabaseAndState(state_operations=[
            migrations.CreateModel(
                name='Job',
                fields=[
                    ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                    ('kind', models.CharField(db_index=True, max_length=50)),
                    ('name', models.CharField(blank=True, max_length=200)),
                    ('params', models.JSONField(blank=True, default=dict)),
                    ('status', models.CharField(choices=[('queued', 'Queued'), ('running', 'Running'), ('succeeded', 'Succeeded'), ('failed', 'Failed'), ('cancelled', 'Cancelled')], default='queued', max_length=10)),
                    ('progress', models.FloatField(default=0.0)),
                    ('message', models.CharField(blank=True, max_length=500)),
                    ('log', models.TextField(blank=True, help_text="The last 20000 characters of the job's log.")),
                    ('error', models.TextField(blank=True)),
                    ('result', models.JSONField(blank=True, default=dict)),
                    ('celery_task_id', models.CharField(blank=True, db_index=True, max_length=255)),
                    ('worker', models.CharField(blank=True, help_text='Worker hostname and pid running it.', max_length=255)),
                    ('attempts', models.PositiveIntegerField(default=0)),
                    ('cancel_requested', models.BooleanField(default=False)),
                    ('created_at', models.DateTimeField(auto_now_add=True)),
                    ('started_at', models.DateTimeField(blank=True, null=True)),
                    ('finished_at', models.DateTimeField(blank=True, null=True)),
                    ('heartbeat_at', models.DateTimeField(blank=True, null=True)),
                    ('sent_at', models.DateTimeField(blank=True, help_text="When the broker last accepted this job's task; empty while the broker was unreachable (the workers' sweep sends it again).", null=True)),
                    ('created_by', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to=settings.AUTH_USER_MODEL)),
                    ('parent', models.ForeignKey(blank=True, help_text='For chunks of a larger job and stages of an experiment.', null=True, on_delete=django.db.models.deletion.CASCADE, related_name='children', to='jobs.job')),
                ],
                options={
                    'db_table': 'evalsite_job',
                    'ordering': ['-created_at', '-id'],
                },
            ),
            migrations.CreateModel(
                name='JobMetric',
                fields=[
                    ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                    ('step', models.PositiveIntegerField()),
                    ('values', models.JSONField(default=dict)),
                    ('created_at', models.DateTimeField(auto_now_add=True)),
                    ('job', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='metrics', to='jobs.job')),
                ],
                options={
                    'db_table': 'evalsite_jobmetric',
                    'ordering': ['job_id', 'step'],
                },
            ),
            migrations.AddIndex(
                model_name='job',
                index=models.Index(fields=['status', 'kind'], name='evalsite_jo_status_80df42_idx'),
            ),
            migrations.AddIndex(
                model_name='job',
                index=models.Index(fields=['parent', 'status'], name='evalsite_jo_parent__bf5f96_idx'),
            ),
            migrations.AddConstraint(
                model_name='job',
                constraint=models.CheckConstraint(condition=models.Q(('progress__gte', 0.0), ('progress__lte', 1.0)), name='job_progress_0_1'),
            ),
            migrations.AddConstraint(
                model_name='job',
                constraint=models.CheckConstraint(condition=models.Q(('status__in', ['queued', 'running', 'succeeded', 'failed', 'cancelled'])), name='job_status_valid'),
            ),
            migrations.AddConstraint(
                model_name='jobmetric',
                constraint=models.UniqueConstraint(fields=('job', 'step'), name='jobmetric_unique_step'),
            ),
        ]),
        migrations.RunPython(partial(move_content_types, 'evalsite', 'jobs', ('job', 'jobmetric')),
                             partial(move_content_types, 'jobs', 'evalsite', ('job', 'jobmetric'))),
    ]
