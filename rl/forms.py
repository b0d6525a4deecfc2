"""Forms that start the training jobs; the job kind's own validator has the last word.

A form's training settings are made from its job's config dataclass (rl/config.py): a field per
setting, with its type, default, help text, range (min/max) and choices. The form itself declares
only what the job works on (policy, dataset, name, labels...).
"""
from django import forms
from django.core.exceptions import ValidationError
from django.forms.forms import DeclarativeFieldsMetaclass

from evalsite.models import Dataset, Policy
from rl import params as P
from rl.config import RewardModelConfig, RLConfig, SamplingConfig, SFTConfig, job_settings, setting_help


def _policies():
    return Policy.objects.exclude(checkpoint_dir="").order_by("name")


def setting_field(setting):
    """The form field of a config dataclass field made with ``rl.config.setting``. Its range shows
    in the help text and the input's min/max; the kind's validator (see ``JobForm.clean``) checks
    it, with the same messages as for any other route."""
    meta = setting.metadata
    common = {"initial": setting.default, "help_text": setting_help(setting), "label": meta.get("label")}
    if "choices" in meta:
        return forms.ChoiceField(choices=list(meta["choices"].items()), required="" not in meta["choices"], **common)
    if setting.type is bool:
        return forms.BooleanField(required=False, **common)
    if "bounds" not in meta:
        return forms.CharField(required=False, max_length=1000, **common)
    bound = meta["bounds"]
    field = forms.IntegerField(**common) if bound.kind is int else forms.FloatField(**common)
    if not bound.above_low:
        field.widget.attrs["min"] = bound.low
    field.widget.attrs["max"] = bound.high
    return field


class _SettingsFormMetaclass(DeclarativeFieldsMetaclass):
    """A form with a ``config`` dataclass gets a field per setting of it, after its own fields
    (``field_order`` may place them otherwise)."""

    def __new__(mcs, name, bases, attrs):
        config = attrs.get("config")
        if config is not None:
            for setting in job_settings(config):
                attrs.setdefault(setting.name, setting_field(setting))
        return super().__new__(mcs, name, bases, attrs)


class JobForm(forms.Form, metaclass=_SettingsFormMetaclass):
    """Fields named like the job's params: the settings of ``config`` and the form's own;
    ``clean`` runs the kind's validator."""

    kind = ""
    title = ""
    help = ""
    config = None  # the job's settings (rl/config.py)
    defaults = {}  # initial values of the form's own fields
    # form field -> param name where they differ
    renames = {"policy": "policy_id", "dataset": "dataset_id", "reward_model": "reward_model_id"}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for name, field in self.fields.items():
            key = self.renames.get(name, name)
            if key in self.defaults and field.initial is None:
                field.initial = self.defaults[key]

    def to_params(self, cleaned):
        params = {}
        for name, value in cleaned.items():
            if value in (None, ""):
                continue
            if hasattr(value, "pk"):
                value = value.pk
            params[self.renames.get(name, name)] = value
        return params

    def clean(self):
        cleaned = super().clean()
        if self.errors:
            return cleaned
        from evalsite.jobs.runtime import get_kind

        try:
            self.params = get_kind(self.kind).validate(self.to_params(cleaned))
        except ValidationError as e:
            back = {v: k for k, v in self.renames.items()}
            for field, messages in (e.message_dict.items() if hasattr(e, "error_dict") else [(None, e.messages)]):
                field = back.get(field, field)
                self.add_error(field if field in self.fields else None, messages)
        return cleaned


class SFTForm(JobForm):
    kind, title = "sft", "Supervised fine-tuning"
    help = "Fine-tunes a policy on the prompts' reference responses (loss on the response tokens only)."
    config = SFTConfig
    name = forms.CharField(max_length=200, help_text="Name of the new SFT policy.")
    policy = forms.ModelChoiceField(queryset=Policy.objects.none(), required=False, help_text="Start from this policy…")
    base_model = forms.CharField(required=False, max_length=1000, help_text="…or from a Hugging Face model folder.")
    dataset = forms.ModelChoiceField(queryset=Dataset.objects.all(), help_text="Prompts with a reference are used.")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["policy"].queryset = _policies()


