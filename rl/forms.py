"""Forms that start the training jobs; the job kind's own validator has the last word."""
from django import forms
from django.core.exceptions import ValidationError

from evalsite.models import Dataset, Policy
from rl import params as P

OPTIMIZER_CHOICES = [(o, o) for o in P.OPTIMIZERS]
POLICY_FORMAT_HELP = ("raw: the task's text continued, as a base model does (the paper's); chat: the model's chat "
                      "template, the response is the assistant turn; auto: chat where the tokenizer has a template. "
                      "README: Policy formats.")
POLICY_FORMAT_CHOICES = [(f, f) for f in P.POLICY_FORMATS]
INHERITED_FORMAT_CHOICES = [("", "the starting policy's")] + POLICY_FORMAT_CHOICES

PROCESSES_HELP = ("Data-parallel training processes (1: in the worker itself; more: accelerate launch, one per GPU "
                  "or CPU core). README: Training on several GPUs / machines.")
ACCELERATE_CONFIG_HELP = "An Accelerate config file, e.g. configs/accelerate/multi_gpu.yaml (empty: Accelerate's defaults)."


def _policies():
    return Policy.objects.exclude(checkpoint_dir="").order_by("name")


def _show_bound(field, bound):
    """State a numeric parameter's range in its help text and its input's min/max; the kind's
    validator (see ``clean``) checks it, with the same messages as for any other route."""
    field.help_text = " ".join(text for text in (field.help_text, bound.describe()) if text)
    if not bound.above_low:
        field.widget.attrs["min"] = bound.low
    field.widget.attrs["max"] = bound.high


class JobForm(forms.Form):
    """Fields named like the job's params; ``clean`` runs the kind's validator."""

    kind = ""
    title = ""
    help = ""
    defaults = {}
    # form field -> param name where they differ
    renames = {"policy": "policy_id", "dataset": "dataset_id", "reward_model": "reward_model_id"}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        bounds = P.NUMBERS.get(self.kind, {})
        for name, field in self.fields.items():
            key = self.renames.get(name, name)
            if key in self.defaults and field.initial is None:
                field.initial = self.defaults[key]
            if key in bounds:
                _show_bound(field, bounds[key])

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
        from evalsite.jobs import get_kind

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
    defaults = P.SFT_DEFAULTS
    name = forms.CharField(max_length=200, help_text="Name of the new SFT policy.")
    policy = forms.ModelChoiceField(queryset=Policy.objects.none(), required=False, help_text="Start from this policy…")
    base_model = forms.CharField(required=False, max_length=1000, help_text="…or from a Hugging Face model folder.")
    dataset = forms.ModelChoiceField(queryset=Dataset.objects.all(), help_text="Prompts with a reference are used.")
    learning_rate = forms.FloatField()
    epochs = forms.IntegerField()
    batch_size = forms.IntegerField()
    gradient_accumulation_steps = forms.IntegerField()
    max_prompt_tokens = forms.IntegerField()
    max_response_tokens = forms.IntegerField()
    optimizer = forms.ChoiceField(choices=OPTIMIZER_CHOICES)
    policy_format = forms.ChoiceField(choices=POLICY_FORMAT_CHOICES, help_text=POLICY_FORMAT_HELP)
    seed = forms.IntegerField()
    processes = forms.IntegerField(help_text=PROCESSES_HELP)
    accelerate_config = forms.CharField(required=False, max_length=1000, help_text=ACCELERATE_CONFIG_HELP)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["policy"].queryset = _policies()


class SampleForm(JobForm):
    kind, title = "sample", "Sample responses"
    help = ("Generates n responses per prompt (existing samples are kept). With “make pairs”, samples 0 and 1 of "
            "each prompt become a comparison for AI or human labeling — the paper's reward-model data.")
    defaults = P.SAMPLE_DEFAULTS
    policy = forms.ModelChoiceField(queryset=Policy.objects.none())
    dataset = forms.ModelChoiceField(queryset=Dataset.objects.all())
    n = forms.IntegerField(label="Samples per prompt")
    temperature = forms.FloatField()
    top_p = forms.FloatField()
    max_new_tokens = forms.IntegerField()
    seed = forms.IntegerField()
    make_pairs = forms.BooleanField(required=False)
    batch_size = forms.IntegerField()
    policy_format = forms.ChoiceField(choices=INHERITED_FORMAT_CHOICES, required=False, help_text=POLICY_FORMAT_HELP)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["policy"].queryset = _policies()


