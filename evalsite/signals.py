"""Worker start-up: jobs a restarted worker was running are marked failed (and resumed)."""
import os

from celery.signals import worker_process_init, worker_ready


@worker_ready.connect
def _fail_orphaned_jobs(sender=None, **kwargs):
    from evalsite.jobs import fail_orphans_of

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
