"""The job queue adapter: Celery. The only module that imports Celery.

Workers: ``celery -A evalsite worker -l info``. Every job is delivered by one Celery task,
``evalsite.run_job``, which runs the job's row through :func:`evalsite.jobs.runtime.execute`; the
runtime reaches this module through ``settings.JOB_QUEUE`` (:data:`queue`).

Each worker's main process also sweeps the jobs on a timer (:class:`JobSweep`): jobs whose worker
died are failed and resumed, jobs the broker never took are sent again. Every worker does it, so
no extra process (such as ``celery beat``) has to be deployed for it, and a worker that comes up
under a new hostname still finds the jobs of one that is gone.
"""
import logging
import os
import threading

from celery import Celery, bootsteps, shared_task
from celery.signals import worker_process_init, worker_ready
from kombu.exceptions import OperationalError

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "evalsite.settings")

log = logging.getLogger(__name__)

app = Celery("evalsite")
app.config_from_object("django.conf:settings", namespace="CELERY")


@shared_task(bind=True, name="evalsite.run_job", acks_late=True)
def run_job(self, job_id):
    """The one Celery task: run a Job row by id."""
    from evalsite.jobs import runtime

    return runtime.execute(job_id, task_id=self.request.id, hostname=self.request.hostname or "")


class CeleryQueue:
    """What the job runtime needs of a queue: publish a job's task, and say if the broker answers."""

    def publish(self, job_id, task_id):
        from evalsite.jobs.runtime import QueueUnreachable

        try:
            run_job.apply_async(args=[job_id], task_id=task_id)
        except OperationalError as e:  # unreachable, after Celery's own publish retries
            raise QueueUnreachable(str(e)) from e

    def reachable(self):
        try:
            with app.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1)
        except OperationalError:
            return False
        return True


queue = CeleryQueue()


@worker_ready.connect
def _fail_orphaned_jobs(sender=None, **kwargs):
    """Jobs a restarted worker was running when it died are failed (and resumed)."""
    from evalsite.jobs.runtime import fail_orphans_of

    hostname = getattr(sender, "hostname", "") or ""
    if hostname:
        fail_orphans_of(hostname)


@worker_process_init.connect
def _torch_threads(**kwargs):
    """Several pool processes on one machine: give each its share of the cores (torch would
    otherwise start one thread per core in every process and oversubscribe the CPU)."""
    n = os.environ.get("TORCH_THREADS_PER_PROCESS")
    if n:
        import torch

        torch.set_num_threads(max(1, int(n)))


class JobSweep(bootsteps.StartStopStep):
    """Runs :func:`evalsite.jobs.runtime.sweep` every ``JOB_SWEEP_SECONDS`` in a thread of its own
    (a slow database must not hold up the worker's event loop)."""

    def __init__(self, worker, **kwargs):
        super().__init__(worker, **kwargs)
        self.thread = None
        self.stopping = threading.Event()

    def start(self, worker):
        self.thread = threading.Thread(target=self.loop, name="job-sweep", daemon=True)
        self.thread.start()

    def stop(self, worker):
        self.stopping.set()
        if self.thread is not None:
            self.thread.join(timeout=10)

    def loop(self):
        from django.conf import settings
        from django.db import connection

        from evalsite.jobs.runtime import sweep

        while not self.stopping.wait(settings.JOB_SWEEP_SECONDS):
            try:
                done = sweep()
                if any(done.values()):
                    log.warning("job sweep: %s", done)
            except Exception:  # the next sweep tries again; a worker must not die of it
                log.exception("job sweep failed")
            finally:
                connection.close()


app.steps["worker"].add(JobSweep)
