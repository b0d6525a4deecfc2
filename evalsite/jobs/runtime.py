"""The job runtime: a registry of job kinds, submitting, running, cancelling and resuming jobs,
and jobs that fan out into child jobs.

A job kind is a plain function ``fn(ctx) -> dict`` registered with ``@job_kind(...)`` (each app
registers its kinds in its ``AppConfig.ready()``). It reads ``ctx.params``, reports
``ctx.progress(fraction, message)`` as it goes (which is also where a cancel request stops it),
appends to ``ctx.log``, stores per-step ``ctx.metric(step, ...)`` and returns a JSON-able result.
Resumable kinds keep their checkpoints in ``ctx.work_dir`` and look there first.

Fan-out: a job may submit child jobs (``ctx.submit_child``) and return ``ctx.wait_for_children()``
instead of a result. It then holds no worker: it stays running while its children work, its
progress follows theirs, and when the last one ends it fails (a child failed), is cancelled (a
child was cancelled), succeeds, or, for kinds registered with ``reruns_after_children``, is
queued again so that its function continues (an experiment runs its next level of stages so).

:func:`submit` creates and queues a job; the job queue adapter (``settings.JOB_QUEUE``, Celery's
in :mod:`evalsite.celery`) delivers it to a worker, which calls :func:`execute`. Everything a job
writes to the database it writes in its own transactions, so a failed or killed job keeps the
work it finished.
"""
import logging
import os
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.db.models import Exists, F, OuterRef
from django.utils import timezone
from django.utils.module_loading import import_string

from evalsite.jobs.models import Job, JobMetric

log = logging.getLogger(__name__)


class JobCancelled(Exception):
    """Raised inside a job at its next step after a cancel request."""


class JobError(Exception):
    """An expected failure with a message for the user (bad file, missing model, ...).

    Shown as the job's error without a traceback.
    """


class QueueUnreachable(Exception):
    """The job queue adapter could not hand a job to the broker."""


@dataclass
class JobKind:
    name: str
    func: Callable
    label: str
    resumable: bool = False
    validator: Callable | None = None
    description: str = ""
    # Fan-out (see the module doc): run the function again once all children have succeeded.
    reruns_after_children: bool = False
    # ``summarize(parent, children, fields)`` may change the fields a parent gets from its children
    # (progress, message, error, result); ``children`` are dicts of each child's columns.
    summarize: Callable | None = None
    # ``on_end(job)`` runs once the job has ended (succeeded, failed or cancelled).
    on_end: Callable | None = None

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


def job_kind(name, *, label=None, resumable=False, validator=None, reruns_after_children=False, summarize=None,
             on_end=None):
    """Register ``fn(ctx)`` as the implementation of job kind ``name``."""

    def register(func):
        _REGISTRY[name] = JobKind(
            name=name, func=func, label=label or name.replace("_", " "), resumable=resumable,
            validator=validator, description=(func.__doc__ or "").strip(),
            reruns_after_children=reruns_after_children, summarize=summarize, on_end=on_end,
        )
        return func

    return register


def get_kind(name) -> JobKind:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValidationError(f"Unknown job kind {name!r}; known kinds: {', '.join(sorted(_REGISTRY))}.")


def all_kinds():
    return dict(_REGISTRY)


# ---- submitting, cancelling, resuming ---------------------------------------------------------
def submit(kind, params=None, *, name="", user=None, parent=None, send=True):
    """Create a queued job and send it to the workers once the transaction commits.

    ``send=False`` leaves it for :func:`run_here` (or a later :func:`send`).
    """
    spec = get_kind(kind)
    params = spec.validate(dict(params or {}))
    job = Job.objects.create(kind=kind, params=params, name=name or spec.label, created_by=user, parent=parent)
    if send:
        send_job(job)
    return job


def _queue():
    return import_string(settings.JOB_QUEUE)


def send_job(job):
    """(Re)send a job to the broker. A fresh task id makes any older message for it a no-op.

    The message goes once the transaction commits. If the broker cannot be reached the job stays
    queued with ``sent_at`` empty and the workers' sweep sends it again later.
    """
    task_id = str(uuid.uuid4())
    Job.objects.filter(pk=job.pk).update(celery_task_id=task_id, sent_at=None)
    job.celery_task_id = task_id
    job.sent_at = None
    transaction.on_commit(partial(publish, job.pk, task_id))


def publish(job_id, task_id):
    """Hand job ``job_id``'s task to the broker; record when it took it, or why it did not."""
    try:
        _queue().publish(job_id, task_id)
    except QueueUnreachable as e:
        log.warning("job %s: broker unreachable, the workers' sweep will send it later (%s)", job_id, e)
        Job.objects.filter(pk=job_id, celery_task_id=task_id, status=Job.Status.QUEUED).update(
            message="waiting for the broker: it will be sent when it can be reached")
        return False
    Job.objects.filter(pk=job_id, celery_task_id=task_id).update(sent_at=timezone.now())
    return True


