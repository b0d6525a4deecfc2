"""An RLAIF experiment: the paper's comparison (SFT / RLHF / RLAIF) on one dataset, as stages."""
from django.conf import settings
from django.db import models


class Experiment(models.Model):
    class Status(models.TextChoices):
        DRAFT = "draft", "Draft"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    ARMS = [
        ("sft", "SFT (the starting point)"),
        ("rlhf", "RLHF: reward model on human preferences"),
        ("rlaif_distilled", "Distilled RLAIF: reward model on AI soft labels"),
        ("rlaif_direct", "Direct RLAIF: the labeler's 1-10 score is the reward"),
        ("same_size", "Same-size RLAIF: labeler = the policy's own base model"),
    ]

    name = models.CharField(max_length=200, unique=True)
    task = models.ForeignKey("evalsite.Task", on_delete=models.PROTECT, related_name="experiments")
    dataset = models.ForeignKey(
        "evalsite.Dataset", on_delete=models.PROTECT, related_name="experiments",
        help_text="Prompts for SFT (those with a reference), reward-model pairs, RL and evaluation.",
    )
    preference_dataset = models.ForeignKey(
        "evalsite.Dataset", null=True, blank=True, on_delete=models.PROTECT, related_name="+",
        help_text="Comparisons with human preferences for the RLHF reward model (and for measuring the "
                  "labeler's alignment). Empty: the comparisons of the main dataset.",
    )
    base_policy = models.ForeignKey(
        "evalsite.Policy", on_delete=models.PROTECT, related_name="+",
        help_text="The model SFT starts from (e.g. the default SmolLM2-135M-Instruct).",
    )
    labeler_config = models.ForeignKey(
        "labeling.LabelerConfig", null=True, blank=True, on_delete=models.PROTECT, related_name="+",
        help_text="The AI labeler. Empty: one is made from the preset with the base model as labeler.",
    )
    preset = models.CharField(max_length=20, default="demo", help_text="demo (laptop CPU) or paper (GPUs).")
    arms = models.JSONField(default=list, help_text="Which arms to run, from: " + ", ".join(a for a, _ in ARMS))
    config = models.JSONField(default=dict, blank=True, help_text="Budgets and hyperparameters (preset + overrides).")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.DRAFT)
    message = models.CharField(max_length=500, blank=True)
    stages = models.JSONField(default=dict, blank=True, help_text="stage name -> job id")
    artifacts = models.JSONField(default=dict, blank=True, help_text="ids of what the stages produced")
    cancel_requested = models.BooleanField(default=False)
    job = models.ForeignKey(
        "jobs.Job", null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
        help_text="The job that runs the stages (each stage is one of its child jobs).",
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "evalsite_experiment"  # the table kept its name when the model moved into this app
        ordering = ["-created_at"]

    def __str__(self):
        return self.name
