"""The job status feeds the admin's job pages poll."""
from django.http import JsonResponse
from django.shortcuts import get_object_or_404

from evalsite.jobs.models import Job
from evalsite.permissions import permissions_required


def job_as_dict(job):
    return {
        "id": job.pk,
        "kind": job.kind,
        "name": job.name,
        "status": job.status,
        "status_label": job.get_status_display(),
        "progress": round(job.progress, 4),
        "message": job.message,
        "error": job.error,
        "cancel_requested": job.cancel_requested,
        "started_at": job.started_at.isoformat() if job.started_at else None,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
        "heartbeat_at": job.heartbeat_at.isoformat() if job.heartbeat_at else None,
    }


@permissions_required("jobs.view_job")
def job_status(request):
    """Status of several jobs at once: ``?ids=1,2,3`` (what the admin list polls)."""
    ids = [int(i) for i in request.GET.get("ids", "").split(",") if _is_whole_number(i.strip())][:500]
    jobs = Job.objects.filter(pk__in=ids).only(
        "id", "kind", "name", "status", "progress", "message", "error", "cancel_requested",
        "started_at", "finished_at", "heartbeat_at",
    )
    return JsonResponse({"jobs": [job_as_dict(j) for j in jobs]})


@permissions_required("jobs.view_job")
def job_detail_json(request, pk):
    """One job with its log tail and metrics (what the job page polls)."""
    job = get_object_or_404(Job, pk=pk)
    data = job_as_dict(job)
    data["log"] = job.log
    data["result"] = job.result
    after = request.GET.get("after_step", "-1").strip()
    if not _is_whole_number(after.removeprefix("-")):
        return JsonResponse({"error": f"after_step must be a whole number (got {after[:40]!r})."}, status=400)
    after = int(after)
    data["metrics"] = [
        {"step": m.step, **m.values} for m in job.metrics.filter(step__gt=after).order_by("step")
    ]
    data["children"] = [job_as_dict(c) for c in job.children.order_by("id")]
    return JsonResponse(data)


def _is_whole_number(text):
    """At most 20 ASCII digits: str.isdigit() also passes "²" and "٣", which int() refuses or
    reads, and int() refuses strings of over 4300 digits."""
    return len(text) <= 20 and text.isdigit() and text.isascii()
