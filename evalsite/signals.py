"""Worker start-up: jobs a restarted worker was running are marked failed (and resumed)."""
from celery.signals import worker_ready


@worker_ready.connect
def _fail_orphaned_jobs(sender=None, **kwargs):
    from evalsite.jobs import fail_orphans_of

    hostname = getattr(sender, "hostname", "") or ""
    if hostname:
        fail_orphans_of(hostname)
