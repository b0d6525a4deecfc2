"""The job runtime: a registry of job kinds and the context each job function gets.

A job kind is a plain function ``fn(ctx) -> dict`` registered with ``@job_kind(...)``.
It reads ``ctx.params``, reports ``ctx.progress(fraction, message)`` as it goes (which
is also where a cancel request stops it), appends to ``ctx.log``, stores per-step
``ctx.metric(step, ...)`` and returns a JSON-able result. Resumable kinds keep their
checkpoints in ``ctx.work_dir`` and look there first.

``Job.submit`` creates and queues a job; the Celery task ``evalsite.run_job`` calls
:func:`execute`. Everything a job writes to the database it writes in its own
transactions, so a failed or killed job keeps the work it finished.
"""
import logging
import os
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.utils import timezone

log = logging.getLogger(__name__)


class JobCancelled(Exception):
    """Raised inside a job at its next step after a cancel request."""


class JobError(Exception):
    """An expected failure with a message for the user (bad file, missing model, ...).

    Shown as the job's error without a traceback.
    """


@dataclass
class JobKind:
    name: str
    func: Callable
    label: str
    resumable: bool = False
    validator: Callable | None = None
    description: str = ""

    def validate(self, params):
        """Return cleaned params or raise ValidationError with a message per bad field."""
        if self.validator is None:
            return params
        cleaned = self.validator(params)
        return params if cleaned is None else cleaned


_REGISTRY: dict[str, JobKind] = {}

MAX_ID = 2**63 - 1  # the largest primary key a bigint column holds


def id_list(value, name, errors):
    """Ids from a job parameter: a list, or a string of ids separated by spaces or commas.

    An empty value gives []; a bad one puts a message under ``name`` in ``errors`` and gives [].
    """
    if value in (None, "", []):
        return []
    if isinstance(value, (str, int)):
        value = str(value).replace(",", " ").split()
    try:
        ids = [int(v) for v in value]
    except (TypeError, ValueError):
        ids = None
    if ids is None or not all(1 <= i <= MAX_ID for i in ids):
        errors[name] = f"{name} must be a list of ids (whole numbers from 1 to {MAX_ID})."
        return []
    return ids


def job_kind(name, *, label=None, resumable=False, validator=None):
    """Register ``fn(ctx)`` as the implementation of job kind ``name``."""

    def register(func):
        _REGISTRY[name] = JobKind(
            name=name, func=func, label=label or name.replace("_", " "), resumable=resumable,
            validator=validator, description=(func.__doc__ or "").strip(),
        )
        return func

    return register


def _load_job_modules():
    # Job kinds are registered in each app's tasks module; import them all once.
    from importlib import import_module

    from django.apps import apps

    for app in apps.get_app_configs():
        module = f"{app.name}.tasks"
        try:
            import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:
                raise


def get_kind(name) -> JobKind:
    if name not in _REGISTRY:
        _load_job_modules()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValidationError(f"Unknown job kind {name!r}; known kinds: {', '.join(sorted(all_kinds()))}.")


def all_kinds():
    _load_job_modules()
    return dict(_REGISTRY)


