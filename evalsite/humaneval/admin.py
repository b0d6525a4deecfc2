"""Admin for evaluation rounds: create, choose prompts and policies, check samples, open/close, watch progress."""
from django import forms
from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import transaction
from django.http import HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join

from evalsite.humaneval import rounds as R
from evalsite.humaneval.models import EvalRound, Ranking
from evalsite.models import Dataset, Prompt
from evalsite.preferencejobs import export_action


class EvalRoundForm(forms.ModelForm):
    dataset = forms.ModelChoiceField(
        Dataset.objects.select_related("task"), required=False,
        help_text="Prompts come from this dataset.",
    )
    n_prompts = forms.IntegerField(
        required=False, min_value=1, initial=50, label="Number of prompts",
        help_text="Taken at random (seeded) from the dataset. Leave empty for all of them.",
    )
    prompt_external_ids = forms.CharField(
        required=False, widget=forms.Textarea(attrs={"rows": 3}), label="Or these prompts",
        help_text="External ids from the dataset, separated by spaces, commas or new lines.",
    )
    seed = forms.IntegerField(initial=0, required=False, help_text="Seeds the choice and the queue order of prompts.")

    class Meta:
        model = EvalRound
        fields = [
            "name", "title", "task", "question", "policies", "overlap", "instructions", "deadline",
            "lease_minutes", "sample_index", "annotators",
        ]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        users = get_user_model().objects.filter(is_active=True).order_by("username")
        self.fields["annotators"].queryset = users
        self.fields["annotators"].help_text = (
            "Leave empty to let everyone in the “annotators” group work on this round; choose users to "
            "limit it to them (they need not be in the group)."
        )
        editable_prompts = self.instance.pk is None or (
            self.instance.status == EvalRound.Status.DRAFT and not self.instance.assignments.exists()
        )
        if not editable_prompts:
            for f in ("dataset", "n_prompts", "prompt_external_ids", "seed"):
                self.fields.pop(f)
        elif self.instance.pk:
            self.fields["dataset"].help_text += " Leave empty to keep the current prompts."

    def clean(self):
        data = super().clean()
        if "dataset" not in self.fields:
            return data
        dataset = data.get("dataset")
        task = data.get("task")
        if dataset is None:
            if self.instance.pk is None:
                self.add_error("dataset", "Choose the dataset the prompts come from.")
            return data
        if task and dataset.task_id != task.pk:
            self.add_error("dataset", f"This dataset is for the task “{dataset.task}”, not “{task}”.")
            return data
        ids_text = data.get("prompt_external_ids", "").replace(",", " ").split()
        prompts = Prompt.objects.filter(dataset=dataset)
        if ids_text:
            found = dict(prompts.filter(external_id__in=ids_text).values_list("external_id", "pk"))
            unknown = [x for x in ids_text if x not in found]
            if unknown:
                self.add_error(
                    "prompt_external_ids",
                    f"{len(unknown)} id(s) are not in {dataset}: {', '.join(unknown[:10])}"
                    + (" …" if len(unknown) > 10 else ""),
                )
                return data
            chosen = [found[x] for x in dict.fromkeys(ids_text)]
        else:
            all_ids = list(prompts.order_by("id").values_list("pk", flat=True))
            if not all_ids:
                self.add_error("dataset", f"{dataset} has no prompts.")
                return data
            n = data.get("n_prompts")
            if n and n < len(all_ids):
                import random

                chosen = sorted(random.Random(data.get("seed") or 0).sample(all_ids, n))
            else:
                chosen = all_ids
        data["prompt_ids"] = chosen
        return data