def cancel(job):
    """Queued jobs are cancelled at once; running ones stop at their next step; children too.

    Returns the job's status afterwards.
    """
    now = timezone.now()
    with transaction.atomic():
        n = Job.objects.filter(pk=job.pk, status=Job.Status.QUEUED).update(
            status=Job.Status.CANCELLED, cancel_requested=True, finished_at=now, message="cancelled before start"
        )
        if not n:
            Job.objects.filter(pk=job.pk, status=Job.Status.RUNNING).update(cancel_requested=True)
    for child in job.children.filter(status__in=[Job.Status.QUEUED, Job.Status.RUNNING]):
        cancel(child)
    if n:
        job_ended(job.pk)
    job.refresh_from_db()
    return job.status


def resume(job, *, succeeded_too=False, send=True):
    """Queue a failed or cancelled job again; resumable kinds continue from their checkpoint.

    ``succeeded_too`` also queues a succeeded one again (a relaunched experiment looks for what
    is left to do); ``send=False`` leaves it for :func:`run_here`. Returns whether it was queued.
    """
    statuses = [Job.Status.FAILED, Job.Status.CANCELLED] + ([Job.Status.SUCCEEDED] if succeeded_too else [])
    n = Job.objects.filter(pk=job.pk, status__in=statuses).update(
        status=Job.Status.QUEUED, cancel_requested=False, awaits_children=False, error="", finished_at=None,
        message="queued again",
    )
    if n:
        if send:
            send_job(job)
        else:
            Job.objects.filter(pk=job.pk).update(celery_task_id="")  # not sent: nor is it when its children end
        job.refresh_from_db()
    return bool(n)


# ---- running ----------------------------------------------------------------------------------
class WaitForChildren:
    """What a job function returns to hand its work to the child jobs it submitted."""

    def __init__(self, message="", result=None):
        self.message = message
        self.result = result or {}


@dataclass
class JobContext:
    job: Job
    params: dict = field(default_factory=dict)
    inline: bool = False  # run by run_here: children are run here too, not sent to workers
    _cancel: threading.Event = field(default_factory=threading.Event)
    _last_write: float = 0.0

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
        JobMetric.objects.update_or_create(job_id=self.job.pk, step=step, defaults={"values": values})

    def set_result(self, **values):
        """Merge values into the job's result while it runs (e.g. ids of finished artifacts)."""
        job = Job.objects.get(pk=self.job.pk)
        job.result = {**job.result, **values}
        Job.objects.filter(pk=job.pk).update(result=job.result)
        self.job.result = job.result

    def submit_child(self, kind, params, *, name=""):
        """Submit a child job of this one (sent to the workers unless this job runs inline)."""
        return submit(kind, params, name=name, user=self.job.created_by, parent=self.job, send=not self.inline)

    def wait_for_children(self, message="", **result):
        """Return this from the job function: the children submitted so far decide how it ends."""
        return WaitForChildren(message, result)


class _Heartbeat(threading.Thread):
    """Writes the job's heartbeat and picks up cancel requests, even during long steps."""

    def __init__(self, ctx):
        super().__init__(daemon=True, name=f"job-{ctx.job.pk}-heartbeat")
        self.ctx = ctx
        self.stop = threading.Event()

    def run(self):
        try:
            while not self.stop.wait(settings.JOB_HEARTBEAT_SECONDS):
                Job.objects.filter(pk=self.ctx.job.pk).update(heartbeat_at=timezone.now())
                if Job.objects.filter(pk=self.ctx.job.pk, cancel_requested=True).exists():
                    self.ctx._cancel.set()
        except Exception:  # the main thread's outcome matters more than a missed beat
            log.exception("heartbeat for job %s failed", self.ctx.job.pk)
        finally:
            connection.close()


