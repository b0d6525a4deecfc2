"""Celery tasks and the core app's job kinds (dataset import)."""
from celery import shared_task

from evalsite import jobs


@shared_task(bind=True, name="evalsite.run_job", acks_late=True)
def run_job(self, job_id):
    """The one Celery task: run a Job row by id (see evalsite.jobs)."""
    return jobs.execute(job_id, task_id=self.request.id, hostname=self.request.hostname or "")


@jobs.job_kind("noop", label="Test job")
def noop_job(ctx):
    """Counts to ``steps``, sleeping ``sleep`` seconds a step: for checking workers end to end."""
    import time

    steps = int(ctx.params.get("steps", 3))
    for i in range(steps):
        ctx.progress(i / steps, f"step {i + 1}/{steps}")
        time.sleep(float(ctx.params.get("sleep", 0.0)))
        ctx.metric(i, value=i * i)
    if ctx.params.get("fail"):
        raise jobs.JobError(str(ctx.params["fail"]))
    return {"steps": steps}


from evalsite import importjobs  # noqa: E402,F401  (registers import_dataset)
from evalsite.experiments import tasks as _experiment_tasks  # noqa: E402,F401  (canvas tasks, job kinds)