class RewardModelForm(JobForm):
    kind, title = "reward_model", "Train a reward model"
    help = ("Cross-entropy between softmax([r(x,a), r(x,b)]) and the label: AI soft labels (distilled RLAIF) or "
            "human labels (RLHF; a tie is 0.5/0.5). Initialise from the SFT policy, as the paper does.")
    defaults = P.RM_DEFAULTS
    name = forms.CharField(max_length=200)
    policy = forms.ModelChoiceField(queryset=Policy.objects.none(), required=False, label="Initialise from policy")
    base_model = forms.CharField(required=False, max_length=1000, help_text="…or a model folder (e.g. an encoder).")
    labels = forms.ChoiceField(choices=[("human", "Human preferences (RLHF)"), ("ai", "AI soft labels (distilled RLAIF)")])
    label_config_ids = forms.CharField(required=False, help_text="AI labeler configuration ids, comma-separated.")
    dataset = forms.ModelChoiceField(queryset=Dataset.objects.all(), required=False,
                                     help_text="Only comparisons on this dataset's prompts (default: all).")
    include_annotator_rankings = forms.BooleanField(required=False, initial=True)
    eval_fraction = forms.FloatField(help_text="Share of prompts held out.")
    learning_rate = forms.FloatField()
    epochs = forms.IntegerField()
    batch_size = forms.IntegerField()
    gradient_accumulation_steps = forms.IntegerField()
    max_length = forms.IntegerField()
    optimizer = forms.ChoiceField(choices=OPTIMIZER_CHOICES)
    policy_format = forms.ChoiceField(choices=INHERITED_FORMAT_CHOICES, required=False, help_text=POLICY_FORMAT_HELP)
    seed = forms.IntegerField()
    processes = forms.IntegerField(help_text=PROCESSES_HELP)
    accelerate_config = forms.CharField(required=False, max_length=1000, help_text=ACCELERATE_CONFIG_HELP)

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
    defaults = P.RL_DEFAULTS
    name = forms.CharField(max_length=200, help_text="Name of the new policy.")
    policy = forms.ModelChoiceField(queryset=Policy.objects.none(), label="SFT policy")
    reward = forms.ChoiceField(choices=[("reward_model", "A reward model (RLHF / distilled RLAIF)"),
                                        ("direct", "Direct RLAIF: an LLM scores 1–10")])
    reward_model = forms.ModelChoiceField(queryset=None, required=False)
    labeler_model = forms.CharField(required=False, max_length=1000, help_text="Direct RLAIF: the labeler's model folder.")
    dataset = forms.ModelChoiceField(queryset=Dataset.objects.all())
    beta = forms.FloatField(label="β (KL weight)")
    temperature = forms.FloatField()
    top_p = forms.FloatField()
    batch_size = forms.IntegerField()
    learning_rate = forms.FloatField()
    value_learning_rate = forms.FloatField(help_text="0: same as the policy's.")
    epochs = forms.IntegerField()
    max_prompt_tokens = forms.IntegerField()
    max_response_tokens = forms.IntegerField()
    gradient_accumulation_steps = forms.IntegerField()
    generation_batch_size = forms.IntegerField(help_text="0: the whole batch at once.")
    optimizer = forms.ChoiceField(choices=OPTIMIZER_CHOICES)
    policy_format = forms.ChoiceField(choices=INHERITED_FORMAT_CHOICES, required=False, help_text=POLICY_FORMAT_HELP)
    save_every = forms.IntegerField(label="Checkpoint every N steps")
    seed = forms.IntegerField()
    processes = forms.IntegerField(help_text=PROCESSES_HELP)
    accelerate_config = forms.CharField(required=False, max_length=1000, help_text=ACCELERATE_CONFIG_HELP)

    def __init__(self, *args, **kwargs):
        from rl.models import RewardModel

        super().__init__(*args, **kwargs)
        self.fields["policy"].queryset = _policies()
        self.fields["reward_model"].queryset = RewardModel.objects.all()


FORMS = {f.kind: f for f in (SFTForm, SampleForm, RewardModelForm, RLForm)}
