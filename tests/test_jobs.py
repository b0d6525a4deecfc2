"""The job mechanism: lifecycle, cancel, resume, dead workers, and a real worker process."""
import threading
from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from evalsite import jobs
from evalsite.models import Job, JobMetric
from tests.helpers import wait_for

pytestmark = pytest.mark.django_db


def submit(params=None, **kw):
    return Job.submit("noop", params or {}, send=False, **kw)


def test_job_runs_to_success_with_progress_metrics_and_result():
    job = submit({"steps": 4})
    assert job.status == "queued" and job.progress == 0
    assert jobs.execute(job.pk) == "succeeded"
    job.refresh_from_db()
    assert job.status == "succeeded"
    assert job.progress == 1.0
    assert job.result == {"steps": 4}
    assert job.started_at <= job.finished_at
    assert job.attempts == 1
    assert list(JobMetric.objects.filter(job=job).values_list("step", "values__value")) == [
        (0, 0), (1, 1), (2, 4), (3, 9)
    ]


def test_job_error_is_recorded_without_traceback():
    job = submit({"fail": "the file has no 'query' column"})
    assert jobs.execute(job.pk) == "failed"
    job.refresh_from_db()
    assert job.error == "the file has no 'query' column"
    assert "Traceback" not in job.error
    assert job.finished_at is not None


def test_unexpected_exception_keeps_traceback_in_log(monkeypatch):
    def boom(ctx):
        raise ZeroDivisionError("division by zero")

    jobs.job_kind("boom_for_test")(boom)
    job = Job.submit("boom_for_test", send=False)
    assert jobs.execute(job.pk) == "failed"
    job.refresh_from_db()
    assert job.error == "ZeroDivisionError: division by zero"
    assert "Traceback" in job.log


def test_unknown_kind_is_refused_with_the_known_ones():
    with pytest.raises(ValidationError) as e:
        Job.submit("no_such_kind", send=False)
    assert "no_such_kind" in str(e.value) and "noop" in str(e.value)
    assert Job.objects.count() == 0


def test_cancel_queued_job_is_immediate_and_a_late_delivery_does_nothing():
    job = submit()
    assert job.request_cancel() == "cancelled"
    assert jobs.execute(job.pk) == "cancelled"  # the message arriving later is a no-op
    job.refresh_from_db()
    assert job.started_at is None and job.attempts == 0


@pytest.mark.django_db(transaction=True)
def test_cancel_stops_running_job_at_its_next_step():
    reached = threading.Event()
    release = threading.Event()

    def slow(ctx):
        for i in range(1000):
            if i == 2:
                reached.set()
                release.wait(5)
            ctx.progress(i / 1000, f"step {i}", force=True)
        return {"finished": True}

    jobs.job_kind("slow_for_test")(slow)
    job = Job.submit("slow_for_test", send=False)
    outcome = {}
    t = threading.Thread(target=lambda: outcome.setdefault("status", jobs.execute(job.pk)))
    t.start()
    assert reached.wait(5)
    job.request_cancel()
    release.set()
    t.join(10)
    job.refresh_from_db()
    assert outcome["status"] == "cancelled"
    assert job.status == "cancelled"
    assert job.message == "cancelled"
    assert "finished" not in job.result
    assert job.progress < 0.01


def test_duplicate_or_superseded_delivery_is_ignored():
    job = submit()
    job.celery_task_id = "current"
    job.save()
    assert jobs.execute(job.pk, task_id="old-message") == "queued"
    assert jobs.execute(job.pk, task_id="current") == "succeeded"
    assert jobs.execute(job.pk, task_id="current") == "succeeded"
    job.refresh_from_db()
    assert job.attempts == 1


