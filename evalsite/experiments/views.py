"""The experiment page: stages with live progress, key figures, links to artifacts and reports."""
from django.http import JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from evalsite.experiments import figures, pipeline
from evalsite.experiments.models import Experiment
from evalsite.permissions import permissions_required

# Launching (or relaunching) starts the stages' jobs; cancelling stops them, as the job admin's
# cancel does for those who may change jobs. The experiment admin's actions check the same.
LAUNCH_PERMISSIONS = ("experiments.change_experiment", "jobs.add_job")
CANCEL_PERMISSIONS = ("experiments.change_experiment", "jobs.change_job")


@permissions_required("experiments.view_experiment")
def detail(request, pk):
    exp = get_object_or_404(Experiment.objects.select_related("task", "dataset", "base_policy", "labeler_config"), pk=pk)
    done, rows = pipeline.progress(exp)
    return render(request, "experiments/detail.html", {
        "exp": exp, "done": done, "rows": rows, "figures": figures.all_figures(exp),
    })


@permissions_required("experiments.view_experiment")
def detail_json(request, pk):
    exp = get_object_or_404(Experiment, pk=pk)
    done, rows = pipeline.progress(exp)
    return JsonResponse({
        "id": exp.pk, "status": exp.status, "message": exp.message, "progress": round(done, 4),
        "stages": [{"name": s.name, "label": s.label, "job_id": j.pk if j else None,
                    "status": j.status if j else "pending", "progress": j.progress if j else 0.0,
                    "message": j.message if j else ""} for s, j in rows],
        # The page polls this every few seconds and redraws only the RL curves; the other figures
        # (bootstrap intervals among them) are computed when the page itself loads.
        "artifacts": exp.artifacts, "figures": {"rl": figures.rl_figures(exp)},
    })


@permissions_required(*LAUNCH_PERMISSIONS)
@require_POST
def launch(request, pk):
    from django.contrib import messages
    from django.core.exceptions import ValidationError

    exp = get_object_or_404(Experiment, pk=pk)
    try:
        pipeline.launch(exp)
        messages.success(request, "Launched: finished stages are reused, failed ones retried.")
    except ValidationError as e:
        messages.error(request, "Cannot start: " + " ".join(e.messages))
    return redirect("experiments:detail", pk=pk)


@permissions_required(*CANCEL_PERMISSIONS)
@require_POST
def cancel(request, pk):
    from django.contrib import messages

    pipeline.cancel(get_object_or_404(Experiment, pk=pk))
    messages.info(request, "Cancel requested: running stages stop at their next step.")
    return redirect("experiments:detail", pk=pk)
