"""The job tables: one row per piece of background work (imports, labeling, training, sampling,
experiments), and its per-step metrics.

The rows only hold state. Submitting, running, cancelling and resuming a job is the job runtime's
work (:mod:`evalsite.jobs.runtime`), which sits one layer above these models.
"""
import logging
from datetime import timedelta

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

LOG_TAIL_CHARS = 20_000

log = logging.getLogger(__name__)


class JobQuerySet(models.QuerySet):
    def active(self):
        return self.filter(status__in=[Job.Status.QUEUED, Job.Status.RUNNING])

    def stale(self):
        """Running jobs whose worker stopped writing heartbeats.

        A parent whose children are still queued or running is waiting for them, not lost.
        """
        cutoff = timezone.now() - timedelta(seconds=settings.JOB_STALE_AFTER_SECONDS)
        busy_children = Job.objects.filter(
            parent=models.OuterRef("pk"), status__in=[Job.Status.QUEUED, Job.Status.RUNNING])
        return self.filter(status=Job.Status.RUNNING).filter(
            Q(heartbeat_at__lt=cutoff) | Q(heartbeat_at__isnull=True, started_at__lt=cutoff)
        ).exclude(models.Exists(busy_children))

    def fail_stale(self):
        """Fail the stale jobs (see :meth:`stale`); returns the ids this call failed.

        Each job is failed by a conditional UPDATE, so of several workers sweeping at once
        exactly one fails (and may resume) a given job.
        """
        failed = []
        for pk in self.stale().values_list("pk", flat=True):
            n = Job.objects.stale().filter(pk=pk).update(
                status=Job.Status.FAILED,
                finished_at=timezone.now(),
                error="The worker running this job stopped responding (no heartbeat); it was probably "
                "killed or lost. Finished work is kept; use 'resume' to continue.",
                message="worker lost",
            )
            if n:
                failed.append(pk)
        return failed

    def unsent(self):
        """Queued jobs whose task the broker never took (it was unreachable when they were sent)."""
        cutoff = timezone.now() - timedelta(seconds=settings.JOB_RESEND_AFTER_SECONDS)
        return self.filter(status=Job.Status.QUEUED, sent_at__isnull=True, created_at__lt=cutoff).exclude(
            celery_task_id="")


class Job(models.Model):
    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    FINISHED = (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED)

    kind = models.CharField(max_length=50, db_index=True)
    name = models.CharField(max_length=200, blank=True)
    params = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    progress = models.FloatField(default=0.0)
    message = models.CharField(max_length=500, blank=True)
    log = models.TextField(blank=True, help_text=f"The last {LOG_TAIL_CHARS} characters of the job's log.")
    error = models.TextField(blank=True)
    result = models.JSONField(default=dict, blank=True)
    celery_task_id = models.CharField(max_length=255, blank=True, db_index=True)
    worker = models.CharField(max_length=255, blank=True, help_text="Worker hostname and pid running it.")
    attempts = models.PositiveIntegerField(default=0)
    cancel_requested = models.BooleanField(default=False)
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.CASCADE, related_name="children",
        help_text="For chunks of a larger job and stages of an experiment.",
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    sent_at = models.DateTimeField(
        null=True, blank=True,
        help_text="When the broker last accepted this job's task; empty while the broker was unreachable "
        "(the workers' sweep sends it again).",
    )
    awaits_children = models.BooleanField(
        default=False,
        help_text="Its own step is done and its child jobs do the work: their ends decide how it ends.",
    )

    objects = JobQuerySet.as_manager()

    class Meta:
        db_table = "evalsite_job"  # the table kept its name when the model moved into this app
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(condition=Q(progress__gte=0.0, progress__lte=1.0), name="job_progress_0_1"),
            models.CheckConstraint(
                condition=Q(status__in=["queued", "running", "succeeded", "failed", "cancelled"]),
                name="job_status_valid",
            ),
        ]
        indexes = [models.Index(fields=["status", "kind"]), models.Index(fields=["parent", "status"])]

    def __str__(self):
        return f"#{self.pk} {self.name or self.kind} ({self.status})"

    @property
    def is_finished(self):
        return self.status in self.FINISHED

    @property
    def duration(self):
        if not self.started_at:
            return None
        return (self.finished_at or timezone.now()) - self.started_at

    def append_log(self, text):
        """Append a line to the log tail: a SELECT of the log, then an UPDATE of that column alone
        (status, progress and the cancel flag, written by others meanwhile, are left as they are)."""
        line = f"[{timezone.now():%H:%M:%S}] {text}\n"
        job = Job.objects.filter(pk=self.pk)
        current = job.values_list("log", flat=True).first() or ""
        job.update(log=(current + line)[-LOG_TAIL_CHARS:])


class JobMetric(models.Model):
    """One row of per-step metrics (loss, reward, KL, ...), plotted on the job page."""

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="metrics")
    step = models.PositiveIntegerField()
    values = models.JSONField(default=dict)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "evalsite_jobmetric"
        ordering = ["job_id", "step"]
        constraints = [models.UniqueConstraint(fields=["job", "step"], name="jobmetric_unique_step")]

    def __str__(self):
        return f"{self.job_id}@{self.step}"
