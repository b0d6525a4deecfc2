"""Annotator pages: open rounds, the next item, the blinded item page, submit, skip and undo.

Blinding: these views put only the shown labels (A, B, ...), the response texts and the
assignment's opaque token into pages and URLs. Sample, policy and item ids stay on the server.
"""
import secrets
from types import SimpleNamespace

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from evalsite.humaneval import queue
from evalsite.humaneval.display import layout, response_text
from evalsite.humaneval.forms import SkipForm, answer_fields, clean_answer, ordinal
from evalsite.humaneval.queue import Refused
from evalsite.humaneval.models import Assignment, EvalRound, Ranking
from evalsite.models import Sample


def _round_summary(round, user):
    progress = queue.annotator_progress(round, user)
    remaining = queue.remaining_for(round, user)
    return {
        "id": round.pk,
        "title": round.display_title,
        "task": round.task.name,
        "question": round.get_question_display(),
        "deadline": round.deadline,
        "done": progress["done"],
        "total": progress["total"],
        "remaining": remaining,
        "started": progress["done"] > 0 or Assignment.objects.filter(round=round, annotator=user).exists(),
        "url": reverse("humaneval:next", args=[round.pk]),
    }


def home_context(request):
    """Context the home page shows an annotator: ``{"rounds": [...]}`` (nothing for other users)."""
    user = request.user
    if not user.is_authenticated:
        return {}
    rounds = [r for r in queue.rounds_for(user) if not r.is_past_deadline]
    if not rounds and not queue.is_annotator(user):
        return {}
    return {"rounds": [_round_summary(r, user) for r in rounds]}


def refused(request, exc, round=None):
    return render(request, "humaneval/refused.html", {"message": exc.message, "round": round}, status=exc.status)


@login_required
def index(request):
    ctx = home_context(request)
    return render(request, "humaneval/index.html", {"rounds": ctx.get("rounds", [])})


@login_required
def next_item(request, round_id):
    try:
        round, a = queue.next_for(round_id, request.user)
    except Refused as e:
        return refused(request, e, e.round)
    if round is None:
        raise Http404("No such round.")
    if a is None:
        return redirect("humaneval:done", round_id=round.pk)
    # Served right here rather than redirected: one round trip per item. Reloading this URL
    # returns the same leased item; the form posts to the item's own URL.
    a.round = round
    return _render_item(request, a)


@login_required
def done(request, round_id):
    round = get_object_or_404(EvalRound.objects.select_related("task"), pk=round_id)
    try:
        queue.check_may_annotate(round, request.user)
    except Refused as e:
        return refused(request, e, round)
    summary = _round_summary(round, request.user)
    return render(request, "humaneval/done.html", {
        "round": round, "summary": summary,
        "can_undo": round.accepts_work and queue.last_ranking(round, request.user) is not None,
    })


def _item_context(request, a, values, errors=(), skip=None):
    """The item page's context. ``values``: field name -> value to show (``key``, ``rank_A``, ...)."""
    round = a.round
    texts = getattr(a, "texts", None) or dict(Sample.objects.filter(pk__in=a.order).values_list("pk", "text"))
    context = a.item.prompt.context
    responses = []
    task = round.task.text()
    k = len(a.order)
    for label, sample_id in zip(a.labels, a.order):
        rank = str(values.get(f"rank_{label}") or "") if round.asks_rank else None
        harm = (values.get(f"harmless_{label}") or "") if round.asks_harmless else None
        responses.append({
            "label": label,
            "text": response_text(task, texts.get(sample_id, "")),
            "rank": rank,
            "rank_options": [{"value": str(i), "name": ordinal(i), "selected": rank == str(i)} for i in range(1, k + 1)],
            "harmless": harm,
        })
    if hasattr(a, "n_done"):  # read with the new lease
        progress = {"done": a.n_done, "total": queue.items_in(round)}
    else:
        progress = queue.annotator_progress(round, request.user)
    return {
        "round": round,
        "token": a.token,
        "input": layout(round.task.text(), context),
        "responses": responses,
        "n": k,
        "places": [{"n": i, "name": ordinal(i)} for i in range(1, k + 1)],
        "last_label": responses[-1]["label"] if responses else "",
        "noun": round.task.response_noun,
        "nouns": plural(round.task.response_noun),
        "key": values.get("key") or secrets.token_hex(16),
        "comment": values.get("comment") or "",
        "skip": skip or {"open": False, "errors": [], "reason": None, "detail": ""},
        "skip_reasons": queue.SKIP_REASONS,
        "progress": progress,
        "position": progress["done"] + 1,
        "can_undo": progress["done"] > 0,
        "instructions": round.instructions_text(),
        "lease_expires_at": a.expires_at,
        "errors": list(errors),
    }