@dataclass
class JobContext:
    job: "object"
    params: dict = field(default_factory=dict)
    _cancel: threading.Event = field(default_factory=threading.Event)
    _last_write: float = 0.0
    _last_fraction: float = -1.0

    # Progress writes are throttled: a tight loop may call progress() thousands of times.
    MIN_WRITE_INTERVAL = 0.5

    @property
    def job_id(self):
        return self.job.pk

    @property
    def work_dir(self) -> Path:
        """Per-job folder for checkpoints and outputs; survives retries and resumes."""
        # The creation time keeps folders of a reset database's reused job ids apart.
        d = Path(settings.CHECKPOINTS_DIR) / f"job-{self.job.pk}-{self.job.created_at:%Y%m%d%H%M%S%f}"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def check_cancelled(self):
        if self._cancel.is_set():
            raise JobCancelled()

    def progress(self, fraction, message=None, *, force=False):
        """Report progress in [0, 1]; stops the job here if a cancel was requested."""
        from evalsite.models import Job

        self.check_cancelled()
        fraction = min(1.0, max(0.0, float(fraction)))
        now = time.monotonic()
        if force or message is not None or now - self._last_write >= self.MIN_WRITE_INTERVAL:
            fields = {"progress": fraction, "heartbeat_at": timezone.now()}
            if message is not None:
                fields["message"] = str(message)[:500]
            Job.objects.filter(pk=self.job.pk).update(**fields)
            cancel = Job.objects.filter(pk=self.job.pk).values_list("cancel_requested", flat=True).first()
            if cancel:
                self._cancel.set()
            self._last_write = now
            self.check_cancelled()

    def log(self, text):
        log.info("job %s: %s", self.job.pk, text)
        self.job.append_log(str(text))

    def metric(self, step, **values):
        """Store one step's metrics (replacing that step's row if a resume repeats it)."""
        from evalsite.models import JobMetric

        JobMetric.objects.update_or_create(job_id=self.job.pk, step=step, defaults={"values": values})

    def set_result(self, **values):
        """Merge values into the job's result while it runs (e.g. ids of finished artifacts)."""
        from evalsite.models import Job

        job = Job.objects.get(pk=self.job.pk)
        job.result = {**job.result, **values}
        Job.objects.filter(pk=job.pk).update(result=job.result)
        self.job.result = job.result


class _Heartbeat(threading.Thread):
    """Writes the job's heartbeat and picks up cancel requests, even during long steps."""

    def __init__(self, ctx):
        super().__init__(daemon=True, name=f"job-{ctx.job.pk}-heartbeat")
        self.ctx = ctx
        self.stop = threading.Event()

    def run(self):
        from evalsite.models import Job

        try:
            while not self.stop.wait(settings.JOB_HEARTBEAT_SECONDS):
                Job.objects.filter(pk=self.ctx.job.pk).update(heartbeat_at=timezone.now())
                if Job.objects.filter(pk=self.ctx.job.pk, cancel_requested=True).exists():
                    self.ctx._cancel.set()
        except Exception:  # the main thread's outcome matters more than a missed beat
            log.exception("heartbeat for job %s failed", self.ctx.job.pk)
        finally:
            connection.close()


def execute(job_id, task_id=None, hostname=""):
    """Run job ``job_id`` to completion in this process. Returns its final status.

    Only a delivery whose task id matches the job's current one (or any, when ``task_id``
    is None) claims it, so duplicate or stale broker messages are no-ops.
    """
    from evalsite.models import Job

    # (Celery's Django fix-up closes stale database connections around each task.)
    now = timezone.now()
    claim = Job.objects.filter(pk=job_id, status=Job.Status.QUEUED)
    if task_id is not None:
        claim = claim.filter(celery_task_id=task_id)
    worker = f"{hostname or 'local'} pid {os.getpid()}"
    from django.db.models import F

    if not claim.update(
        status=Job.Status.RUNNING, started_at=now, heartbeat_at=now, worker=worker,
        attempts=F("attempts") + 1, message="started",
    ):
        log.info("job %s not claimed (not queued, or superseded message %s)", job_id, task_id)
        return Job.objects.filter(pk=job_id).values_list("status", flat=True).first()

    job = Job.objects.get(pk=job_id)
    ctx = JobContext(job=job, params=dict(job.params))
    heartbeat = _Heartbeat(ctx)
    heartbeat.start()
    status, fields = Job.Status.FAILED, {}
    try:
        kind = get_kind(job.kind)
        if job.attempts > 1:
            ctx.log(f"attempt {job.attempts}" + (" (resuming from checkpoint)" if kind.resumable else ""))
        result = kind.func(ctx) or {}
        status = Job.Status.SUCCEEDED
        fields = {"progress": 1.0, "result": {**Job.objects.get(pk=job_id).result, **result},
                  "message": "done"}
    except JobCancelled:
        status, fields = Job.Status.CANCELLED, {"message": "cancelled"}
        ctx.log("cancelled at the user's request")
    except (JobError, ValidationError) as e:
        text = "; ".join(e.messages) if isinstance(e, ValidationError) else str(e)
        status, fields = Job.Status.FAILED, {"error": text, "message": "failed"}
        ctx.log(f"failed: {text}")
    except Exception as e:
        status, fields = Job.Status.FAILED, {"error": f"{type(e).__name__}: {e}", "message": "failed"}
        ctx.log(traceback.format_exc())
    finally:
        heartbeat.stop.set()
        heartbeat.join(timeout=5)
    Job.objects.filter(pk=job_id).update(status=status, finished_at=timezone.now(), **fields)
    return status


