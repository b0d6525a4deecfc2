"""Annotator pages: open rounds, the next item, the blinded item page, submit, skip and undo.

Blinding: these views put only the shown labels (A, B, ...), the response texts and the
assignment's opaque token into pages and URLs. Sample, policy and item ids stay on the server.
"""
import secrets

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from evalsite.humaneval import queue
from evalsite.humaneval.display import layout
from evalsite.humaneval.forms import RankingForm, SkipForm, ordinal
from evalsite.humaneval.queue import Refused
from evalsite.models import Assignment, EvalRound, Ranking, Sample

MAX_TIME_ON_PAGE_MS = 24 * 3600 * 1000


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


def _item_context(request, a, form, skip_form):
    round = a.round
    texts = getattr(a, "texts", None) or dict(Sample.objects.filter(pk__in=a.order).values_list("pk", "text"))
    context = a.item.prompt.context
    responses = []
    k = len(a.order)
    for label, sample_id in zip(a.labels, a.order):
        # Fields are written out in the template (Django's widget rendering is the slowest part of this page).
        rank = str(form[f"rank_{label}"].value() or "") if round.asks_rank else None
        harm = (form[f"harmless_{label}"].value() or "") if round.asks_harmless else None
        responses.append({
            "label": label,
            "text": texts.get(sample_id, ""),
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
        "assignment": a,
        "token": a.token,
        "input": layout(round.task.slug, context),
        "responses": responses,
        "n": k,
        "places": [{"n": i, "name": ordinal(i)} for i in range(1, k + 1)],
        "last_label": responses[-1]["label"] if responses else "",
        "noun": round.task.response_noun,
        "nouns": plural(round.task.response_noun),
        "form": form,
        "skip_form": skip_form,
        "skip_reasons": queue.SKIP_REASONS,
        "progress": progress,
        "position": progress["done"] + 1,
        "can_undo": progress["done"] > 0,
        "instructions": round.instructions_text(),
        "lease_expires_at": a.expires_at,
        "errors": _error_list(form),
    }


def plural(noun):
    return noun[:-1] + "ies" if noun.endswith("y") else noun + "s"


def _error_list(form):
    if not form.is_bound or form.is_valid():
        return []
    out = list(form.non_field_errors())
    for name, errs in form.errors.items():
        if name != "__all__":
            label = form.fields[name].label if name in form.fields else name
            out.extend(f"{label}: {e}" for e in errs)
    return out


def _form(a, data=None, previous=None):
    round = a.round
    initial = {"key": secrets.token_hex(16)}
    if previous is not None:
        # Redo after undo: start from the answer that was withdrawn.
        for x in previous.responses.all():
            if x.rank is not None:
                initial[f"rank_{x.label}"] = str(x.rank)
            if x.harmless is not None:
                initial[f"harmless_{x.label}"] = "harmless" if x.harmless else "harmful"
        initial["comment"] = previous.comment
    return RankingForm(
        data, labels=a.labels, asks_rank=round.asks_rank, asks_harmless=round.asks_harmless, initial=initial,
    )


@login_required
def item(request, token):
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
    previous = None
    if not getattr(a, "is_new", False):
        previous = Ranking.objects.filter(assignment=a, withdrawn_at__isnull=False).order_by("-id").first()
    return render(request, "humaneval/item.html", _item_context(request, a, _form(a, previous=previous), SkipForm()))


class InvalidAnswer(Exception):
    """The posted form does not validate; it goes back to the annotator with its errors."""

    def __init__(self, form):
        super().__init__("invalid answer")
        self.form = form


def _submit(request, token):
    def read_answer(a):
        # Called under the assignment's lock, once the database-side checks have passed.
        form = _form(a, request.POST)
        if not form.is_valid():
            raise InvalidAnswer(form)
        d = form.cleaned_data
        elapsed = d.get("elapsed_ms")
        if elapsed is None or elapsed > MAX_TIME_ON_PAGE_MS:
            elapsed = None
        return queue.Answer(d["ranks"], d["harmless"], d.get("comment", ""), elapsed)

    try:
        result = queue.submit_answer(
            token, request.user, read_answer, key=request.POST.get("key", ""),
            user_agent=request.META.get("HTTP_USER_AGENT", ""),
        )
    except InvalidAnswer as e:
        a = queue.get_assignment(token, request.user)
        return render(request, "humaneval/item.html", _item_context(request, a, e.form, SkipForm()), status=400)
    except Refused as e:
        return refused(request, e, e.round)
    if not result.duplicate:
        messages.success(request, "Saved.")
    return redirect("humaneval:next", round_id=result.ranking.round_id)


@login_required
@require_POST
def skip(request, token):
    try:
        a = queue.get_assignment(token, request.user)
    except Refused as e:
        return refused(request, e)
    form = SkipForm(request.POST)
    if not form.is_valid():
        ctx = _item_context(request, a, _form(a), form)
        ctx["skip_open"] = True
        return render(request, "humaneval/item.html", ctx, status=400)
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