def execute(job_id, task_id=None, hostname="", *, inline=False):
    """Run job ``job_id``'s function in this process. Returns its status afterwards.

    Only a delivery whose task id matches the job's current one (or any, when ``task_id``
    is None) claims it, so duplicate or stale broker messages are no-ops.
    """
    now = timezone.now()
    claim = Job.objects.filter(pk=job_id, status=Job.Status.QUEUED)
    if task_id is not None:
        claim = claim.filter(celery_task_id=task_id)
    worker = f"{hostname or 'local'} pid {os.getpid()}"
    if not claim.update(
        status=Job.Status.RUNNING, started_at=now, heartbeat_at=now, worker=worker, awaits_children=False,
        attempts=F("attempts") + 1, message="started",
    ):
        log.info("job %s not claimed (not queued, or superseded message %s)", job_id, task_id)
        return Job.objects.filter(pk=job_id).values_list("status", flat=True).first()

    job = Job.objects.get(pk=job_id)
    ctx = JobContext(job=job, params=dict(job.params), inline=inline)
    heartbeat = _Heartbeat(ctx)
    heartbeat.start()
    status, fields = Job.Status.FAILED, {}
    try:
        kind = get_kind(job.kind)
        if job.attempts > 1:
            ctx.log(f"attempt {job.attempts}" + (" (resuming from checkpoint)" if kind.resumable else ""))
        result = kind.func(ctx) or {}
        merged = Job.objects.get(pk=job_id).result
        if isinstance(result, WaitForChildren):
            status = Job.Status.RUNNING
            fields = {"awaits_children": True, "result": {**merged, **result.result},
                      "message": result.message or "waiting for its child jobs"}
        else:
            status = Job.Status.SUCCEEDED
            fields = {"progress": 1.0, "result": {**merged, **result}, "message": "done"}
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
    if status == Job.Status.RUNNING:
        Job.objects.filter(pk=job_id).update(heartbeat_at=timezone.now(), **fields)
        sync_parent(job_id)  # children that ended before this point have not synced it
    else:
        Job.objects.filter(pk=job_id).update(status=status, finished_at=timezone.now(), **fields)
        job_ended(job_id)
    return Job.objects.filter(pk=job_id).values_list("status", flat=True).first()


def run_here(job_id, *, poll_seconds=1.0):
    """Run a job, and every child job it fans out to, in this process (no worker needed).

    Jobs a worker took meanwhile are waited for. Returns the job's final status.
    """
    while True:
        execute(job_id, inline=True)
        job = Job.objects.get(pk=job_id)
        if job.is_finished:
            return job.status
        if job.status == Job.Status.RUNNING and job.awaits_children:
            queued = list(job.children.filter(status=Job.Status.QUEUED).values_list("pk", flat=True))
            for child_id in queued:
                run_here(child_id, poll_seconds=poll_seconds)
            if not queued:
                fail_stale_and_resume(job.children.all())  # a child whose worker died
                time.sleep(poll_seconds)
        elif job.status == Job.Status.RUNNING:
            time.sleep(poll_seconds)  # a worker runs it


# ---- fan-out ----------------------------------------------------------------------------------
CHILD_COLUMNS = ("pk", "name", "kind", "status", "progress", "params", "error", "result")


def sync_parent(parent_id):
    """Bring a waiting parent's status, progress and message in line with its children.

    Called whenever a child ends and when the parent starts waiting; the parent's row is locked,
    so of several children ending at once each sees the others' ends. Returns the parent's status
    (None when it is not waiting for children).
    """
    requeue = ended = False
    with transaction.atomic():
        parent = Job.objects.select_for_update().filter(
            pk=parent_id, status=Job.Status.RUNNING, awaits_children=True).first()
        if parent is None:
            return None
        kind = get_kind(parent.kind)
        children = list(parent.children.values(*CHILD_COLUMNS))
        by = {s: [c for c in children if c["status"] == s] for s in Job.Status.values}
        active = by[Job.Status.QUEUED] + by[Job.Status.RUNNING]
        n = len(children)
        now = timezone.now()
        progress = sum(1.0 if c["status"] == Job.Status.SUCCEEDED else c["progress"] for c in children) / n if n else 1.0
        fields = {"progress": min(1.0, progress)}
        if active:
            fields.update(heartbeat_at=now, message=f"{n - len(active)}/{n} child jobs done")
        elif by[Job.Status.FAILED]:
            failed = by[Job.Status.FAILED]
            fields.update(status=Job.Status.FAILED, finished_at=now, message="child jobs failed",
                          error=f"{len(failed)} of {n} child job(s) failed ("
                                + "; ".join(f"#{c['pk']} {c['name']}: {c['error']}" for c in failed[:3])
                                + "). Finished work is kept; resume this job to retry them.")
        elif by[Job.Status.CANCELLED] or parent.cancel_requested:
            fields.update(status=Job.Status.CANCELLED, finished_at=now, message="cancelled")
        elif kind.reruns_after_children:
            fields.update(status=Job.Status.QUEUED, awaits_children=False, message="its child jobs are done")
        else:
            fields.update(status=Job.Status.SUCCEEDED, finished_at=now, progress=1.0, error="",
                          message=f"{n} child job(s) done")
        if kind.summarize is not None:
            fields = kind.summarize(parent, children, fields) or fields
        Job.objects.filter(pk=parent_id).update(**fields)
        status = fields.get("status", parent.status)
        requeue = status == Job.Status.QUEUED
        ended = status in Job.FINISHED
    if requeue and parent.celery_task_id:  # a job run by run_here was never sent, and is not now
        send_job(parent)
    if ended:
        job_ended(parent_id)
    return status


