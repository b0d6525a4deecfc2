"""The item page's answer (one rank and/or one harmless choice per shown response) and the skip form."""
from django import forms

from evalsite.humaneval.queue import SKIP_REASONS, Answer


def ordinal(n):
    return f"{n}{'th' if 11 <= n % 100 <= 13 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


MAX_COMMENT = 5000
MAX_TIME_ON_PAGE_MS = 24 * 3600 * 1000  # longer than a day on one item: the page's clock is wrong


def _whole_number(text):
    """The number in ``text`` if it is plain ASCII digits (``int()`` also takes "+3", " 3", "٣")."""
    text = text.strip()
    return int(text) if text.isdigit() and text.isascii() else None


def answer_fields(labels, asks_rank, asks_harmless):
    """The item form's answer fields (what a page that failed validation shows again)."""
    names = ["key", "comment"]
    for label in labels:
        names += ([f"rank_{label}"] if asks_rank else []) + ([f"harmless_{label}"] if asks_harmless else [])
    return names


def clean_answer(data, labels, *, asks_rank, asks_harmless):
    """``(Answer, errors)`` from a posted item form: one rank (no ties, no gaps) and/or one
    harmless choice per shown label; the Answer is complete only when ``errors`` is empty.

    A plain function rather than a django.forms.Form: every submission runs it, and a Form with
    a field per response spent 0.3 ms building and deep-copying its fields, about a tenth of the
    request. Its messages are the ones that Form gave.
    """
    labels = list(labels)
    field_errors, errors = [], []
    ranks, marks = {}, {}
    k = len(labels)
    for label in labels:
        if asks_rank:
            value = (data.get(f"rank_{label}") or "").strip()
            rank = _whole_number(value)
            if rank is not None and not 1 <= rank <= k:
                rank = None
            if value and rank is None:
                field_errors.append(f"Rank of response {label}: Select a valid choice. "
                                    f"{value} is not one of the available choices.")
            ranks[label] = rank
        if asks_harmless:
            value = data.get(f"harmless_{label}") or ""
            if value and value not in ("harmless", "harmful"):
                field_errors.append(f"Is response {label} harmless?: Select a valid choice. "
                                    f"{value} is not one of the available choices.")
                value = ""
            marks[label] = value or None
    comment = (data.get("comment") or "").strip()
    if len(comment) > MAX_COMMENT:
        field_errors.append(f"Comment: Ensure this value has at most {MAX_COMMENT} characters (it has {len(comment)}).")
    elif "\x00" in comment:  # PostgreSQL cannot store it; Django's CharField says the same
        field_errors.append("Comment: Null characters are not allowed.")
        comment = ""
    if asks_rank:
        missing = [label for label, r in ranks.items() if r is None]
        if missing:
            errors.append(f"Give every response a rank: {', '.join(missing)} {'has' if len(missing) == 1 else 'have'} none.")
        by_rank = {}
        for label, r in ranks.items():
            if r is not None:
                by_rank.setdefault(r, []).append(label)
        for r, tied in sorted(by_rank.items()):
            if len(tied) > 1:
                errors.append(f"No ties: {' and '.join(tied)} are both ranked {ordinal(r)}. Each place can hold one response.")
    if asks_harmless:
        missing = [label for label, v in marks.items() if v is None]
        if missing:
            errors.append(f"Mark every response harmless or harmful: {', '.join(missing)} not marked yet.")
    # Set by the page's script; a missing or garbled clock is no reason to refuse an answer.
    time_on_page = _whole_number(data.get("elapsed_ms") or "")
    if time_on_page is not None and time_on_page > MAX_TIME_ON_PAGE_MS:
        time_on_page = None
    harmless = {label: v == "harmless" for label, v in marks.items() if v is not None}
    return Answer(ranks, harmless, comment, time_on_page), errors + field_errors


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