class SampleForm(JobForm):
    kind, title = "sample", "Sample responses"
    help = ("Generates n responses per prompt (existing samples are kept). With “make pairs”, samples 0 and 1 of "
            "each prompt become a comparison for AI or human labeling — the paper's reward-model data.")
    config = SamplingConfig
    defaults = P.SAMPLE_DEFAULTS
    field_order = ["policy", "dataset", "n", "temperature", "top_p", "max_new_tokens", "seed", "make_pairs"]
    policy = forms.ModelChoiceField(queryset=Policy.objects.none())
    dataset = forms.ModelChoiceField(queryset=Dataset.objects.all())
    make_pairs = forms.BooleanField(required=False)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["policy"].queryset = _policies()


class RewardModelForm(JobForm):
    kind, title = "reward_model", "Train a reward model"
    help = ("Cross-entropy between softmax([r(x,a), r(x,b)]) and the label: AI soft labels (distilled RLAIF) or "
            "human labels (RLHF; a tie is 0.5/0.5). Initialise from the SFT policy, as the paper does.")
    config = RewardModelConfig
    defaults = P.RM_DEFAULTS
    name = forms.CharField(max_length=200)
    policy = forms.ModelChoiceField(queryset=Policy.objects.none(), required=False, label="Initialise from policy")
    base_model = forms.CharField(required=False, max_length=1000, help_text="…or a model folder (e.g. an encoder).")
    labels = forms.ChoiceField(choices=[("human", "Human preferences (RLHF)"), ("ai", "AI soft labels (distilled RLAIF)")])
    label_config_ids = forms.CharField(required=False, help_text="AI labeler configuration ids, comma-separated.")
    dataset = forms.ModelChoiceField(queryset=Dataset.objects.all(), required=False,
                                     help_text="Only comparisons on this dataset's prompts (default: all).")
    include_annotator_rankings = forms.BooleanField(required=False)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["policy"].queryset = _policies()

    def clean_label_config_ids(self):
        text = self.cleaned_data.get("label_config_ids") or ""
        try:
            return [int(x) for x in text.replace(" ", "").split(",") if x]
        except ValueError:
            raise ValidationError("Give whole numbers separated by commas.")

    def to_params(self, cleaned):
        params = super().to_params(cleaned)
        params["include_annotator_rankings"] = bool(cleaned.get("include_annotator_rankings"))
        return params


class RLForm(JobForm):
    kind, title = "rl", "RL: REINFORCE with a value baseline"
    help = ("Policy and value model start from the SFT policy; reward (1 − β)·r − β·KL(π‖π_SFT) at the last token; "
            "checkpoints every N steps; a cancelled or crashed job resumes from its last checkpoint.")
    config = RLConfig
    defaults = P.RL_DEFAULTS
    name = forms.CharField(max_length=200, help_text="Name of the new policy.")
    policy = forms.ModelChoiceField(queryset=Policy.objects.none(), label="SFT policy")
    reward = forms.ChoiceField(choices=[("reward_model", "A reward model (RLHF / distilled RLAIF)"),
                                        ("direct", "Direct RLAIF: an LLM scores 1–10")])
    reward_model = forms.ModelChoiceField(queryset=None, required=False)
    labeler_model = forms.CharField(required=False, max_length=1000, help_text="Direct RLAIF: the labeler's model folder.")
    dataset = forms.ModelChoiceField(queryset=Dataset.objects.all())

    def __init__(self, *args, **kwargs):
        from rl.models import RewardModel

        super().__init__(*args, **kwargs)
        self.fields["policy"].queryset = _policies()
        self.fields["reward_model"].queryset = RewardModel.objects.all()


FORMS = {f.kind: f for f in (SFTForm, SampleForm, RewardModelForm, RLForm)}
