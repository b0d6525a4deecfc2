"""Keeps a labeling run's row in step with its chunks after each job's final status is written."""
from celery.signals import task_postrun


@task_postrun.connect
def _sync_labeling_run(sender=None, task_id=None, task=None, args=None, **kwargs):
    if getattr(task, "name", "") != "evalsite.run_job" or not args:
        return
    from evalsite.models import Job

    from .runs import CHUNK_KIND, RUN_KIND, sync_run

    job = Job.objects.filter(pk=args[0]).values("kind", "parent_id").first()
    if job is None:
        return
    if job["kind"] == CHUNK_KIND and job["parent_id"]:
        sync_run(job["parent_id"])
    elif job["kind"] == RUN_KIND:
        sync_run(args[0])
