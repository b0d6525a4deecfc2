"""Django models of the labeling app: labeler configurations and the AI labels they produced.

Thin layer over the plain-Python cores (``prompts``, ``scoring``, ``backends``, ``direct``).
"""
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models

from .prompts import VARIANTS, Exemplar, TemplateError, make_template


class LabelerConfig(models.Model):
    """One AI labeler: a model (local folder or server) and a prompt recipe (PAPER.md §1)."""

    class Backend(models.TextChoices):
        LOCAL = "local", "Local model (transformers)"
        SERVER = "server", "OpenAI-compatible server"

    class Variant(models.TextChoices):
        BASE = "base", "Base"
        DETAILED = "detailed", "Detailed"

    class DType(models.TextChoices):
        AUTO = "auto", "auto (float32 on CPU, bfloat16 on GPU)"
        FLOAT32 = "float32", "float32"
        BFLOAT16 = "bfloat16", "bfloat16"
        FLOAT16 = "float16", "float16"

    class ChatTemplate(models.TextChoices):
        AUTO = "auto", "auto (use the tokenizer's if it has one)"
        ON = "on", "on"
        OFF = "off", "off (plain prompt)"

    name = models.CharField(max_length=200, unique=True)
    task = models.ForeignKey("evalsite.Task", on_delete=models.PROTECT, related_name="labeler_configs")
    backend = models.CharField(max_length=10, choices=Backend.choices, default=Backend.LOCAL)
    model_path = models.CharField(
        max_length=1000, blank=True,
        help_text="Local backend: a Hugging Face model folder (absolute, or relative to MODELS_DIR). "
                  "Server backend: optional local tokenizer folder for chat templates and token counts.")
    server_url = models.CharField(max_length=500, blank=True, help_text="e.g. http://localhost:8000/v1")
    server_model = models.CharField(max_length=200, blank=True, help_text="Model name the server expects.")
    api_key_env = models.CharField(
        max_length=100, blank=True, help_text="Name of the environment variable holding the API key (never the key).")
    preamble_variant = models.CharField(max_length=10, choices=Variant.choices, default=Variant.BASE)
    template_overrides = models.JSONField(
        default=dict, blank=True,
        help_text="Replace parts of the prompt, e.g. {\"preamble\": \"...\", \"ending\": \"Preferred {noun}=\"}. "
                  "Fields: preamble, context_label, noun, sample, ending, cot_instruction, rationale_label, "
                  "exemplar_separator, score_preamble, score_sample, score_ending.")
    exemplars = models.JSONField(
        default=list, blank=True,
        help_text="Few-shot exemplars: [{\"context\", \"first\", \"second\", \"label\": 1 or 2, \"rationale\"?}].")
    chain_of_thought = models.BooleanField(default=False)
    cot_max_tokens = models.PositiveIntegerField(default=512, help_text="Longest rationale (paper: 512).")
    self_consistency_k = models.PositiveIntegerField(
        default=1, help_text="Rationales sampled per order (1 = off; the paper found it lowered alignment).")
    self_consistency_temperature = models.FloatField(default=1.0)
    max_prompt_tokens = models.PositiveIntegerField(
        default=0, help_text="0 = the model's window. Longer inputs are cut from the context only.")
    batch_size = models.PositiveIntegerField(default=8, help_text="Pairs per forward pass.")
    dtype = models.CharField(max_length=10, choices=DType.choices, default=DType.AUTO)
    threads = models.PositiveIntegerField(default=0, help_text="torch threads per worker (0 = torch's default).")
    chat_template = models.CharField(max_length=5, choices=ChatTemplate.choices, default=ChatTemplate.AUTO)
    server_concurrency = models.PositiveIntegerField(default=4)
    server_timeout_s = models.FloatField(default=60.0)
    notes = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        verbose_name = "labeler config"

    def __str__(self):
        return self.name

    # ---- validation --------------------------------------------------------------------------
    def resolved_model_path(self):
        if not self.model_path:
            return None
        p = Path(self.model_path).expanduser()
        return p if p.is_absolute() else Path(settings.MODELS_DIR) / p

    def clean(self):
        errors = {}
        if self.backend == self.Backend.LOCAL:
            from evalsite.modelzoo import is_hf_folder

            p = self.resolved_model_path()
            if p is None:
                errors["model_path"] = "A local labeler needs a model folder."
            elif not p.is_dir():
                errors["model_path"] = f"The model folder {p} does not exist."
            elif not is_hf_folder(p):
                errors["model_path"] = f"{p} is not a Hugging Face model folder (config.json and *.safetensors)."
        elif self.backend == self.Backend.SERVER:
            if not self.server_url.startswith(("http://", "https://")):
                errors["server_url"] = "A server labeler needs a URL starting with http:// or https://."
        if self.preamble_variant not in VARIANTS:
            errors["preamble_variant"] = f"Use one of {', '.join(VARIANTS)}."
        task_slug = self.task.slug if self.task_id else None
        if task_slug:
            try:
                make_template(task_slug, self.preamble_variant, self.template_overrides)
            except TemplateError as e:
                errors["template_overrides"] = str(e)
        if not isinstance(self.exemplars, list):
            errors["exemplars"] = "Exemplars must be a list of objects."
        else:
            try:
                [Exemplar.from_dict(e) if isinstance(e, dict) else _bad_exemplar() for e in self.exemplars]
            except TemplateError as e:
                errors["exemplars"] = str(e)
        if self.self_consistency_k > 1 and not self.chain_of_thought:
            errors["self_consistency_k"] = "Self-consistency samples rationales: turn chain of thought on."
        if self.self_consistency_k > 1 and self.self_consistency_temperature <= 0:
            errors["self_consistency_temperature"] = "Self-consistency needs a temperature above 0."
        if self.batch_size < 1:
            errors["batch_size"] = "At least 1."
        if errors:
            raise ValidationError(errors)

    # ---- cores -------------------------------------------------------------------------------
    def labeler_settings(self):
        from .scoring import LabelerSettings

        return LabelerSettings(
            task=self.task.slug, variant=self.preamble_variant, template_overrides=dict(self.template_overrides or {}),
            exemplars=list(self.exemplars or []), chain_of_thought=self.chain_of_thought,
            cot_max_tokens=self.cot_max_tokens, self_consistency_k=self.self_consistency_k,
            self_consistency_temperature=self.self_consistency_temperature,
            max_prompt_tokens=self.max_prompt_tokens,
        )

    def backend_options(self):
        if self.backend == self.Backend.LOCAL:
            return "local", dict(model_path=str(self.resolved_model_path()), dtype=self.dtype, threads=self.threads,
                                 chat_template=self.chat_template, batch_size=self.batch_size)
        return "server", dict(url=self.server_url, model=self.server_model, api_key_env=self.api_key_env,
                              timeout_s=self.server_timeout_s, concurrency=self.server_concurrency,
                              tokenizer_path=str(self.resolved_model_path() or ""), chat_template=self.chat_template)