def _render_page(request, a, values, errors=(), skip=None, status=200):
    # A Jinja2 template (see evalsite/jinja2.py): the page every annotator loads for every item.
    context = {name: _as_attributes(value) for name, value in _item_context(request, a, values, errors, skip).items()}
    return render(request, "humaneval/item.html", context, status=status, using="jinja2")


def _as_attributes(value):
    """Dicts (also inside lists) as objects: Jinja2 reads ``x.name`` with getattr() first, and on a
    dict that raised AttributeError every time (150 times per page) before it tried x["name"]."""
    if isinstance(value, dict):
        return SimpleNamespace(**{k: _as_attributes(v) for k, v in value.items()})
    if isinstance(value, list):
        return [_as_attributes(v) for v in value]
    return value


def plural(noun):
    return noun[:-1] + "ies" if noun.endswith("y") else noun + "s"


def _previous_values(a):
    """Redo after undo: start from the answer that was withdrawn (nothing for a fresh lease)."""
    if getattr(a, "is_new", False):
        return {}
    previous = Ranking.objects.filter(assignment=a, withdrawn_at__isnull=False).order_by("-id").first()
    if previous is None:
        return {}
    values = {"comment": previous.comment}
    for x in previous.responses.all():
        if x.rank is not None:
            values[f"rank_{x.label}"] = str(x.rank)
        if x.harmless is not None:
            values[f"harmless_{x.label}"] = "harmless" if x.harmless else "harmful"
    return values


def _check_token(token):
    """A token that no assignment can have is a 404, found without asking the database."""
    if not queue.is_token_shaped(token):
        raise Http404("No such item.")


@login_required
def item(request, token):
    _check_token(token)
    if request.method == "POST":
        return _submit(request, token)
    try:
        a = queue.get_assignment(token, request.user)
    except Refused as e:
        return refused(request, e)
    round = a.round
    if a.status != Assignment.Status.LEASED:
        messages.info(request, "You already answered that item; here is your next one.")
        return redirect("humaneval:next", round_id=round.pk)
    try:
        queue.check_accepts_work(round)
    except Refused as e:
        return refused(request, e, round)
    if a.is_expired:
        return redirect("humaneval:next", round_id=round.pk)  # renews the lease if the slot is still free
    return _render_item(request, a)


def _render_item(request, a):
    return _render_page(request, a, _previous_values(a))


class InvalidAnswer(Exception):
    """The posted answer does not validate; it goes back to the annotator with its errors."""

    def __init__(self, errors):
        super().__init__("invalid answer")
        self.errors = errors


def _submit(request, token):
    def read_answer(a):
        # Called once the database-side checks have passed (see queue.submit_answer).
        round = a.round
        answer, errors = clean_answer(request.POST, a.labels, asks_rank=round.asks_rank, asks_harmless=round.asks_harmless)
        if errors:
            raise InvalidAnswer(errors)
        return answer

    try:
        result = queue.submit_answer(
            token, request.user, read_answer, key=request.POST.get("key", ""),
            user_agent=request.META.get("HTTP_USER_AGENT", ""),
        )
    except InvalidAnswer as e:
        try:
            a = queue.get_assignment(token, request.user)
        except Refused as refusal:  # removed from the round a moment ago
            return refused(request, refusal, refusal.round)
        fields = answer_fields(a.labels, a.round.asks_rank, a.round.asks_harmless)
        return _render_page(request, a, {name: request.POST.get(name) for name in fields}, e.errors, status=400)
    except Refused as e:
        return refused(request, e, e.round)
    if not result.duplicate:
        messages.success(request, "Saved.")
    return redirect("humaneval:next", round_id=result.ranking.round_id)


@login_required
@require_POST
def skip(request, token):
    _check_token(token)
    try:
        a = queue.get_assignment(token, request.user)
    except Refused as e:
        return refused(request, e)
    form = SkipForm(request.POST)
    if not form.is_valid():
        errors = [" ".join(form.non_field_errors())] if form.non_field_errors() else []
        if form["reason"].errors:
            errors.append("Choose a reason for skipping.")
        if form["detail"].errors:
            errors.append("Details: " + " ".join(form["detail"].errors))
        skip = {"open": True, "errors": errors, "reason": form["reason"].value(), "detail": form["detail"].value() or ""}
        return _render_page(request, a, {}, skip=skip, status=400)
    try:
        queue.skip(token, request.user, form.reason_text())
    except Refused as e:
        return refused(request, e, a.round)
    messages.info(request, "Skipped. It will go to another annotator.")
    return redirect("humaneval:next", round_id=a.round_id)


@login_required
@require_POST
def undo(request, round_id):
    round = get_object_or_404(EvalRound, pk=round_id)
    try:
        queue.check_may_annotate(round, request.user)
        a = queue.undo_last(round, request.user)
    except Refused as e:
        return refused(request, e, round)
    messages.info(request, "Your last answer was undone. Answer this item again.")
    return redirect("humaneval:item", token=a.token)