@admin.register(EvalRound)
class EvalRoundAdmin(admin.ModelAdmin):
    form = EvalRoundForm
    list_display = ["name", "title_shown", "task", "question", "status", "overlap", "n_items", "progress_bar", "deadline"]
    list_filter = ["status", "question", "task"]
    search_fields = ["name", "title"]
    filter_horizontal = ["policies", "annotators"]
    actions = ["open_rounds", "close_rounds", export_action("rounds")]
    change_form_template = "humaneval/admin/evalround_change_form.html"
    readonly_fields = ["status", "readiness", "progress_panel", "annotator_panel", "created_by", "opened_at", "closed_at"]

    def get_fieldsets(self, request, obj=None):
        editable = obj is None or (obj.status == EvalRound.Status.DRAFT and not obj.assignments.exists())
        prompts = ["dataset", "n_prompts", "prompt_external_ids", "seed"] if editable else []
        sets = [
            (None, {"fields": ["name", "title", "task", "question", "policies", "overlap", "instructions", "deadline"]}),
        ]
        if prompts:
            sets.append(("Prompts", {"fields": prompts}))
        sets.append(("Annotators", {"fields": ["annotators", "lease_minutes"]}))
        sets.append(("Samples", {"fields": ["sample_index"]}))
        if obj is not None:
            sets.insert(0, ("Status", {"fields": ["status", "readiness", "progress_panel", "annotator_panel",
                                                  "opened_at", "closed_at", "created_by"]}))
        return sets

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("task")

    @admin.display(description="shown to annotators as")
    def title_shown(self, obj):
        return obj.display_title

    @admin.display(description="items")
    def n_items(self, obj):
        return obj.items.count()

    @admin.display(description="progress")
    def progress_bar(self, obj):
        p = R.round_progress(obj)
        return format_html('<progress max="{}" value="{}"></progress> {} / {}', p["needed"] or 1, p["submitted"],
                           p["submitted"], p["needed"])

    @admin.display(description="samples")
    def readiness(self, obj):
        missing = R.missing_samples(obj)
        n_items, n_policies = obj.items.count(), obj.policies.count()
        if not missing:
            return format_html('<strong style="color:#17602a">All {} policies have a sample for all {} prompts.</strong>',
                               n_policies, n_items)
        lines = R.describe_missing(obj, missing)
        note = (
            "Use “Start sampling for missing samples” above." if R.sampling_available()
            else "Sampling is not available here yet (no 'sample' job kind is registered); import the missing samples."
        )
        return format_html('<strong style="color:#8a1212">Samples are missing; the round cannot open.</strong><ul>{}</ul><p>{}</p>',
                           format_html_join("", "<li>{}</li>", ((x,) for x in lines)), note)

    @admin.display(description="progress")
    def progress_panel(self, obj):
        p = R.round_progress(obj)
        return format_html(
            '<progress max="{}" value="{}"></progress> <strong>{} / {}</strong> answers · {} of {} items complete · '
            '{} in progress · {} skipped · {} undone',
            p["needed"] or 1, p["submitted"], p["submitted"], p["needed"], p["complete_items"], p["items"],
            p["in_progress"], p["skipped"], p["withdrawn"],
        )

    @admin.display(description="per annotator")
    def annotator_panel(self, obj):
        rows = R.annotator_counts(obj)
        if not rows:
            return "Nobody has started yet."
        body = format_html_join(
            "", "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            ((r["annotator"], r["submitted"], r["skipped"], r["in_progress"],
              "–" if r["median_seconds"] is None else r["median_seconds"]) for r in rows),
        )
        return format_html(
            '<table><thead><tr><th>annotator</th><th>submitted</th><th>skipped</th><th>in progress</th>'
            '<th>median seconds per item</th></tr></thead><tbody>{}</tbody></table>', body,
        )

    def save_model(self, request, obj, form, change):
        if not change:
            obj.created_by = request.user
        super().save_model(request, obj, form, change)

    def save_related(self, request, form, formsets, change):
        super().save_related(request, form, formsets, change)
        prompt_ids = form.cleaned_data.get("prompt_ids")
        obj = form.instance
        if prompt_ids:
            with transaction.atomic():
                n = R.set_prompts(obj, prompt_ids, seed=form.cleaned_data.get("seed") or 0)
            self.message_user(request, f"The round has {n} prompts.")
        missing = R.missing_samples(obj)
        if missing:
            lines = R.describe_missing(obj, missing, limit=5)
            tail = (" Start sampling from the round's page." if R.sampling_available()
                    else " Sampling is not available yet (no 'sample' job kind is registered): import the samples.")
            self.message_user(request, " ".join(lines) + tail, level=messages.WARNING)

    # --- open / close / sample -------------------------------------------------------------
    def get_urls(self):
        view = self.admin_site.admin_view
        return [
            path("<int:pk>/open/", view(self.open_view), name="humaneval_evalround_open"),
            path("<int:pk>/close/", view(self.close_view), name="humaneval_evalround_close"),
            path("<int:pk>/sample/", view(self.sample_view), name="humaneval_evalround_sample"),
        ] + super().get_urls()

    def _back(self, pk):
        return HttpResponseRedirect(reverse("admin:humaneval_evalround_change", args=[pk]))

    def open_view(self, request, pk):
        obj = get_object_or_404(EvalRound, pk=pk)
        if request.method == "POST" and self.has_change_permission(request, obj):
            try:
                R.open_round(obj)
                messages.success(request, f"Round “{obj.name}” is open.")
            except ValidationError as e:
                messages.error(request, " ".join(e.messages))
        return self._back(pk)

    def close_view(self, request, pk):
        obj = get_object_or_404(EvalRound, pk=pk)
        if request.method == "POST" and self.has_change_permission(request, obj):
            R.close_round(obj)
            messages.success(request, f"Round “{obj.name}” is closed; no more answers are accepted.")
        return self._back(pk)

    def sample_view(self, request, pk):
        obj = get_object_or_404(EvalRound, pk=pk)
        if request.method == "POST" and self.has_change_permission(request, obj) and request.user.has_perm("jobs.add_job"):
            try:
                jobs = R.start_sampling(obj, user=request.user)
            except ValidationError as e:
                messages.error(request, " ".join(e.messages))
            else:
                if jobs:
                    links = format_html_join(", ", '<a href="{}">#{}</a>', (
                        (reverse("admin:jobs_job_change", args=[j.pk]), j.pk) for j in jobs))
                    messages.success(request, format_html("Started {} sampling job(s): {}. Open the round when they finish.",
                                                          len(jobs), links))
                else:
                    messages.info(request, "No samples are missing.")
        return self._back(pk)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        extra_context = {**(extra_context or {}), "sampling_available": R.sampling_available()}
        return super().change_view(request, object_id, form_url, extra_context)

    @admin.action(description="Open selected rounds")
    def open_rounds(self, request, queryset):
        for obj in queryset:
            try:
                R.open_round(obj)
                self.message_user(request, f"“{obj.name}” is open.")
            except ValidationError as e:
                self.message_user(request, f"“{obj.name}”: " + " ".join(e.messages), level=messages.ERROR)

    @admin.action(description="Close selected rounds")
    def close_rounds(self, request, queryset):
        for obj in queryset:
            R.close_round(obj)
        self.message_user(request, f"{queryset.count()} round(s) closed.")


@admin.register(Ranking)
class RankingAdmin(admin.ModelAdmin):
    """Read-only audit of what annotators submitted (policy names are visible here: researchers only)."""

    list_display = ["id", "round", "annotator", "item", "answer", "time_on_page_ms", "created_at", "withdrawn_at"]
    list_filter = ["round", "annotator"]
    list_select_related = ["round", "annotator", "item"]
    readonly_fields = [f.name for f in Ranking._meta.fields] + ["answer"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    @admin.display(description="answer")
    def answer(self, obj):
        parts = []
        for r in obj.responses.select_related("sample__policy").order_by("rank", "position"):
            harm = "" if r.harmless is None else (" harmless" if r.harmless else " HARMFUL")
            parts.append(f"{r.rank or '–'}. {r.label}={r.sample.policy.name}{harm}")
        return "; ".join(parts)
