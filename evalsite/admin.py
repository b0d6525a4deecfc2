from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.db.models import Count
from django.urls import path

from evalsite.models import Comparison, Dataset, Policy, Prompt, Sample, Task
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
        return request.user.has_perms(["evalsite.add_dataset", "jobs.add_job"])

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

    def get_urls(self):
        return [
            path("export-preferences/", self.admin_site.admin_view(self.export_preferences_view),
                 name="evalsite_export_preferences"),
        ] + super().get_urls()

    def export_preferences_view(self, request):
        from evalsite.preferencejobs import export_view

        return export_view(request)
