"""Pages of the core app: the home page and the job status feeds the admin polls."""
from django.contrib.auth.decorators import login_required
from django.http import JsonResponse
from django.shortcuts import get_object_or_404, render

from evalsite.models import Comparison, Dataset, Experiment, Job, Policy, Prompt
from evalsite.permissions import permissions_required

# The overview lists all of these; a user who may view them all is shown it.
OVERVIEW_PERMISSIONS = (
    "evalsite.view_dataset", "evalsite.view_prompt", "evalsite.view_comparison", "evalsite.view_policy",
    "evalsite.view_job", "evalsite.view_experiment",
)


@login_required
def home(request):
    """Researchers see the workbench overview; annotators see their rounds."""
    is_researcher = request.user.has_perms(OVERVIEW_PERMISSIONS)
    context = {"is_researcher": is_researcher}
    if is_researcher:
        context.update(
            counts={
                "datasets": Dataset.objects.count(),
                "prompts": Prompt.objects.count(),
                "comparisons": Comparison.objects.count(),
                "policies": Policy.objects.count(),
                "active_jobs": Job.objects.active().count(),
            },
            recent_jobs=Job.objects.filter(parent__isnull=True)[:10],
            experiments=Experiment.objects.select_related("task", "dataset")[:10],
            datasets=Dataset.objects.select_related("task")[:20],
            policies=Policy.objects.all()[:20],
        )
    context.update(annotator_home_context(request))
    return render(request, "evalsite/home.html", context)


def annotator_home_context(request):
    """The human-evaluation module adds the user's open rounds here."""
    from evalsite.humaneval.views import home_context

    return home_context(request)


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


@permissions_required("evalsite.view_job")
def job_status(request):
    """Status of several jobs at once: ``?ids=1,2,3`` (what the admin list polls)."""
    ids = [int(i) for i in request.GET.get("ids", "").split(",") if _is_whole_number(i.strip())][:500]
    jobs = Job.objects.filter(pk__in=ids).only(
        "id", "kind", "name", "status", "progress", "message", "error", "cancel_requested",
        "started_at", "finished_at", "heartbeat_at",
    )
    return JsonResponse({"jobs": [job_as_dict(j) for j in jobs]})


@permissions_required("evalsite.view_job")
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
