"""The item page's answer form: one rank and/or one harmless choice per shown response."""
from django import forms

from evalsite.humaneval.queue import SKIP_REASONS

HARMLESS_CHOICES = [("harmless", "Harmless"), ("harmful", "Harmful")]


def ordinal(n):
    return f"{n}{'th' if 11 <= n % 100 <= 13 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


class RankingForm(forms.Form):
    """Fields ``rank_A``, ``harmless_A``, ... for the labels shown; refuses ties and gaps."""

    key = forms.CharField(max_length=64, widget=forms.HiddenInput)
    elapsed_ms = forms.IntegerField(required=False, min_value=0, widget=forms.HiddenInput)
    comment = forms.CharField(
        required=False, max_length=5000,
        widget=forms.Textarea(attrs={"rows": 2, "placeholder": "Anything the researchers should know (optional)"}),
    )

    def __init__(self, *args, labels, asks_rank, asks_harmless, **kwargs):
        super().__init__(*args, **kwargs)
        self.labels = list(labels)
        self.asks_rank = asks_rank
        self.asks_harmless = asks_harmless
        k = len(self.labels)
        for label in self.labels:
            if asks_rank:
                self.fields[f"rank_{label}"] = forms.TypedChoiceField(
                    label=f"Rank of response {label}", required=False, coerce=int, empty_value=None,
                    choices=[("", "–")] + [(str(i), ordinal(i)) for i in range(1, k + 1)],
                )
            if asks_harmless:
                self.fields[f"harmless_{label}"] = forms.ChoiceField(
                    label=f"Is response {label} harmless?", required=False, choices=HARMLESS_CHOICES,
                    widget=forms.RadioSelect,
                )

    def clean(self):
        data = super().clean()
        errors = []
        if self.asks_rank:
            ranks = {label: data.get(f"rank_{label}") for label in self.labels}
            missing = [label for label, r in ranks.items() if r is None]
            if missing:
                errors.append(
                    f"Give every response a rank: {', '.join(missing)} {'has' if len(missing) == 1 else 'have'} none."
                )
            by_rank = {}
            for label, r in ranks.items():
                if r is not None:
                    by_rank.setdefault(r, []).append(label)
            for r, tied in sorted(by_rank.items()):
                if len(tied) > 1:
                    errors.append(
                        f"No ties: {' and '.join(tied)} are both ranked {ordinal(r)}. Each place can hold one response."
                    )
            data["ranks"] = ranks
        else:
            data["ranks"] = {}
        if self.asks_harmless:
            marks = {label: data.get(f"harmless_{label}") or None for label in self.labels}
            missing = [label for label, v in marks.items() if v is None]
            if missing:
                errors.append(f"Mark every response harmless or harmful: {', '.join(missing)} not marked yet.")
            data["harmless"] = {label: (v == "harmless") for label, v in marks.items() if v is not None}
        else:
            data["harmless"] = {}
        if errors:
            raise forms.ValidationError(errors)
        return data


class SkipForm(forms.Form):
    reason = forms.ChoiceField(choices=SKIP_REASONS, widget=forms.RadioSelect, label="Why are you skipping?")
    detail = forms.CharField(required=False, max_length=400, label="Details (needed for “Other”)")

    def clean(self):
        data = super().clean()
        if data.get("reason") == "other" and not data.get("detail", "").strip():
            raise forms.ValidationError("Say why you are skipping when you choose “Other”.")
        return data

    def reason_text(self):
        d = self.cleaned_data
        text = dict(SKIP_REASONS)[d["reason"]]
        return f"{d['reason']}: {d['detail'].strip()}" if d.get("detail", "").strip() else d["reason"] + ": " + text
