"""Admin for labeler configs (with alignment and position-bias diagnostics) and AI labels."""
import math

from django.contrib import admin, messages
from django.db import transaction
from django.http import HttpResponseRedirect
from django.shortcuts import get_object_or_404, render
from django.template.loader import render_to_string
from django.urls import path, reverse
from django.utils.html import format_html

from evalsite.jobs.models import Job
from evalsite.preferencejobs import export_action
from evalsite.jobs import runtime as jobs

from . import runs
from .forms import StartLabelingForm
from .models import AILabel, LabelerConfig


def _pct(x):
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


@admin.register(LabelerConfig)
class LabelerConfigAdmin(admin.ModelAdmin):
    list_display = ["name", "task", "backend", "preamble_variant", "chain_of_thought", "n_labels",
                    "human_alignment", "same_position", "start_link"]
    list_filter = ["task", "backend", "preamble_variant", "chain_of_thought"]
    search_fields = ["name", "model_path", "server_url"]
    readonly_fields = ["diagnostics", "recent_runs", "created_at", "updated_at"]
    actions = ["start_labeling", export_action("config")]
    fieldsets = [
        (None, {"fields": ["name", "task", "notes"]}),
        ("Model", {"fields": ["backend", "model_path", "server_url", "server_model", "api_key_env", "dtype", "threads",
                              "chat_template", "batch_size", "server_concurrency", "server_timeout_s"]}),
        ("Servers: top-k alternatives, chat layout and prices", {"fields": [
            "server_top_logprobs", "absent_labels", "reask_top_logprobs", "chat_preamble_role", "chat_exemplars",
            "price_prompt_per_mtok", "price_completion_per_mtok"]}),
        ("Prompt", {"fields": ["preamble_variant", "template_overrides", "exemplars", "max_prompt_tokens"]}),
        ("Chain of thought", {"fields": ["chain_of_thought", "cot_max_tokens", "self_consistency_k",
                                         "self_consistency_temperature"]}),
        ("Alignment and position bias", {"fields": ["diagnostics", "recent_runs"]}),
        ("Dates", {"fields": ["created_at", "updated_at"], "classes": ["collapse"]}),
    ]

    def changelist_view(self, request, extra_context=None):
        from .data import config_summaries

        self._summaries = config_summaries()  # one query for the whole list
        return super().changelist_view(request, extra_context)

    def _summary(self, obj):
        summaries = getattr(self, "_summaries", None) or {}
        if obj.pk not in summaries:
            from .data import config_summaries

            summaries = {**summaries, **config_summaries([obj.pk])}
        return summaries.get(obj.pk, {"n_labels": 0})

    @admin.display(description="labels")
    def n_labels(self, obj):
        return self._summary(obj).get("n_labels", 0)

    @admin.display(description="alignment (human)")
    def human_alignment(self, obj):
        h = self._summary(obj).get("human")
        if not h or not h["n"]:
            return "–"
        return f"{_pct(h['accuracy'])} (n={h['n']})"

    @admin.display(description="same position")
    def same_position(self, obj):
        pb = self._summary(obj).get("position")
        return f"{pb['same_position_pct']:.0f}%" if pb and pb["n"] else "–"

    @admin.display(description="")
    def start_link(self, obj):
        return format_html('<a href="{}">label…</a>', reverse("admin:labeling_labelerconfig_label", args=[obj.pk]))

    @admin.display(description="diagnostics")
    def diagnostics(self, obj):
        if not obj.pk:
            return "Save the config, then label comparisons with it."
        from .data import alignment_summary, label_frame, usage_by_config

        s = alignment_summary(label_frame([obj.pk]))
        usage = usage_by_config([obj.pk]).to_dict("records")
        return render_to_string("labeling/admin/diagnostics.html",
                                {"s": s, "config": obj, "usage": usage[0] if usage else None})

    @admin.display(description="labeling runs")
    def recent_runs(self, obj):
        if not obj.pk:
            return "–"
        recent = Job.objects.filter(kind=runs.RUN_KIND, params__config_id=obj.pk).order_by("-created_at")[:10]
        return render_to_string("labeling/admin/runs.html", {"jobs": recent})

    def get_urls(self):
        return [path("<int:pk>/label/", self.admin_site.admin_view(self.start_view),
                     name="labeling_labelerconfig_label")] + super().get_urls()

    @admin.action(description="Start a labeling job with the selected config")
    def start_labeling(self, request, queryset):
        if queryset.count() != 1:
            self.message_user(request, "Select exactly one labeler config to start a labeling job.", messages.ERROR)
            return None
        return HttpResponseRedirect(reverse("admin:labeling_labelerconfig_label", args=[queryset.get().pk]))

    def start_view(self, request, pk):
        config = get_object_or_404(LabelerConfig, pk=pk)
        if not (self.has_change_permission(request, config) and request.user.has_perm("jobs.add_job")):
            return HttpResponseRedirect(reverse("admin:index"))
        estimate_only = "estimate" in request.POST
        form = StartLabelingForm(request.POST or None, config=config, probe=not estimate_only)
        estimate = None
        if request.method == "POST" and estimate_only and form.is_valid():
            from .backends import BackendError

            try:
                estimate = runs.describe_estimate(runs.estimate_run(form.params))
            except (BackendError, ValueError) as e:
                form.add_error(None, f"Labeler config '{config.name}': {e}")
        elif request.method == "POST" and form.is_valid():
            with transaction.atomic():
                job = jobs.submit(runs.RUN_KIND, form.params, name=f"AI labeling with {config.name}",
                                 user=request.user)
            self.message_user(request, f"Labeling job #{job.pk} queued; its chunks run on any free worker.",
                              messages.SUCCESS)
            return HttpResponseRedirect(reverse("admin:jobs_job_change", args=[job.pk]))
        context = {**self.admin_site.each_context(request), "opts": self.model._meta, "config": config,
                   "form": form, "estimate": estimate, "title": f"Label comparisons with {config.name}"}
        return render(request, "labeling/admin/start_labeling.html", context)


@admin.register(AILabel)
class AILabelAdmin(admin.ModelAdmin):
    list_display = ["comparison", "config", "p_first", "p_slot1_order1", "p_slot1_order2", "label_mass", "agrees",
                    "bounded", "prompt_tokens", "completion_tokens", "truncated_tokens", "latency_ms", "created_at"]
    list_filter = ["config", "comparison__human_preference", "bounded"]
    list_select_related = ["config", "comparison"]
    search_fields = ["comparison__response_a", "comparison__response_b"]
    readonly_fields = [f.name for f in AILabel._meta.fields]
    show_full_result_count = False

    def has_add_permission(self, request):
        return False

    @admin.display(description="agrees with human", boolean=True)
    def agrees(self, obj):
        h = obj.comparison.human_preference
        if h not in ("first", "second") or obj.p_first == 0.5:
            return None
        return (obj.p_first > 0.5) == (h == "first")