def job_ended(job_id):
    """What follows a job's end: its kind's ``on_end``, and its waiting parent's update."""
    job = Job.objects.filter(pk=job_id).first()
    if job is None:
        return
    kind = _REGISTRY.get(job.kind)
    if kind is not None and kind.on_end is not None:
        kind.on_end(job)
    if job.parent_id:
        sync_parent(job.parent_id)


# ---- lost workers -----------------------------------------------------------------------------
def auto_resume(job_id, reason):
    """Queue a failed resumable job again, unless it has used up its automatic attempts.

    A job that kills its worker every time (out of memory, say) stops after
    ``JOB_AUTO_RESUME_ATTEMPTS`` attempts and waits for a person's 'resume'.
    """
    job = Job.objects.filter(pk=job_id, status=Job.Status.FAILED).first()
    if job is None:
        return False
    kind = _REGISTRY.get(job.kind)
    if kind is None or not kind.resumable:
        job.append_log(f"{reason}; this kind does not resume by itself: use 'resume'")
        return False
    if job.attempts >= settings.JOB_AUTO_RESUME_ATTEMPTS:
        job.append_log(f"{reason}; not resumed automatically after {job.attempts} attempts: use 'resume'")
        return False
    job.append_log(f"{reason}; resuming automatically from the last checkpoint")
    return resume(job)


def fail_orphans_of(hostname):
    """At worker start: jobs this worker was running when it died are failed, resumable ones requeued.

    (Jobs of a worker that does not come back under its old name are found by :func:`sweep`.)
    """
    orphans = list(Job.objects.filter(status=Job.Status.RUNNING, awaits_children=False,
                                      worker__startswith=f"{hostname} pid ").values_list("pk", flat=True))
    for pk in orphans:
        with transaction.atomic():  # others see the job queued again, never failed in between
            n = Job.objects.filter(pk=pk, status=Job.Status.RUNNING).update(
                status=Job.Status.FAILED, finished_at=timezone.now(), message="worker lost",
                error=f"Worker {hostname} restarted while this job was running.",
            )
            resumed = n and auto_resume(pk, f"worker {hostname} restarted while this job was running")
        if n and not resumed:
            job_ended(pk)
    return len(orphans)


def fail_stale_and_resume(queryset):
    """Fail the stale jobs of ``queryset`` and resume the resumable ones; returns (failed, resumed).

    Each job is failed and queued again in one transaction, so nobody reading it (a page, a
    waiting parent, a test) sees it failed on its way back to the queue.
    """
    failed, resumed = [], []
    for pk in queryset.stale().values_list("pk", flat=True):
        with transaction.atomic():
            if Job.objects.filter(pk=pk).fail_stale():
                failed.append(pk)
                if auto_resume(pk, "no heartbeat from its worker"):
                    resumed.append(pk)
        if pk in failed and pk not in resumed:
            job_ended(pk)
    return failed, resumed


def sweep():
    """What every worker runs on a schedule (see evalsite/celery.py), never a web request.

    * Running jobs without a heartbeat for ``JOB_STALE_AFTER_SECONDS`` are failed, and
      resumable kinds queued again, whichever worker (and hostname) they ran on.
    * Waiting parents whose children have all ended are brought up to date (a worker that died
      between a child's end and its parent's update leaves one behind).
    * Queued jobs the broker never took (it was down when they were submitted) are sent again.

    Every change is a conditional UPDATE, so workers sweeping at once do each thing once.
    Returns what it did, for the worker's log.
    """
    busy_children = Job.objects.filter(parent=OuterRef("pk"), status__in=[Job.Status.QUEUED, Job.Status.RUNNING])
    synced = [pk for pk in Job.objects.filter(status=Job.Status.RUNNING, awaits_children=True)
              .exclude(Exists(busy_children)).values_list("pk", flat=True) if sync_parent(pk) != Job.Status.RUNNING]
    failed, resumed = fail_stale_and_resume(Job.objects.all())
    resent = []
    unsent = list(Job.objects.unsent().values_list("pk", flat=True)[:1000])
    if unsent and _queue().reachable():
        for pk in unsent:
            job = Job.objects.unsent().filter(pk=pk).first()  # still unsent: another worker may have sent it
            if job is not None:
                send_job(job)  # outside a transaction: published at once
                resent.append(pk)
    return {"failed": failed, "resumed": resumed, "resent": resent, "synced": synced}
