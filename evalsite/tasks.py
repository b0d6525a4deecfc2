"""Celery tasks and the core app's job kinds (dataset import, preference export)."""
from celery import shared_task

from evalsite import jobs


@shared_task(bind=True, name="evalsite.run_job", acks_late=True)
def run_job(self, job_id):
    """The one Celery task: run a Job row by id (see evalsite.jobs)."""
    return jobs.execute(job_id, task_id=self.request.id, hostname=self.request.hostname or "")


@jobs.job_kind("noop", label="Test job", resumable=True)
def noop_job(ctx):
    """Counts to ``steps``, sleeping ``sleep`` seconds a step: for checking workers end to end.

    It resumes like the real kinds: the last finished step is its checkpoint.
    """
    import time

    steps = int(ctx.params.get("steps", 3))
    checkpoint = ctx.work_dir / "next_step"
    start = int(checkpoint.read_text()) if checkpoint.exists() else 0
    if start:
        ctx.log(f"resuming at step {start + 1}")
    for i in range(start, steps):
        ctx.progress(i / steps, f"step {i + 1}/{steps}")
        time.sleep(float(ctx.params.get("sleep", 0.0)))
        ctx.metric(i, value=i * i)
        checkpoint.write_text(str(i + 1))
    if ctx.params.get("fail"):
        raise jobs.JobError(str(ctx.params["fail"]))
    return {"steps": steps, **({"resumed_at_step": start} if start else {})}


def sweep_jobs():
    """The workers' periodic sweep (evalsite/celery.py): stale and unsent jobs, stalled experiments."""
    from evalsite.experiments.pipeline import fail_stalled_experiments

    done = jobs.sweep()
    done["stalled_experiments"] = fail_stalled_experiments()
    return done


from evalsite import importjobs  # noqa: E402,F401  (registers import_dataset)
from evalsite import preferencejobs  # noqa: E402,F401  (registers export_preferences)
from evalsite.experiments import tasks as _experiment_tasks  # noqa: E402,F401  (canvas tasks, job kinds)
