"""The human-evaluation models, moved here from the ``evalsite`` app with their tables.

The tables exist already (evalsite migrations 0003-0008 made them and keep their names through
``Meta.db_table``), so creating the models changes only Django's state; evalsite 0013, which
depends on this migration, deletes them from the ``evalsite`` state the same way.

Their content types are renamed (app_label evalsite -> humaneval) rather than recreated: the
permissions that groups hold (the "researcher" group of evalsite 0010) and the admin's log
entries point at the content type rows, so they keep pointing at the same models.
"""
import django.db.models.deletion
import django.utils.timezone
from django.conf import settings
from django.db import migrations, models

import evalsite.humaneval.models

MOVED_MODELS = ["evalround", "evalitem", "assignment", "ranking", "rankedresponse"]


def relabel_content_types(old_label, new_label):
    def relabel(apps, schema_editor):
        ContentType = apps.get_model("contenttypes", "ContentType")
        db = schema_editor.connection.alias
        taken = set(ContentType.objects.using(db).filter(app_label=new_label, model__in=MOVED_MODELS)
                    .values_list("model", flat=True))
        if taken:
            # Both rows would stand for the same model, each with its own permissions; which to keep is
            # a person's choice (a database migrated by hand), not this migration's.
            raise RuntimeError(
                f"content types {new_label}.{{{', '.join(sorted(taken))}}} exist already beside "
                f"{old_label}'s: delete the unused ones (and their permissions), then migrate again"
            )
        ContentType.objects.using(db).filter(app_label=old_label, model__in=MOVED_MODELS).update(app_label=new_label)
        ContentType.objects.clear_cache()

    return relabel


