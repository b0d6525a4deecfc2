from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import Count
from django.http import HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.urls import path, reverse
from django.utils.html import format_html

from evalsite.models import Comparison, Dataset, Job, JobMetric, Policy, Prompt, Sample, Task
from evalsite.preferencejobs import export_action

admin.site.site_header = "RLAIF workbench"
admin.site.site_title = "RLAIF workbench"
admin.site.index_title = "Research console"


@admin.register(Task)
class TaskAdmin(admin.ModelAdmin):
    """The paper's tasks (built in: kept, slug fixed) and researchers' own (also ``manage.py load_task``)."""

    list_display = ["name", "slug", "input_name", "response_noun", "builtin"]
    list_filter = ["builtin"]
    search_fields = ["name", "slug"]
    fieldsets = [
        (None, {"fields": ["slug", "name", "input_name", "response_noun", "conversational"]}),
        ("AI labeler", {"fields": ["preamble_base", "preamble_detailed", "ending", "cot_instruction"]}),
        ("Direct scorer", {"fields": ["direct_rubric"]}),
        ("Policies", {"fields": ["policy_template", "turn_markers"]}),
        ("Human raters", {"fields": ["instructions"]}),
    ]

    def get_readonly_fields(self, request, obj=None):
        return ["slug"] if obj is not None and obj.builtin else []

    def has_delete_permission(self, request, obj=None):
        if obj is not None and obj.builtin:
            return False
        return super().has_delete_permission(request, obj)

    def get_actions(self, request):
        # The bulk delete would get past has_delete_permission(obj) for built-in tasks.
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)
        return actions


@admin.register(Dataset)
class DatasetAdmin(admin.ModelAdmin):
    list_display = ["name", "split", "task", "n_prompts", "n_comparisons", "source", "licence", "created_at"]
    list_filter = ["task", "split"]
    search_fields = ["name", "source"]
    readonly_fields = ["import_job", "created_at"]
    change_list_template = "admin/evalsite/dataset/change_list.html"
    actions = [export_action("datasets")]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(
            _n_prompts=Count("prompts", distinct=True), _n_comparisons=Count("prompts__comparisons", distinct=True)
        )

    @admin.display(description="prompts", ordering="_n_prompts")
    def n_prompts(self, obj):
        return obj._n_prompts

    @admin.display(description="comparisons", ordering="_n_comparisons")
    def n_comparisons(self, obj):
        return obj._n_comparisons

    def get_urls(self):
        return [
            path("import/", self.admin_site.admin_view(self.import_view), name="evalsite_dataset_import"),
        ] + super().get_urls()

    def has_import_permission(self, request):
        """An import adds a dataset through a job (admin_view itself checks only the staff flag)."""
        return request.user.has_perms(["evalsite.add_dataset", "evalsite.add_job"])

    def import_view(self, request):
        from evalsite.importjobs import import_view

        if not self.has_import_permission(request):
            raise PermissionDenied
        return import_view(request)

    def changelist_view(self, request, extra_context=None):
        extra_context = {**(extra_context or {}), "has_import_permission": self.has_import_permission(request)}
        return super().changelist_view(request, extra_context)


@admin.register(Prompt)
class PromptAdmin(admin.ModelAdmin):
    list_display = ["external_id", "dataset", "short_context", "has_reference", "created_at"]
    list_filter = ["dataset"]
    search_fields = ["external_id", "context"]
    list_select_related = ["dataset"]
    show_full_result_count = False

    @admin.display(description="context")
    def short_context(self, obj):
        return obj.context[:120]

    @admin.display(boolean=True, description="reference")
    def has_reference(self, obj):
        return bool(obj.reference)


@admin.register(Policy)
class PolicyAdmin(admin.ModelAdmin):
    list_display = ["name", "kind", "base_model", "parent", "job", "reward_source", "created_at"]
    list_filter = ["kind"]
    search_fields = ["name", "base_model"]
    raw_id_fields = ["parent", "job"]


@admin.register(Sample)
class SampleAdmin(admin.ModelAdmin):
    list_display = ["id", "policy", "prompt", "index", "token_count", "created_at"]
    list_filter = ["policy"]
    raw_id_fields = ["prompt", "job"]
    list_select_related = ["policy", "prompt"]
    show_full_result_count = False


@admin.register(Comparison)
class ComparisonAdmin(admin.ModelAdmin):
    list_display = ["id", "prompt", "human_preference", "human_source", "judge_preference", "judge_name"]
    list_filter = ["human_preference", "human_source", "judge_name", "prompt__dataset"]
    raw_id_fields = ["prompt", "sample_a", "sample_b", "job"]
    readonly_fields = ["key"]
    list_select_related = ["prompt"]
    show_full_result_count = False


