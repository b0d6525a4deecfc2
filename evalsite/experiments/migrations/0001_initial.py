"""Experiment moves from the evalsite app into this one; its table keeps its name."""
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
        ('labeling', '0003_chat_backend_usage_and_bounds'),
        ('contenttypes', '0002_remove_content_type_name'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        # The tables stay where they are (db_table): only Django's idea of which app owns them moves.
        migrations.SeparateDatabaseAndState(state_operations=[
            migrations.CreateModel(
                name='Experiment',
                fields=[
                    ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                    ('name', models.CharField(max_length=200, unique=True)),
                    ('preset', models.CharField(default='demo', help_text='demo (laptop CPU) or paper (GPUs).', max_length=20)),
                    ('arms', models.JSONField(default=list, help_text='Which arms to run, from: sft, rlhf, rlaif_distilled, rlaif_direct, same_size')),
                    ('config', models.JSONField(blank=True, default=dict, help_text='Budgets and hyperparameters (preset + overrides).')),
                    ('status', models.CharField(choices=[('draft', 'Draft'), ('running', 'Running'), ('succeeded', 'Succeeded'), ('failed', 'Failed'), ('cancelled', 'Cancelled')], default='draft', max_length=10)),
                    ('message', models.CharField(blank=True, max_length=500)),
                    ('stages', models.JSONField(blank=True, default=dict, help_text='stage name -> job id')),
                    ('artifacts', models.JSONField(blank=True, default=dict, help_text='ids of what the stages produced')),
                    ('cancel_requested', models.BooleanField(default=False)),
                    ('created_at', models.DateTimeField(auto_now_add=True)),
                    ('started_at', models.DateTimeField(blank=True, null=True)),
                    ('finished_at', models.DateTimeField(blank=True, null=True)),
                    ('base_policy', models.ForeignKey(help_text='The model SFT starts from (e.g. the default SmolLM2-135M-Instruct).', on_delete=django.db.models.deletion.PROTECT, related_name='+', to='evalsite.policy')),
                    ('created_by', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to=settings.AUTH_USER_MODEL)),
                    ('dataset', models.ForeignKey(help_text='Prompts for SFT (those with a reference), reward-model pairs, RL and evaluation.', on_delete=django.db.models.deletion.PROTECT, related_name='experiments', to='evalsite.dataset')),
                    ('labeler_config', models.ForeignKey(blank=True, help_text='The AI labeler. Empty: one is made from the preset with the base model as labeler.', null=True, on_delete=django.db.models.deletion.PROTECT, related_name='+', to='labeling.labelerconfig')),
                    ('preference_dataset', models.ForeignKey(blank=True, help_text="Comparisons with human preferences for the RLHF reward model (and for measuring the labeler's alignment). Empty: the comparisons of the main dataset.", null=True, on_delete=django.db.models.deletion.PROTECT, related_name='+', to='evalsite.dataset')),
                    ('task', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='experiments', to='evalsite.task')),
                ],
                options={
                    'db_table': 'evalsite_experiment',
                    'ordering': ['-created_at'],
                },
            ),
        ]),
        migrations.RunPython(partial(move_content_types, 'evalsite', 'experiments', ('experiment',)),
                             partial(move_content_types, 'experiments', 'evalsite', ('experiment',))),
    ]
