"""The form that starts a labeling run from the admin, with clear errors before anything is queued."""
from django import forms
from django.core.exceptions import ValidationError

from evalsite.models import Dataset, Policy

from . import runs


def probe_backend(config):
    """Check a server labeler answers with log-probs before queueing work (local: the folder check)."""
    if config.backend not in (config.Backend.SERVER, config.Backend.CHAT):
        return
    from .backends import BackendError, make_backend

    try:
        kind, options = config.backend_options()
        options.update(timeout_s=min(10.0, config.server_timeout_s), max_retries=0, rate_limit_retries=0)
        make_backend(kind, **options).top_logprobs("Answer with 1 or 2. Answer=")
    except BackendError as e:
        raise ValidationError(f"Labeler config '{config.name}': {e}")


class PolicyChoiceField(forms.ModelMultipleChoiceField):
    """Refuses an id larger than any row id before it reaches the query (SQLite's driver raises
    OverflowError on it, a server error instead of a form error)."""

    def clean(self, value):
        for pk in value if isinstance(value, (list, tuple)) else ():
            try:
                too_big = abs(int(pk)) > runs.MAX_ID
            except (TypeError, ValueError):
                too_big = False  # not a whole number: Django's own check says so
            if too_big:
                raise ValidationError(self.error_messages["invalid_choice"], code="invalid_choice",
                                      params={"value": pk})
        return super().clean(value)


class StartLabelingForm(forms.Form):
    dataset = forms.ModelChoiceField(Dataset.objects.all(), required=False,
                                     help_text="Label the comparisons of this dataset.")
    comparison_ids = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2}),
                                     help_text="Or explicit comparison ids, separated by spaces or commas.")
    policies = PolicyChoiceField(Policy.objects.all(), required=False,
                                 help_text="Or pairs of samples from these policies.")
    human_labeled_only = forms.BooleanField(required=False, help_text="Only comparisons with a human label.")
    limit = forms.IntegerField(required=False, min_value=1, help_text="At most this many comparisons.")
    chunk_size = forms.IntegerField(initial=runs.DEFAULT_CHUNK_SIZE, min_value=1, max_value=100000,
                                    help_text="Comparisons per chunk job (workers take chunks in parallel).")
    relabel = forms.BooleanField(required=False, help_text="Label again comparisons this config already labeled.")

    def __init__(self, *args, config=None, probe=True, **kwargs):
        super().__init__(*args, **kwargs)
        self.config = config
        self.probe = probe  # False for an estimate: it sends nothing
        self.params = None

    def clean(self):
        data = super().clean()
        if self.errors:
            return data
        params = {
            "config_id": self.config.pk,
            "dataset_id": data["dataset"].pk if data.get("dataset") else None,
            "comparison_ids": data.get("comparison_ids") or [],
            "policy_ids": [p.pk for p in data.get("policies") or []],
            "human_labeled_only": data.get("human_labeled_only"),
            "limit": data.get("limit"), "chunk_size": data.get("chunk_size"), "relabel": data.get("relabel"),
        }
        try:
            self.params = runs.validate_run_params(params)
            if self.probe:
                probe_backend(self.config)
        except ValidationError as e:
            messages = e.message_dict if hasattr(e, "error_dict") else {None: e.messages}
            for field, msgs in messages.items():
                field = {"config_id": None, "dataset_id": "dataset", "policy_ids": "policies"}.get(field, field)
                for m in msgs:
                    self.add_error(field if field in self.fields else None, m)
        return data
