"""Jobs and experiments moved into their own apps: a database made before the move keeps its rows,
its foreign keys and the permissions that point at the moved models."""
import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

BEFORE = [("evalsite", "0012_policy_format"), ("labeling", "0003_chat_backend_usage_and_bounds"),
          ("rl", "0002_policy_format"), ("jobs", None), ("experiments", None)]


def migrate(targets):
    executor = MigrationExecutor(connection)
    executor.migrate(targets)
    executor.loader.build_graph()
    return executor.loader.project_state([t for t in targets if t[1] is not None]).apps


@pytest.mark.django_db(transaction=True)
def test_rows_and_permissions_survive_the_move_to_the_jobs_and_experiments_apps():
    old = migrate(BEFORE)
    Job, Policy = old.get_model("evalsite", "Job"), old.get_model("evalsite", "Policy")
    Task, Dataset = old.get_model("evalsite", "Task"), old.get_model("evalsite", "Dataset")
    parent = Job.objects.create(kind="label", name="run", status="succeeded", params={"config_id": 1})
    child = Job.objects.create(kind="label_chunk", name="chunk", status="succeeded", parent=parent)
    old.get_model("evalsite", "JobMetric").objects.create(job=child, step=3, values={"loss": 0.5})
    policy = Policy.objects.create(name="before the move", kind="sft", checkpoint_dir="/nowhere", job=child)
    task = Task.objects.get(slug="summarization")
    dataset = Dataset.objects.create(name="d", split="test", task=task, import_job=parent)
    old.get_model("evalsite", "Experiment").objects.create(
        name="old experiment", task=task, dataset=dataset, base_policy=policy, arms=["sft"], stages={"sft": child.pk})
    Group, Permission = old.get_model("auth", "Group"), old.get_model("auth", "Permission")
    group = Group.objects.create(name="job watchers")
    group.permissions.add(Permission.objects.get(codename="view_job", content_type__app_label="evalsite"),
                          Permission.objects.get(codename="view_experiment", content_type__app_label="evalsite"))

    executor = MigrationExecutor(connection)
    migrate(executor.loader.graph.leaf_nodes())

    from django.contrib.auth.models import Group as NewGroup
    from django.contrib.contenttypes.models import ContentType

    from evalsite.experiments.models import Experiment
    from evalsite.jobs.models import Job as NewJob, JobMetric
    from evalsite.models import Dataset as NewDataset, Policy as NewPolicy

    moved = NewJob.objects.get(pk=child.pk)
    assert moved.parent_id == parent.pk and moved.awaits_children is False and moved.status == "succeeded"
    assert JobMetric.objects.get(job=moved).values == {"loss": 0.5}
    assert NewPolicy.objects.get(pk=policy.pk).job == moved
    assert NewDataset.objects.get(pk=dataset.pk).import_job_id == parent.pk
    exp = Experiment.objects.get(name="old experiment")
    assert exp.stages == {"sft": child.pk} and exp.job is None
    perms = set(NewGroup.objects.get(name="job watchers").permissions.values_list(
        "content_type__app_label", "codename"))
    assert perms == {("jobs", "view_job"), ("experiments", "view_experiment")}
    assert not ContentType.objects.filter(app_label="evalsite", model__in=["job", "jobmetric", "experiment"]).exists()