def auto_resume(job_id, reason):
    """Queue a failed resumable job again, unless it has used up its automatic attempts.

    A job that kills its worker every time (out of memory, say) stops after
    ``JOB_AUTO_RESUME_ATTEMPTS`` attempts and waits for a person's 'resume'.
    """
    from evalsite.models import Job

    job = Job.objects.filter(pk=job_id, status=Job.Status.FAILED).first()
    if job is None:
        return False
    try:
        resumable = get_kind(job.kind).resumable
    except ValidationError:
        resumable = False
    if not resumable:
        job.append_log(f"{reason}; this kind does not resume by itself: use 'resume'")
        return False
    if job.attempts >= settings.JOB_AUTO_RESUME_ATTEMPTS:
        job.append_log(f"{reason}; not resumed automatically after {job.attempts} attempts: use 'resume'")
        return False
    job.append_log(f"{reason}; resuming automatically from the last checkpoint")
    return job.resume()


def fail_orphans_of(hostname):
    """At worker start: jobs this worker was running when it died are failed, resumable ones requeued.

    (Jobs of a worker that does not come back under its old name are found by :func:`sweep`.)
    """
    from evalsite.models import Job

    orphans = list(Job.objects.filter(status=Job.Status.RUNNING, worker__startswith=f"{hostname} pid ")
                   .values_list("pk", flat=True))
    for pk in orphans:
        with transaction.atomic():  # others see the job queued again, never failed in between
            n = Job.objects.filter(pk=pk, status=Job.Status.RUNNING).update(
                status=Job.Status.FAILED, finished_at=timezone.now(), message="worker lost",
                error=f"Worker {hostname} restarted while this job was running.",
            )
            if n:
                auto_resume(pk, f"worker {hostname} restarted while this job was running")
    return len(orphans)


def fail_stale_and_resume(queryset):
    """Fail the stale jobs of ``queryset`` and resume the resumable ones; returns (failed, resumed).

    Each job is failed and queued again in one transaction, so nobody reading it (a page, a
    waiting experiment, a test) sees it failed on its way back to the queue.
    """
    failed, resumed = [], []
    for pk in queryset.stale().values_list("pk", flat=True):
        with transaction.atomic():
            if queryset.model.objects.filter(pk=pk).fail_stale():
                failed.append(pk)
                if auto_resume(pk, "no heartbeat from its worker"):
                    resumed.append(pk)
    return failed, resumed


def sweep():
    """What every worker runs on a schedule (see evalsite/celery.py), never a web request.

    * Running jobs without a heartbeat for ``JOB_STALE_AFTER_SECONDS`` are failed, and
      resumable kinds queued again, whichever worker (and hostname) they ran on.
    * Queued jobs the broker never took (it was down when they were submitted) are sent again.

    Every change is a conditional UPDATE, so workers sweeping at once do each thing once.
    Returns what it did, for the worker's log.
    """
    from kombu.exceptions import OperationalError

    from evalsite.models import Job

    failed, resumed = fail_stale_and_resume(Job.objects.all())
    resent = []
    unsent = list(Job.objects.unsent().values_list("pk", flat=True)[:1000])
    if unsent:
        from evalsite.celery import app

        try:
            with app.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1)
        except OperationalError:
            unsent = []  # still down: try again at the next sweep
        for pk in unsent:
            job = Job.objects.unsent().filter(pk=pk).first()  # still unsent: another worker may have sent it
            if job is not None:
                job.send()  # outside a transaction: published at once
                resent.append(pk)
    return {"failed": failed, "resumed": resumed, "resent": resent}
