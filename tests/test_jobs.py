"""The job mechanism: lifecycle, cancel, resume, dead workers, and a real worker process."""
import threading
from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from evalsite.jobs import runtime as jobs
from evalsite.jobs.models import Job, JobMetric
from tests.helpers import wait_for

pytestmark = pytest.mark.django_db


def submit(params=None, **kw):
    return jobs.submit("noop", params or {}, send=False, **kw)


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
    job = jobs.submit("boom_for_test", send=False)
    assert jobs.execute(job.pk) == "failed"
    job.refresh_from_db()
    assert job.error == "ZeroDivisionError: division by zero"
    assert "Traceback" in job.log


def test_unknown_kind_is_refused_with_the_known_ones():
    with pytest.raises(ValidationError) as e:
        jobs.submit("no_such_kind", send=False)
    assert "no_such_kind" in str(e.value) and "noop" in str(e.value)
    assert Job.objects.count() == 0


def test_cancel_queued_job_is_immediate_and_a_late_delivery_does_nothing():
    job = submit()
    assert jobs.cancel(job) == "cancelled"
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
    job = jobs.submit("slow_for_test", send=False)
    outcome = {}
    t = threading.Thread(target=lambda: outcome.setdefault("status", jobs.execute(job.pk)))
    t.start()
    assert reached.wait(5)
    jobs.cancel(job)
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
    assert Job.objects.fail_stale() == [job.pk]
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
    assert jobs.resume(job) is True
    assert job.status == "queued" and job.error == ""
    assert jobs.execute(job.pk, task_id=job.celery_task_id) == "succeeded"
    job.refresh_from_db()
    assert job.attempts == 2
    assert "attempt 2" in job.log
    assert jobs.resume(job) is False  # succeeded jobs are not resumed


def test_orphans_of_a_restarted_worker_are_failed_and_resumed_while_attempts_last(settings):
    job = submit()  # the test kind resumes from its checkpoint, like RL and labeling
    Job.objects.filter(pk=job.pk).update(status="running", worker="w1@host pid 123", started_at=timezone.now(),
                                         heartbeat_at=timezone.now(), attempts=1)
    spent = submit()
    Job.objects.filter(pk=spent.pk).update(status="running", worker="w1@host pid 124", heartbeat_at=timezone.now(),
                                           attempts=settings.JOB_AUTO_RESUME_ATTEMPTS)
    other = submit()
    Job.objects.filter(pk=other.pk).update(status="running", worker="w2@host pid 9", heartbeat_at=timezone.now())
    assert jobs.fail_orphans_of("w1@host") == 2
    job.refresh_from_db()
    spent.refresh_from_db()
    other.refresh_from_db()
    assert job.status == "queued" and job.sent_at is None  # sent once the (absent) transaction commits
    assert "restarted while this job was running; resuming automatically" in job.log
    assert spent.status == "failed" and "restarted" in spent.error
    assert "not resumed automatically after 3 attempts" in spent.log
    assert other.status == "running"


def test_sweep_fails_stale_jobs_of_any_worker_and_resumes_resumable_kinds(settings):
    old = timezone.now() - timedelta(seconds=settings.JOB_STALE_AFTER_SECONDS + 5)
    lost = submit()
    Job.objects.filter(pk=lost.pk).update(status="running", worker="gone@elsewhere pid 1", started_at=old,
                                          heartbeat_at=old, attempts=1)
    not_resumable = Job.objects.create(kind="import_dataset", status="running", started_at=old, heartbeat_at=old)
    assert not jobs.get_kind("import_dataset").resumable
    parent = submit()
    Job.objects.filter(pk=parent.pk).update(status="running", started_at=old, heartbeat_at=old)
    child = submit(parent=parent)  # still queued: the parent waits for it, it is not lost

    done = jobs.sweep()
    lost.refresh_from_db()
    parent.refresh_from_db()
    assert lost.pk in done["failed"] and done["resumed"] == [lost.pk]
    assert lost.status == "queued" and "no heartbeat from its worker; resuming automatically" in lost.log
    assert parent.status == "running" and child.pk not in done["failed"]
    not_resumable.refresh_from_db()
    assert not_resumable.status == "failed" and "does not resume by itself" in not_resumable.log
    assert jobs.sweep()["failed"] == []  # a second sweep finds nothing left to do


