"""Pages of the core app: the home page."""
from django.contrib.auth.decorators import login_required
from django.shortcuts import render

from evalsite.models import Comparison, Dataset, Policy, Prompt
from evalsite.experiments.models import Experiment
from evalsite.jobs.models import Job

# The overview lists all of these; a user who may view them all is shown it.
OVERVIEW_PERMISSIONS = (
    "evalsite.view_dataset", "evalsite.view_prompt", "evalsite.view_comparison", "evalsite.view_policy",
    "jobs.view_job", "experiments.view_experiment",
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
