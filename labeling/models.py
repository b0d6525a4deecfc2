"""Django models of the labeling app: labeler configurations and the AI labels they produced.

Thin layer over the plain-Python cores (``prompts``, ``scoring``, ``backends``, ``direct``).
"""
import math
import os
from decimal import Decimal
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

from .backends import BackendError
from .prompts import VARIANTS, Exemplar, TemplateError, make_template


def api_key_var_refusal(name):
    """Why a labeler may not read its API key from the environment variable ``name``."""
    allowed = ", ".join(settings.LABELER_API_KEY_VARS) or "none"
    return (f"The environment variable {name} is not on the server's list of API key variables "
            f"(now: {allowed}). An operator adds it to the LABELER_API_KEY_VARS setting "
            "(comma-separated names) where the web server and the workers run.")


class LabelerConfig(models.Model):
    """One AI labeler: a model (local folder or server) and a prompt recipe (docs/method.md §1)."""

    class Backend(models.TextChoices):
        LOCAL = "local", "Local model (transformers)"
        SERVER = "server", "OpenAI-compatible server"
        CHAT = "chat", "OpenAI-compatible chat"

    class PreambleRole(models.TextChoices):
        SYSTEM = "system", "system message"
        USER = "user", "user text"

    class ExemplarLayout(models.TextChoices):
        TURNS = "turns", "earlier turns of the conversation"
        INLINE = "inline", "inline, before the sample"

    class AbsentLabels(models.TextChoices):
        KEEP = "keep", "keep the bounded label"
        REASK = "reask", "re-ask with more alternatives"
        DROP = "drop", "drop the pair"

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
                  "Server and chat backends: optional local tokenizer folder for chat templates and exact "
                  "token counts.")
    server_url = models.CharField(max_length=500, blank=True, help_text="e.g. http://localhost:8000/v1")
    server_model = models.CharField(max_length=200, blank=True, help_text="Model name the server expects.")
    api_key_env = models.CharField(
        max_length=100, blank=True,
        help_text="Name of the environment variable holding the API key (never the key); it must be one of "
                  "the names in the LABELER_API_KEY_VARS setting.")
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
    cot_max_tokens = models.PositiveIntegerField(
        default=512, validators=[MinValueValidator(1), MaxValueValidator(8192)],
        help_text="Longest rationale in tokens, 1 to 8192 (paper: 512).")
    self_consistency_k = models.PositiveIntegerField(
        default=1, validators=[MinValueValidator(1), MaxValueValidator(32)],
        help_text="Rationales sampled per order, 1 to 32 (1 = off; the paper found it lowered alignment).")
    self_consistency_temperature = models.FloatField(
        default=1.0, validators=[MinValueValidator(0.0), MaxValueValidator(2.0)],
        help_text="Sampling temperature of the rationales, 0 to 2.")
    max_prompt_tokens = models.PositiveIntegerField(
        default=0, validators=[MaxValueValidator(1_000_000)],
        help_text="0 = the model's window, at most 1000000. Longer inputs are cut from the context only.")
    batch_size = models.PositiveIntegerField(
        default=8, validators=[MinValueValidator(1), MaxValueValidator(1024)],
        help_text="Pairs per forward pass, 1 to 1024.")
    dtype = models.CharField(max_length=10, choices=DType.choices, default=DType.AUTO)
    threads = models.PositiveIntegerField(
        default=0, validators=[MaxValueValidator(256)],
        help_text="torch threads per worker, 0 to 256 (0 = torch's default).")
    chat_template = models.CharField(max_length=5, choices=ChatTemplate.choices, default=ChatTemplate.AUTO)
    server_concurrency = models.PositiveIntegerField(
        default=4, validators=[MinValueValidator(1), MaxValueValidator(128)],
        help_text="Requests in flight at once, 1 to 128.")
    server_timeout_s = models.FloatField(
        default=60.0, validators=[MinValueValidator(1.0), MaxValueValidator(3600.0)],
        help_text="Seconds to wait for each answer of the server, 1 to 3600.")
    server_top_logprobs = models.PositiveIntegerField(
        "top log-probs", default=20, validators=[MinValueValidator(1), MaxValueValidator(1000)],
        help_text="Alternatives of the answer's first token to ask a server for, 1 to 1000 (hosted chat APIs "
                  "allow at most 20; vLLM 20 unless started with a higher --max-logprobs).")
    chat_preamble_role = models.CharField(
        "preamble as", max_length=10, choices=PreambleRole.choices, default=PreambleRole.SYSTEM,
        help_text="Chat backend: the preamble as the system message or at the start of the user's text.")
    chat_exemplars = models.CharField(
        "exemplars as", max_length=10, choices=ExemplarLayout.choices, default=ExemplarLayout.TURNS,
        help_text="Chat backend: exemplars as earlier user/assistant turns, or inline in the user's text.")
    absent_labels = models.CharField(
        "label token not in the top-k", max_length=10, choices=AbsentLabels.choices, default=AbsentLabels.KEEP,
        help_text="Servers return only the top alternatives. When a label token is not among them its probability "
                  "is at most the smallest returned one, so the label is bounded, not exact: keep it (marked), "
                  "re-ask with more alternatives (kept, marked, if still absent), or store no label for the pair.")
    reask_top_logprobs = models.PositiveIntegerField(
        "re-ask with", default=20, validators=[MinValueValidator(1), MaxValueValidator(1000)],
        help_text="Alternatives to ask for when re-asking, 1 to 1000; more than the first ask.")
    price_prompt_per_mtok = models.DecimalField(
        "price of prompt tokens", max_digits=10, decimal_places=4, default=Decimal("0"),
        validators=[MinValueValidator(Decimal("0")), MaxValueValidator(Decimal("10000"))],
        help_text="US dollars per million prompt (input) tokens, 0 to 10000, as the provider bills them.")
    price_completion_per_mtok = models.DecimalField(
        "price of completion tokens", max_digits=10, decimal_places=4, default=Decimal("0"),
        validators=[MinValueValidator(Decimal("0")), MaxValueValidator(Decimal("10000"))],
        help_text="US dollars per million completion (output) tokens, 0 to 10000.")
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
        elif self.backend in (self.Backend.SERVER, self.Backend.CHAT):
            if not self.server_url.startswith(("http://", "https://")):
                errors["server_url"] = "A server labeler needs a URL starting with http:// or https://."
        reask, top = self.reask_top_logprobs, self.server_top_logprobs
        if self.absent_labels == self.AbsentLabels.REASK and isinstance(reask, int) and isinstance(top, int) \
                and reask <= top:
            errors["reask_top_logprobs"] = (f"Re-asking with {reask} alternatives finds nothing the first ask "
                                            f"({top}) did not: ask for more, or keep or drop such labels.")
        if self.api_key_env and self.api_key_env not in settings.LABELER_API_KEY_VARS:
            errors["api_key_env"] = api_key_var_refusal(self.api_key_env)
        for name in ("self_consistency_temperature", "server_timeout_s"):
            # The range validators let NaN through (every comparison with NaN is false).
            value = getattr(self, name)
            if isinstance(value, float) and not math.isfinite(value):
                errors[name] = "Enter a finite number."
        if self.preamble_variant not in VARIANTS:
            errors["preamble_variant"] = f"Use one of {', '.join(VARIANTS)}."
        if self.task_id:
            try:
                make_template(self.task.text(), self.preamble_variant, self.template_overrides)
            except TemplateError as e:
                errors["template_overrides"] = str(e)
        if not isinstance(self.exemplars, list):
            errors["exemplars"] = "Exemplars must be a list of objects."
        else:
            try:
                [Exemplar.from_dict(e) if isinstance(e, dict) else _bad_exemplar() for e in self.exemplars]
            except TemplateError as e:
                errors["exemplars"] = str(e)
        # full_clean() calls clean() even when a field failed its own checks (a wrong type stays as it was).
        k, temperature = self.self_consistency_k, self.self_consistency_temperature
        if isinstance(k, int) and k > 1:
            if not self.chain_of_thought:
                errors["self_consistency_k"] = "Self-consistency samples rationales: turn chain of thought on."
            if isinstance(temperature, (int, float)) and temperature <= 0:
                errors.setdefault("self_consistency_temperature", "Self-consistency needs a temperature above 0.")
        if errors:
            raise ValidationError(errors)

    def check_usable(self):
        """Validate a stored config before it labels anything: rows saved before these rules, changed
        with ``update()``, or an allow-list of API key variables changed since, are refused here."""
        try:
            self.full_clean(validate_unique=False, validate_constraints=False)
        except ValidationError as e:
            problems = [m if field == "__all__" else f"{field}: {m}"
                        for field, messages in e.message_dict.items() for m in messages]
            raise ValidationError(f"Labeler config '{self.name}' cannot be used: " + " ".join(problems)) from None

    # ---- cores -------------------------------------------------------------------------------
    def labeler_settings(self):
        from .scoring import LabelerSettings

        return LabelerSettings(
            task=self.task.text(), variant=self.preamble_variant, template_overrides=dict(self.template_overrides or {}),
            exemplars=list(self.exemplars or []), chain_of_thought=self.chain_of_thought,
            cot_max_tokens=self.cot_max_tokens, self_consistency_k=self.self_consistency_k,
            self_consistency_temperature=self.self_consistency_temperature,
            max_prompt_tokens=self.max_prompt_tokens, absent_labels=self.absent_labels,
            reask_top_logprobs=self.reask_top_logprobs,
        )

    def cost(self, prompt_tokens, completion_tokens):
        """US dollars the tokens cost at this config's prices (0 without prices)."""
        return (float(self.price_prompt_per_mtok) * int(prompt_tokens or 0)
                + float(self.price_completion_per_mtok) * int(completion_tokens or 0)) / 1e6

    @property
    def has_prices(self):
        return bool(self.price_prompt_per_mtok or self.price_completion_per_mtok)

    def api_key(self):
        """The server's API key, read only from a variable on the operator's allow-list.

        Checked again here, not only when the config is saved: the config may be older than the rule,
        or the allow-list may have shrunk since. Raises :class:`BackendError` rather than send it.
        """
        if not self.api_key_env:
            return ""
        if self.api_key_env not in settings.LABELER_API_KEY_VARS:
            raise BackendError(api_key_var_refusal(self.api_key_env))
        key = os.environ.get(self.api_key_env, "")
        if not key:
            raise BackendError(f"The API key variable {self.api_key_env} is allowed but not set in the "
                               "environment of this process (the web server's or the worker's).")
        return key

    def backend_options(self, with_api_key=True):
        """(kind, options) for :func:`labeling.backends.make_backend`; the server's key already read
        (``with_api_key=False``: left out, for what sends nothing, such as a dry run)."""
        if self.backend == self.Backend.LOCAL:
            return "local", dict(model_path=str(self.resolved_model_path()), dtype=self.dtype, threads=self.threads,
                                 chat_template=self.chat_template, batch_size=self.batch_size)
        options = dict(url=self.server_url, model=self.server_model, api_key=self.api_key() if with_api_key else "",
                       timeout_s=self.server_timeout_s, concurrency=self.server_concurrency,
                       top_logprobs=self.server_top_logprobs, tokenizer_path=str(self.resolved_model_path() or ""))
        if self.backend == self.Backend.CHAT:
            return "chat", dict(options, preamble_role=self.chat_preamble_role, exemplars=self.chat_exemplars)
        return "server", dict(options, chat_template=self.chat_template)


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
    prompt_tokens = models.PositiveIntegerField(
        default=0, help_text="Prompt tokens of every request for this pair (a server's own count where it gives one).")
    completion_tokens = models.PositiveIntegerField(
        default=0, help_text="Tokens a server generated for this pair (a local model: the rationales' tokens).")
    generated_tokens = models.PositiveIntegerField(default=0)
    truncated_tokens = models.PositiveIntegerField(default=0, help_text="Context tokens cut to fit the window.")
    bounded = models.BooleanField(
        default=False, help_text="A label token was not among the server's top alternatives: p_first is an "
                                 "estimate between p_first_low and p_first_high, not exact.")
    p_first_low = models.FloatField(null=True, blank=True, help_text="Lowest P(A is better) the answers allow.")
    p_first_high = models.FloatField(null=True, blank=True, help_text="Highest P(A is better) the answers allow.")
    unseen_mass = models.FloatField(
        default=0.0, help_text="Probability the server's top alternatives left unseen (mean of both orders).")
    latency_ms = models.FloatField(default=0.0)
    job = models.ForeignKey("jobs.Job", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
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