class JobMetricInline(admin.TabularInline):
    model = JobMetric
    extra = 0
    can_delete = False
    readonly_fields = ["step", "values", "created_at"]
    max_num = 0


def _progress_bar(job):
    pct = round(job.progress * 100)
    return format_html(
        '<span class="job-progress" data-job-id="{}" data-status="{}">'
        '<progress max="100" value="{}" aria-label="progress"></progress> '
        '<span class="job-pct">{}%</span></span>',
        job.pk, job.status, pct, pct,
    )


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = ["id", "name", "kind", "status_badge", "progress_bar", "message", "created_at", "duration_s"]
    list_filter = ["status", "kind"]
    search_fields = ["name", "kind", "message", "celery_task_id"]
    actions = ["cancel_jobs", "resume_jobs", export_action("run")]
    change_form_template = "admin/evalsite/job/change_form.html"
    change_list_template = "admin/evalsite/job/change_list.html"
    readonly_fields = [
        "kind", "name", "status", "progress", "message", "params", "result", "error", "log",
        "celery_task_id", "worker", "attempts", "cancel_requested", "parent", "created_by",
        "created_at", "started_at", "finished_at", "heartbeat_at",
    ]
    # Status, progress, message, error and log are drawn live above these fields.
    fieldsets = [
        (None, {"fields": ["kind", "name", "parent", "created_by"]}),
        ("Parameters and result", {"fields": ["params", "result"]}),
        ("Execution", {"classes": ["collapse"], "fields": [
            "status", "celery_task_id", "worker", "attempts", "cancel_requested",
            "created_at", "started_at", "finished_at", "heartbeat_at",
        ]}),
    ]

    def has_add_permission(self, request):
        return False  # jobs are started from the forms of what they produce (import, labeling, ...)

    def has_change_permission(self, request, obj=None):
        return False  # a job's record is written by its worker; people cancel or resume it

    def has_operate_permission(self, request, obj=None):
        """Cancel/resume: for users who may change jobs (the Django permission, not the form)."""
        return request.user.has_perm("evalsite.change_job")

    def render_change_form(self, request, context, *args, **kwargs):
        context["can_operate"] = self.has_operate_permission(request)
        return super().render_change_form(request, context, *args, **kwargs)

    @admin.display(description="status", ordering="status")
    def status_badge(self, obj):
        return format_html('<span class="job-status job-status-{}">{}</span>', obj.status, obj.get_status_display())

    @admin.display(description="progress", ordering="progress")
    def progress_bar(self, obj):
        return _progress_bar(obj)

    @admin.display(description="seconds")
    def duration_s(self, obj):
        d = obj.duration
        return None if d is None else round(d.total_seconds(), 1)

    @admin.action(description="Cancel selected jobs", permissions=["operate"])
    def cancel_jobs(self, request, queryset):
        n = 0
        for job in queryset.filter(status__in=[Job.Status.QUEUED, Job.Status.RUNNING]):
            job.request_cancel()
            n += 1
        self.message_user(request, f"Cancel requested for {n} job(s); running jobs stop at their next step.")

    @admin.action(description="Resume selected failed/cancelled jobs", permissions=["operate"])
    def resume_jobs(self, request, queryset):
        n = sum(1 for job in queryset if job.resume())
        self.message_user(request, f"{n} job(s) queued again.")

    def get_urls(self):
        return [
            path("<int:pk>/cancel/", self.admin_site.admin_view(self.cancel_view), name="evalsite_job_cancel"),
            path("<int:pk>/resume/", self.admin_site.admin_view(self.resume_view), name="evalsite_job_resume"),
            path("export-preferences/", self.admin_site.admin_view(self.export_preferences_view),
                 name="evalsite_export_preferences"),
        ] + super().get_urls()

    def export_preferences_view(self, request):
        from evalsite.preferencejobs import export_view

        return export_view(request)

    def cancel_view(self, request, pk):
        job = get_object_or_404(Job, pk=pk)
        if request.method == "POST" and self.has_operate_permission(request):
            status = job.request_cancel()
            messages.info(request, f"Job #{pk}: cancel requested ({status}).")
        return HttpResponseRedirect(reverse("admin:evalsite_job_change", args=[pk]))

    def resume_view(self, request, pk):
        job = get_object_or_404(Job, pk=pk)
        if request.method == "POST" and self.has_operate_permission(request):
            if job.resume():
                messages.info(request, f"Job #{pk} queued again.")
            else:
                messages.error(request, f"Job #{pk} is {job.status}; only failed or cancelled jobs can be resumed.")
        return HttpResponseRedirect(reverse("admin:evalsite_job_change", args=[pk]))


# Admin registrations of the experiments module live beside its code.
from evalsite.experiments import admin as _experiments_admin  # noqa: E402,F401
