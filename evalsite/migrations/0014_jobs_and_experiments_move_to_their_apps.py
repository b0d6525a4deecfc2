"""Job, JobMetric and Experiment now belong to the jobs and experiments apps (state only)."""
import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('evalsite', '0013_humaneval_moves_to_its_app'),
        ('jobs', '0001_initial'),
        ('experiments', '0001_initial'),
        ('labeling', '0004_job_model_moved'),
        ('rl', '0003_job_model_moved'),
    ]

    operations = [
        # The tables stay where they are (db_table): only Django's idea of which app owns them moves.
        migrations.SeparateDatabaseAndState(state_operations=[
            migrations.RemoveField(
                model_name='job',
                name='created_by',
            ),
            migrations.RemoveField(
                model_name='job',
                name='parent',
            ),
            migrations.AlterField(
                model_name='policy',
                name='job',
                field=models.ForeignKey(blank=True, help_text='The job that produced this policy.', null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='policies', to='jobs.job'),
            ),
            migrations.RemoveField(
                model_name='jobmetric',
                name='job',
            ),
            migrations.AlterField(
                model_name='comparison',
                name='job',
                field=models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='comparisons', to='jobs.job'),
            ),
            migrations.AlterField(
                model_name='sample',
                name='job',
                field=models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='samples', to='jobs.job'),
            ),
            migrations.AlterField(
                model_name='dataset',
                name='import_job',
                field=models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to='jobs.job'),
            ),
            migrations.DeleteModel(
                name='Experiment',
            ),
            migrations.DeleteModel(
                name='JobMetric',
            ),
            migrations.DeleteModel(
                name='Job',
            ),
        ]),
    ]
