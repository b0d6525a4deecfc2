"""Experiments in the admin: create, launch, cancel; the experiment page shows the rest."""
from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.urls import reverse
from django.utils.html import format_html

from evalsite.experiments import pipeline
from evalsite.experiments.presets import DEFAULT_ARMS, PRESETS, merged_config
from evalsite.experiments.views import CANCEL_PERMISSIONS, LAUNCH_PERMISSIONS
from evalsite.experiments.models import Experiment


class ExperimentForm(forms.ModelForm):
    arms = forms.MultipleChoiceField(choices=Experiment.ARMS, initial=DEFAULT_ARMS,
                                     widget=forms.CheckboxSelectMultiple)
    preset = forms.ChoiceField(choices=[(p, p) for p in PRESETS], initial="demo")
    config = forms.JSONField(required=False, initial=dict,
                             help_text="Overrides of the preset, e.g. {\"rl_prompts\": 32, \"rl\": {\"beta\": 0.1}}. "
                                       "Leave empty for the preset as is.")

    class Meta:
        model = Experiment
        fields = ["name", "task", "dataset", "preference_dataset", "base_policy", "labeler_config", "preset", "arms",
                  "config"]

    def clean(self):
        data = super().clean()
        if not isinstance(data.get("config") or {}, dict):
            raise ValidationError({"config": "Give an object of settings, such as {\"rl_prompts\": 32}."})
        try:
            data["config"] = merged_config(data.get("preset", "demo"), data.get("config") or {})
        except ValueError as e:
            raise ValidationError({"preset": str(e)})
        for message in pipeline.config_errors(data["config"]):
            self.add_error("config", message)
        dataset, task = data.get("dataset"), data.get("task")
        if dataset and task and dataset.task_id != task.pk:
            self.add_error("dataset", f"This dataset is for “{dataset.task}”, not “{task}”.")
        return data


@admin.register(Experiment)
class ExperimentAdmin(admin.ModelAdmin):
    form = ExperimentForm
    list_display = ["name", "task", "dataset", "preset", "arms_list", "status", "message", "page_link", "created_at"]
    list_filter = ["status", "task", "preset"]
    readonly_fields = ["status", "message", "stages", "artifacts", "started_at", "finished_at", "page_link"]
    actions = ["launch", "cancel"]

    @admin.display(description="arms")
    def arms_list(self, obj):
        return ", ".join(obj.arms)

    @admin.display(description="page")
    def page_link(self, obj):
        if not obj.pk:
            return "-"
        return format_html('<a href="{}">open the experiment page</a>', reverse("experiments:detail", args=[obj.pk]))

    def save_model(self, request, obj, form, change):
        if not change:
            obj.created_by = request.user
        super().save_model(request, obj, form, change)

    def has_launch_permission(self, request):
        return request.user.has_perms(LAUNCH_PERMISSIONS)

    def has_cancel_permission(self, request):
        return request.user.has_perms(CANCEL_PERMISSIONS)

    @admin.action(description="Launch (or resume) selected experiments", permissions=["launch"])
    def launch(self, request, queryset):
        for exp in queryset:
            try:
                pipeline.launch(exp)
                messages.success(request, f"“{exp}” launched: finished stages are reused.")
            except ValidationError as e:
                messages.error(request, f"“{exp}” cannot start: {' '.join(e.messages)}")

    @admin.action(description="Cancel selected experiments", permissions=["cancel"])
    def cancel(self, request, queryset):
        for exp in queryset:
            pipeline.cancel(exp)
        messages.info(request, "Cancel requested; running stages stop at their next step.")