def test_stale_running_job_is_shown_as_failed(settings):
    job = submit()
    old = timezone.now() - timedelta(seconds=settings.JOB_STALE_AFTER_SECONDS + 5)
    Job.objects.filter(pk=job.pk).update(status="running", started_at=old, heartbeat_at=old)
    fresh = submit()
    Job.objects.filter(pk=fresh.pk).update(status="running", started_at=timezone.now(), heartbeat_at=timezone.now())
    assert Job.objects.fail_stale() == 1
    job.refresh_from_db()
    fresh.refresh_from_db()
    assert job.status == "failed" and "stopped responding" in job.error
    assert fresh.status == "running"


def test_resume_requeues_failed_job_and_counts_attempts():
    job = submit({"fail": "first try fails"})
    jobs.execute(job.pk)
    job.refresh_from_db()
    Job.objects.filter(pk=job.pk).update(params={"steps": 2})
    job.refresh_from_db()
    assert job.resume() is True
    assert job.status == "queued" and job.error == ""
    assert jobs.execute(job.pk, task_id=job.celery_task_id) == "succeeded"
    job.refresh_from_db()
    assert job.attempts == 2
    assert "attempt 2" in job.log
    assert job.resume() is False  # succeeded jobs are not resumed


def test_orphans_of_a_restarted_worker_are_failed():
    job = submit()
    Job.objects.filter(pk=job.pk).update(status="running", worker="w1@host pid 123", started_at=timezone.now(),
                                         heartbeat_at=timezone.now())
    other = submit()
    Job.objects.filter(pk=other.pk).update(status="running", worker="w2@host pid 9", heartbeat_at=timezone.now())
    assert jobs.fail_orphans_of("w1@host") == 1
    job.refresh_from_db()
    other.refresh_from_db()
    assert job.status == "failed" and "restarted" in job.error
    assert other.status == "running"


def test_log_tail_is_capped():
    from evalsite.models.jobs import LOG_TAIL_CHARS

    job = submit()
    for i in range(300):
        job.append_log("x" * 100 + f" line {i}")
    job.refresh_from_db()
    assert len(job.log) <= LOG_TAIL_CHARS
    assert job.log.rstrip().endswith("line 299")


@pytest.mark.worker
def test_real_worker_runs_job_from_queued_to_succeeded(celery_worker_process, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        job = Job.submit("noop", {"steps": 3, "sleep": 0.05})
    seen = {Job.objects.get(pk=job.pk).status}

    def finished():
        status = Job.objects.get(pk=job.pk).status
        seen.add(status)
        return status in Job.FINISHED

    wait_for(finished, timeout=60, interval=0.02, message="job to finish on the worker")
    job.refresh_from_db()
    assert job.status == "succeeded", (job.error, celery_worker_process.read_log()[-2000:])
    assert "queued" in seen
    assert job.result == {"steps": 3}
    assert job.worker.startswith(celery_worker_process.name)
    assert JobMetric.objects.filter(job=job).count() == 3


@pytest.mark.worker
def test_real_worker_cancel_and_dead_worker(start_worker, django_capture_on_commit_callbacks, settings):
    worker = start_worker()
    with django_capture_on_commit_callbacks(execute=True):
        job = Job.submit("noop", {"steps": 200, "sleep": 0.1})
    wait_for(lambda: Job.objects.get(pk=job.pk).progress > 0.02, timeout=60, message="job to make progress")
    job.request_cancel()
    wait_for(lambda: Job.objects.get(pk=job.pk).status == "cancelled", timeout=30, message="cancel to land")
    job.refresh_from_db()
    assert job.progress < 0.5

    # A worker killed mid-job: after a restart under the same name the job is shown as failed.
    with django_capture_on_commit_callbacks(execute=True):
        job2 = Job.submit("noop", {"steps": 200, "sleep": 0.1})
    wait_for(lambda: Job.objects.get(pk=job2.pk).progress > 0.02, timeout=60, message="second job to start")
    worker.kill()
    assert Job.objects.get(pk=job2.pk).status == "running"
    start_worker(name=worker.name)
    wait_for(lambda: Job.objects.get(pk=job2.pk).status == "failed", timeout=30, message="orphan to be failed")
    assert "restarted" in Job.objects.get(pk=job2.pk).error
