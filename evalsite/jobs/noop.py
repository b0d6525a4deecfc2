"""The ``noop`` job kind: counts to ``steps``, for checking workers end to end."""
import time

from evalsite.jobs.runtime import JobError, job_kind

NOOP = "noop"


@job_kind(NOOP, label="Test job", resumable=True)
def noop_job(ctx):
    """Counts to ``steps``, sleeping ``sleep`` seconds a step: for checking workers end to end.

    It resumes like the real kinds: the last finished step is its checkpoint.
    """
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
        raise JobError(str(ctx.params["fail"]))
    return {"steps": steps, **({"resumed_at_step": start} if start else {})}
