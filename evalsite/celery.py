"""The Celery app. Workers: ``celery -A evalsite worker -l info``.

Each worker's main process also sweeps the jobs on a timer (:class:`JobSweep`): jobs whose worker
died are failed and resumed, jobs the broker never took are sent again. Every worker does it, so
no extra process (such as ``celery beat``) has to be deployed for it, and a worker that comes up
under a new hostname still finds the jobs of one that is gone.
"""
import logging
import os
import threading

from celery import Celery, bootsteps

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "evalsite.settings")

log = logging.getLogger(__name__)

app = Celery("evalsite")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


class JobSweep(bootsteps.StartStopStep):
    """Runs :func:`evalsite.tasks.sweep_jobs` every ``JOB_SWEEP_SECONDS`` in a thread of its own
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

        from evalsite.tasks import sweep_jobs

        while not self.stopping.wait(settings.JOB_SWEEP_SECONDS):
            try:
                done = sweep_jobs()
                if any(done.values()):
                    log.warning("job sweep: %s", done)
            except Exception:  # the next sweep tries again; a worker must not die of it
                log.exception("job sweep failed")
            finally:
                connection.close()


app.steps["worker"].add(JobSweep)
