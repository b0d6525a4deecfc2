from django.contrib import admin, messages
from django.http import HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.urls import path, reverse
from django.utils.html import format_html

from evalsite.jobs import runtime as jobs
from evalsite.jobs.models import Job, JobMetric
from evalsite.preferencejobs import export_action


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
    change_form_template = "admin/jobs/job/change_form.html"
    change_list_template = "admin/jobs/job/change_list.html"
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
        return request.user.has_perm("jobs.change_job")

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
            jobs.cancel(job)
            n += 1
        self.message_user(request, f"Cancel requested for {n} job(s); running jobs stop at their next step.")

    @admin.action(description="Resume selected failed/cancelled jobs", permissions=["operate"])
    def resume_jobs(self, request, queryset):
        n = sum(1 for job in queryset if jobs.resume(job))
        self.message_user(request, f"{n} job(s) queued again.")

    def get_urls(self):
        return [
            path("<int:pk>/cancel/", self.admin_site.admin_view(self.cancel_view), name="jobs_job_cancel"),
            path("<int:pk>/resume/", self.admin_site.admin_view(self.resume_view), name="jobs_job_resume"),
        ] + super().get_urls()

    def cancel_view(self, request, pk):
        job = get_object_or_404(Job, pk=pk)
        if request.method == "POST" and self.has_operate_permission(request):
            status = jobs.cancel(job)
            messages.info(request, f"Job #{pk}: cancel requested ({status}).")
        return HttpResponseRedirect(reverse("admin:jobs_job_change", args=[pk]))

    def resume_view(self, request, pk):
        job = get_object_or_404(Job, pk=pk)
        if request.method == "POST" and self.has_operate_permission(request):
            if jobs.resume(job):
                messages.info(request, f"Job #{pk} queued again.")
            else:
                messages.error(request, f"Job #{pk} is {job.status}; only failed or cancelled jobs can be resumed.")
        return HttpResponseRedirect(reverse("admin:jobs_job_change", args=[pk]))