def test_sweep_sends_again_jobs_the_broker_never_took(django_capture_on_commit_callbacks):
    job = submit()
    # As a submit during a broker outage leaves it: a task id the broker never accepted.
    Job.objects.filter(pk=job.pk).update(celery_task_id="lost-message", sent_at=None,
                                         created_at=timezone.now() - timedelta(seconds=60))
    fresh = submit()
    Job.objects.filter(pk=fresh.pk).update(celery_task_id="just-sent", sent_at=None)  # its publish is under way
    inline = submit()  # send=False and no task id: an experiment stage, run inline, never sent
    Job.objects.filter(pk=inline.pk).update(created_at=timezone.now() - timedelta(seconds=60))

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        done = jobs.sweep()
    job.refresh_from_db()
    assert done["resent"] == [job.pk]
    assert job.celery_task_id != "lost-message"  # the old message, should it turn up, is a no-op
    assert [c.args for c in callbacks] == [(job.pk, job.celery_task_id)]


def test_log_tail_is_capped():
    from evalsite.jobs.models import LOG_TAIL_CHARS

    job = submit()
    for i in range(300):
        job.append_log("x" * 100 + f" line {i}")
    job.refresh_from_db()
    assert len(job.log) <= LOG_TAIL_CHARS
    assert job.log.rstrip().endswith("line 299")


@pytest.mark.worker
def test_real_worker_runs_job_from_queued_to_succeeded(celery_worker_process, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        job = jobs.submit("noop", {"steps": 3, "sleep": 0.05})
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
        job = jobs.submit("noop", {"steps": 200, "sleep": 0.1})
    wait_for(lambda: Job.objects.get(pk=job.pk).progress > 0.02, timeout=60, message="job to make progress")
    jobs.cancel(job)
    wait_for(lambda: Job.objects.get(pk=job.pk).status == "cancelled", timeout=30, message="cancel to land")
    job.refresh_from_db()
    assert job.progress < 0.5

    # A worker killed mid-job: restarted under the same name, it fails the job at once and, as the
    # kind resumes, runs it on from its checkpoint.
    with django_capture_on_commit_callbacks(execute=True):
        job2 = jobs.submit("noop", {"steps": 100, "sleep": 0.05})
    wait_for(lambda: Job.objects.get(pk=job2.pk).progress > 0.05, timeout=60, message="second job to start")
    worker.kill()
    assert Job.objects.get(pk=job2.pk).status == "running"
    start_worker(name=worker.name)
    wait_for(lambda: Job.objects.get(pk=job2.pk).status in Job.FINISHED, timeout=60, message="orphan to finish")
    job2.refresh_from_db()
    assert job2.status == "succeeded", job2.error
    assert job2.attempts == 2 and "restarted while this job was running" in job2.log
    assert job2.result["resumed_at_step"] > 0  # went on from its checkpoint, not from the start


@pytest.mark.worker
def test_a_new_worker_finds_and_resumes_the_jobs_of_a_dead_one(start_worker, django_capture_on_commit_callbacks):
    """No page view and no restart under the old hostname: the workers' own sweep finds the job."""
    sweep = {"JOB_STALE_AFTER_SECONDS": "3", "JOB_SWEEP_SECONDS": "0.5"}
    first = start_worker(name="doomed", extra_env=sweep)
    with django_capture_on_commit_callbacks(execute=True):
        job = jobs.submit("noop", {"steps": 100, "sleep": 0.05})
    wait_for(lambda: Job.objects.get(pk=job.pk).progress > 0.05, timeout=60, message="job to start")
    first.kill()
    replacement = start_worker(name="replacement", extra_env=sweep)
    wait_for(lambda: Job.objects.get(pk=job.pk).status in Job.FINISHED, timeout=90,
             message="the replacement worker to resume and finish the job")
    job.refresh_from_db()
    assert job.status == "succeeded", (job.error, replacement.read_log()[-3000:])
    assert job.worker.startswith("replacement@")
    assert "no heartbeat from its worker; resuming automatically" in job.log
    assert job.attempts == 2 and job.result["resumed_at_step"] > 0
