"""Researcher pages of the training app: start SFT, sampling, reward-model and RL jobs."""
from django.contrib import messages
from django.contrib.admin.views.decorators import staff_member_required
from django.db import transaction
from django.http import Http404
from django.shortcuts import redirect, render
from django.urls import reverse

from evalsite.models import Job, Policy
from rl.forms import FORMS
from rl.models import RewardModel


@staff_member_required
def index(request):
    Job.objects.fail_stale()
    return render(request, "rl/index.html", {
        "title": "Training", "forms": [(kind, cls.title, cls.help) for kind, cls in FORMS.items()],
        "jobs": Job.objects.filter(kind__in=list(FORMS))[:20],
        "reward_models": RewardModel.objects.select_related("base_policy", "job")[:20],
        "policies": Policy.objects.exclude(kind=Policy.Kind.REFERENCE).select_related("parent")[:30],
    })


@staff_member_required
def start(request, kind):
    form_class = FORMS.get(kind)
    if form_class is None:
        raise Http404(f"no job kind {kind!r}")
    initial = {k: v for k, v in request.GET.items() if k in form_class.base_fields}
    form = form_class(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        with transaction.atomic():
            job = Job.submit(kind, form.params, name=f"{form_class.title}: {form.params.get('name', '')}".rstrip(": "),
                             user=request.user)
        messages.success(request, f"Job #{job.pk} queued.")
        return redirect(reverse("admin:evalsite_job_change", args=[job.pk]))
    return render(request, "rl/start.html", {"title": form_class.title, "form": form, "help": form_class.help,
                                             "kind": kind})
