"""Django models of this app (thin layer over its plain-Python cores)."""
from django.db import models

from evalsite.models.core import PolicyFormat


class RewardModel(models.Model):
    """A trained reward model: an HF folder that RL jobs pick as their reward source."""

    class Labels(models.TextChoices):
        HUMAN = "human", "Human preferences (RLHF)"
        AI = "ai", "AI soft labels (distilled RLAIF)"

    name = models.CharField(max_length=200, unique=True)
    labels = models.CharField(max_length=10, choices=Labels.choices)
    checkpoint_dir = models.CharField(max_length=1000, help_text="Hugging Face folder with the weights.")
    base_model = models.CharField(max_length=1000, blank=True, help_text="Folder it was initialised from.")
    base_policy = models.ForeignKey(
        "evalsite.Policy", null=True, blank=True, on_delete=models.SET_NULL, related_name="reward_models",
        help_text="The policy (usually SFT) it was initialised from.",
    )
    task = models.ForeignKey("evalsite.Task", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    policy_format = models.CharField(
        max_length=10, choices=PolicyFormat.choices, default=PolicyFormat.RAW,
        help_text="The policy format of its inputs (rl/formats.py): RL refuses a policy in another.",
    )
    label_config_ids = models.JSONField(default=list, blank=True, help_text="AI labeler configurations used.")
    n_train_pairs = models.PositiveIntegerField(default=0)
    n_eval_pairs = models.PositiveIntegerField(default=0)
    metrics = models.JSONField(default=dict, blank=True, help_text="Held-out accuracy and calibration.")
    job = models.ForeignKey("jobs.Job", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    metadata = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "name"]

    def __str__(self):
        return self.name

    @property
    def policy_kind(self):
        """What an RL policy trained on this reward model is called."""
        from evalsite.models import Policy

        return Policy.Kind.RLHF if self.labels == self.Labels.HUMAN else Policy.Kind.RLAIF_DISTILLED

    @property
    def held_out_accuracy(self):
        return (self.metrics.get("held_out") or {}).get("accuracy")
