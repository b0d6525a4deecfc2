from django.contrib import admin
from django.urls import reverse
from django.utils.html import format_html

from rl.models import RewardModel


@admin.register(RewardModel)
class RewardModelAdmin(admin.ModelAdmin):
    list_display = ["name", "labels", "base_policy", "held_out", "n_train_pairs", "n_eval_pairs", "job_link",
                    "created_at"]
    list_filter = ["labels", "task"]
    search_fields = ["name", "checkpoint_dir"]
    readonly_fields = ["labels", "checkpoint_dir", "base_model", "base_policy", "task", "label_config_ids",
                       "n_train_pairs", "n_eval_pairs", "metrics", "job", "metadata", "created_at"]
    change_list_template = "admin/rl/rewardmodel/change_list.html"

    def has_add_permission(self, request):
        return False  # made by the "Train a reward model" job

    @admin.display(description="held-out accuracy")
    def held_out(self, obj):
        acc = obj.held_out_accuracy
        return "—" if acc is None else f"{acc:.1%}"

    @admin.display(description="job")
    def job_link(self, obj):
        if not obj.job_id:
            return "—"
        return format_html('<a href="{}">#{}</a>', reverse("admin:jobs_job_change", args=[obj.job_id]), obj.job_id)