def _bad_exemplar():
    raise TemplateError("each exemplar must be an object with context, first, second and label")


class AILabel(models.Model):
    """One AI preference label of one comparison by one labeler config (both orders kept)."""

    comparison = models.ForeignKey("evalsite.Comparison", on_delete=models.CASCADE, related_name="ai_labels")
    config = models.ForeignKey(LabelerConfig, on_delete=models.CASCADE, related_name="labels")
    p_first = models.FloatField(help_text="Debiased P(response A is better): mean of both orders.")
    p_slot1_order1 = models.FloatField(help_text="P(first slot better) with (A, B).")
    p_slot1_order2 = models.FloatField(help_text="P(first slot better) with (B, A), raw.")
    label_mass = models.FloatField(help_text="Probability on the label tokens (mean of both orders); low = off-format.")
    mass_order1 = models.FloatField(default=0.0)
    mass_order2 = models.FloatField(default=0.0)
    rationales = models.JSONField(default=dict, blank=True, help_text="{'order1': [...], 'order2': [...]}")
    prompt_tokens = models.PositiveIntegerField(default=0)
    generated_tokens = models.PositiveIntegerField(default=0)
    truncated_tokens = models.PositiveIntegerField(default=0, help_text="Context tokens cut to fit the window.")
    latency_ms = models.FloatField(default=0.0)
    job = models.ForeignKey("evalsite.Job", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["config_id", "comparison_id"]
        verbose_name = "AI label"
        constraints = [
            models.UniqueConstraint(fields=["comparison", "config"], name="ailabel_unique_comparison_config"),
            models.CheckConstraint(condition=models.Q(p_first__gte=0.0, p_first__lte=1.0), name="ailabel_p_first_0_1"),
        ]
        indexes = [models.Index(fields=["config", "comparison"])]

    def __str__(self):
        return f"{self.config} on comparison {self.comparison_id}: {self.p_first:.2f}"

    @property
    def preferred(self):
        return "first" if self.p_first > 0.5 else "second" if self.p_first < 0.5 else "tie"