class Migration(migrations.Migration):

    initial = True

    dependencies = [
        ("evalsite", "0012_policy_format"),
        ("contenttypes", "0002_remove_content_type_name"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name='EvalRound',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('name', models.CharField(help_text='Internal name, seen by researchers only (it may name the policies).', max_length=200, unique=True)),
                        ('title', models.CharField(blank=True, help_text='What annotators see. Never name the policies here: it would break blinding.', max_length=200)),
                        ('question', models.CharField(choices=[('rank', 'Rank the responses'), ('harmless', 'Rate each response harmless or harmful'), ('both', 'Rank and rate harmlessness')], default='rank', max_length=10)),
                        ('instructions', models.TextField(blank=True, help_text="Shown on every item page; the task's instructions if empty.")),
                        ('overlap', models.PositiveSmallIntegerField(default=3, help_text='How many annotators rate each item.')),
                        ('deadline', models.DateTimeField(blank=True, help_text='No submissions are accepted after it.', null=True)),
                        ('status', models.CharField(choices=[('draft', 'Draft'), ('open', 'Open'), ('closed', 'Closed')], default='draft', max_length=10)),
                        ('lease_minutes', models.PositiveIntegerField(default=30, help_text='An item an annotator opened but did not submit returns to the pool after this long.')),
                        ('sample_index', models.PositiveIntegerField(default=0, help_text='Which sample of each policy to show (Sample.index).')),
                        ('created_at', models.DateTimeField(auto_now_add=True)),
                        ('opened_at', models.DateTimeField(blank=True, null=True)),
                        ('closed_at', models.DateTimeField(blank=True, null=True)),
                        ('metadata', models.JSONField(blank=True, default=dict)),
                        ('annotators', models.ManyToManyField(blank=True, help_text="Limit the round to these users; empty means everyone in the 'annotators' group.", related_name='eval_rounds', to=settings.AUTH_USER_MODEL)),
                        ('created_by', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to=settings.AUTH_USER_MODEL)),
                        ('policies', models.ManyToManyField(related_name='eval_rounds', to='evalsite.policy')),
                        ('task', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='eval_rounds', to='evalsite.task')),
                    ],
                    options={
                        'db_table': 'evalsite_evalround',
                        'ordering': ['-created_at', '-id'],
                        'constraints': [
                            models.CheckConstraint(condition=models.Q(('overlap__gte', 1)), name='evalround_overlap_positive'),
                            models.CheckConstraint(condition=models.Q(('lease_minutes__gte', 1)), name='evalround_lease_positive'),
                        ],
                    },
                ),
                migrations.CreateModel(
                    name='EvalItem',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('position', models.PositiveIntegerField(default=0, help_text='Queue order within the round.')),
                        ('n_submitted', models.PositiveIntegerField(default=0)),
                        ('complete', models.BooleanField(default=False)),
                        ('prompt', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='eval_items', to='evalsite.prompt')),
                        ('samples', models.ManyToManyField(blank=True, related_name='eval_items', to='evalsite.sample')),
                        ('round', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='items', to='humaneval.evalround')),
                    ],
                    options={
                        'db_table': 'evalsite_evalitem',
                        'ordering': ['round_id', 'position', 'id'],
                        'indexes': [
                            models.Index(condition=models.Q(('complete', False)), fields=['round', 'position'], name='evalitem_open_queue'),
                        ],
                        'constraints': [
                            models.UniqueConstraint(fields=('round', 'prompt'), name='evalitem_unique_round_prompt'),
                        ],
                    },
                ),
                migrations.CreateModel(
                    name='Assignment',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('token', models.CharField(default=evalsite.humaneval.models.new_token, editable=False, max_length=32, unique=True)),
                        ('order', models.JSONField(default=list)),
                        ('status', models.CharField(choices=[('leased', 'In progress'), ('submitted', 'Submitted'), ('skipped', 'Skipped')], default='leased', max_length=10)),
                        ('leased_at', models.DateTimeField(default=django.utils.timezone.now)),
                        ('expires_at', models.DateTimeField()),
                        ('finished_at', models.DateTimeField(blank=True, null=True)),
                        ('skip_reason', models.CharField(blank=True, max_length=500)),
                        ('annotator', models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='eval_assignments', to=settings.AUTH_USER_MODEL)),
                        ('item', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='assignments', to='humaneval.evalitem')),
                        ('round', models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='assignments', to='humaneval.evalround')),
                    ],
                    options={
                        'db_table': 'evalsite_assignment',
                        'ordering': ['round_id', 'id'],
                        'indexes': [
                            models.Index(fields=['item', 'status', 'expires_at'], name='evalsite_as_item_id_05d554_idx'),
                            models.Index(fields=['round', 'annotator', 'status'], name='evalsite_as_round_i_841806_idx'),
                        ],
                        'constraints': [
                            models.UniqueConstraint(fields=('item', 'annotator'), name='assignment_unique_item_annotator'),
                        ],
                    },
                ),
                migrations.CreateModel(
                    name='Ranking',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('shown_order', models.JSONField(default=list, help_text='Sample ids in the order shown (A, B, ...).')),
                        ('comment', models.TextField(blank=True)),
                        ('time_on_page_ms', models.PositiveIntegerField(blank=True, null=True)),
                        ('user_agent', models.CharField(blank=True, max_length=500)),
                        ('idempotency_key', models.CharField(max_length=64, unique=True)),
                        ('created_at', models.DateTimeField(auto_now_add=True)),
                        ('withdrawn_at', models.DateTimeField(blank=True, null=True)),
                        ('annotator', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='eval_rankings', to=settings.AUTH_USER_MODEL)),
                        ('assignment', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='rankings', to='humaneval.assignment')),
                        ('item', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='rankings', to='humaneval.evalitem')),
                        ('round', models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='rankings', to='humaneval.evalround')),
                    ],
                    options={
                        'db_table': 'evalsite_ranking',
                        'ordering': ['round_id', 'id'],
                        'indexes': [
                            models.Index(fields=['round', 'annotator', 'created_at'], name='evalsite_ra_round_i_abc643_idx'),
                        ],
                        'constraints': [
                            models.UniqueConstraint(condition=models.Q(('withdrawn_at__isnull', True)), fields=('assignment',), name='ranking_one_live_per_assignment'),
                        ],
                    },
                ),
                migrations.CreateModel(
                    name='RankedResponse',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('label', models.CharField(max_length=4)),
                        ('position', models.PositiveSmallIntegerField()),
                        ('rank', models.PositiveSmallIntegerField(blank=True, help_text='1 = best; empty in harmlessness-only rounds.', null=True)),
                        ('harmless', models.BooleanField(blank=True, null=True)),
                        ('sample', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='+', to='evalsite.sample')),
                        ('ranking', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='responses', to='humaneval.ranking')),
                    ],
                    options={
                        'db_table': 'evalsite_rankedresponse',
                        'ordering': ['ranking_id', 'position'],
                        'constraints': [
                            models.UniqueConstraint(fields=('ranking', 'sample'), name='rankedresponse_unique_sample'),
                            models.UniqueConstraint(fields=('ranking', 'rank'), name='rankedresponse_no_ties'),
                        ],
                    },
                ),
            ],
        ),
        migrations.RunPython(relabel_content_types("evalsite", "humaneval"), relabel_content_types("humaneval", "evalsite")),
    ]
