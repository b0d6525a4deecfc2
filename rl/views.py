"""Researcher pages of the training app: start SFT, sampling, reward-model and RL jobs."""
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.http import Http404
from django.shortcuts import redirect, render
from django.urls import reverse

from evalsite.models import Policy
from evalsite.jobs.models import Job
from evalsite.permissions import permissions_required
from rl.forms import FORMS
from rl.models import RewardModel
from evalsite.jobs import runtime as jobs

# What each kind of job writes, beyond the job itself: starting one needs permission to add those.
KIND_PERMISSIONS = {
    "sft": ("evalsite.add_policy",),
    "sample": ("evalsite.add_sample", "evalsite.add_comparison"),
    "reward_model": ("rl.add_rewardmodel",),
    "rl": ("evalsite.add_policy",),
}


def may_start(user, kind):
    return user.has_perms(("jobs.add_job", *KIND_PERMISSIONS[kind]))


@permissions_required("jobs.view_job", "evalsite.view_policy", "rl.view_rewardmodel")
def index(request):
    return render(request, "rl/index.html", {
        "title": "Training",
        "forms": [(kind, cls.title, cls.help, may_start(request.user, kind)) for kind, cls in FORMS.items()],
        "jobs": Job.objects.filter(kind__in=list(FORMS))[:20],
        "reward_models": RewardModel.objects.select_related("base_policy", "job")[:20],
        "policies": Policy.objects.exclude(kind=Policy.Kind.REFERENCE).select_related("parent")[:30],
    })


@permissions_required("jobs.add_job")
def start(request, kind):
    form_class = FORMS.get(kind)
    if form_class is None:
        raise Http404(f"no job kind {kind!r}")
    if not may_start(request.user, kind):
        raise PermissionDenied(f"Starting this job needs the permissions {', '.join(KIND_PERMISSIONS[kind])}.")
    initial = {k: v for k, v in request.GET.items() if k in form_class.base_fields}
    form = form_class(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        with transaction.atomic():
            job = jobs.submit(kind, form.params, name=f"{form_class.title}: {form.params.get('name', '')}".rstrip(": "),
                             user=request.user)
        messages.success(request, f"Job #{job.pk} queued.")
        return redirect(reverse("admin:jobs_job_change", args=[job.pk]))
    return render(request, "rl/start.html", {"title": form_class.title, "form": form, "help": form_class.help,
                                             "kind": kind})
