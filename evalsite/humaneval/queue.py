"""The annotator queue: who gets which item next, and what happens on submit, skip and undo.

Concurrency: an item's slots are handed out while holding its row lock. On PostgreSQL the
candidate row is taken with ``SELECT ... FOR UPDATE SKIP LOCKED`` (so fifty annotators never
wait on one another), and its slot count is read again *after* the lock is held, in a new
statement that sees every transaction committed before it. Two annotators therefore never
take the same last slot. A lease that expires stops counting, which returns the item to the
pool; the annotator who let it lapse gets it back only if the slot is still free.
"""
import random
from dataclasses import dataclass

from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.db.models import Count, Exists, F, OuterRef, Q, Subquery
from django.db.models.functions import Coalesce
from django.utils import timezone

from evalsite.models import Assignment, EvalItem, EvalRound, RankedResponse, Ranking
from evalsite.models.humaneval import ANNOTATORS_GROUP

SKIP_REASONS = [
    ("cannot_judge", "I can't judge this (unfamiliar topic or language)"),
    ("broken", "The input or the responses are broken or empty"),
    ("identical", "The responses are identical; there is nothing to rank"),
    ("disturbing", "The content is too disturbing for me"),
    ("other", "Other (say why below)"),
]


class Refused(Exception):
    """A request the annotator may not make now; ``message`` is shown to them, nothing changed."""

    def __init__(self, message, status=409):
        super().__init__(message)
        self.message = message
        self.status = status


# --- who may annotate what ----------------------------------------------------------------

def is_annotator(user):
    return user.is_authenticated and user.groups.filter(name=ANNOTATORS_GROUP).exists()


def rounds_for(user, statuses=(EvalRound.Status.OPEN,)):
    """Rounds this user may work on: those naming them, or (if unrestricted) any, for annotators."""
    if not user.is_authenticated:
        return EvalRound.objects.none()
    limited_to_others = Exists(EvalRound.annotators.through.objects.filter(evalround_id=OuterRef("pk")))
    named = Exists(EvalRound.annotators.through.objects.filter(evalround_id=OuterRef("pk"), user_id=user.pk))
    qs = EvalRound.objects.filter(status__in=statuses).select_related("task")
    if is_annotator(user):
        return qs.filter(Q(named) | ~limited_to_others)
    return qs.filter(named)


def check_may_annotate(round, user):
    """One query: the user is named on the round, or the round is unrestricted and they are an annotator."""
    through = EvalRound.annotators.through.objects
    in_group = Exists(user.groups.through.objects.filter(user_id=user.pk, group__name=ANNOTATORS_GROUP))
    allowed = EvalRound.objects.filter(pk=round.pk).exclude(status=EvalRound.Status.DRAFT).filter(
        Q(Exists(through.filter(evalround_id=OuterRef("pk"), user_id=user.pk)))
        | (~Exists(through.filter(evalround_id=OuterRef("pk"))) & in_group)
    )
    if not user.is_authenticated or not allowed.exists():
        raise Refused("This evaluation round is not available to you.", status=403)


def check_accepts_work(round):
    if round.status != EvalRound.Status.OPEN:
        raise Refused("This round is closed; it no longer accepts answers. Nothing was saved.")
    if round.is_past_deadline:
        raise Refused(
            f"This round's deadline ({timezone.localtime(round.deadline):%Y-%m-%d %H:%M}) has passed; "
            "it no longer accepts answers. Nothing was saved."
        )


# --- slots --------------------------------------------------------------------------------

def _active_q(now):
    return Q(status=Assignment.Status.SUBMITTED) | Q(status=Assignment.Status.LEASED, expires_at__gt=now)


def active_count(item_id, now, exclude_id=None):
    qs = Assignment.objects.filter(item_id=item_id).filter(_active_q(now))
    if exclude_id is not None:
        qs = qs.exclude(pk=exclude_id)
    return qs.count()


def _new_order(item, user):
    sample_ids = list(item.samples.order_by("id").values_list("id", flat=True))
    random.SystemRandom().shuffle(sample_ids)
    return sample_ids


def next_assignment(round, user, now=None):
    """The assignment this annotator should work on now, or None when nothing is left for them.

    Their own live lease comes first (reloading a page never hands out a second item).
    """
    now = now or timezone.now()
    check_accepts_work(round)
    with transaction.atomic():
        # One request per annotator at a time: a double click on "Start" gets one lease, not two.
        get_user_model().objects.select_for_update(no_key=True).filter(pk=user.pk).first()
        own = Assignment.objects.filter(round=round, annotator=user, status=Assignment.Status.LEASED)
        for a in own.select_related("item__prompt").order_by("id"):
            if a.expires_at > now:
                return a
            EvalItem.objects.select_for_update(no_key=True).filter(pk=a.item_id).first()
            if active_count(a.item_id, now, exclude_id=a.pk) < round.overlap:
                a.expires_at = now + round.lease
                a.save(update_fields=["expires_at"])
                return a
            a.delete()  # the lapsed slot went to someone else; this annotator may not get it back

        item = _lock_free_item(round, user, now)
        if item is None:
            return None
        a = Assignment.objects.create(
            round=round, item=item, annotator=user, order=_new_order(item, user),
            leased_at=now, expires_at=now + round.lease,
        )
        a.is_new = True  # nothing to pre-fill: it was never answered
        return a


# Candidates are scanned in queue order, this many at a time: the slot count (a subquery) is
# evaluated only for them, not for every unfinished item of a large round.
BATCH = 100


def _n_active(now):
    return Coalesce(
        Subquery(
            Assignment.objects.filter(item_id=OuterRef("pk")).filter(_active_q(now)).order_by()
            .values("item_id").annotate(c=Count("id")).values("c")[:1]
        ),
        0,
    )


def _lock_free_item(round, user, now):
    """Lock and return the first item in queue order with a free slot this user has not had; or None."""
    mine = Assignment.objects.filter(item_id=OuterRef("pk"), annotator=user)
    unfinished = (
        EvalItem.objects.filter(round=round, n_submitted__lt=round.overlap).exclude(Exists(mine)).order_by("position")
    )
    after = None
    for _ in range(10_000):
        scan = unfinished if after is None else unfinished.filter(position__gt=after)
        batch = list(scan.values_list("pk", "position")[:BATCH])
        if not batch:
            return None
        free = (
            EvalItem.objects.filter(pk__in=[pk for pk, _ in batch]).select_related("prompt").annotate(n_active=_n_active(now))
            .filter(n_active__lt=round.overlap).order_by("position")
        )
        item = free.select_for_update(skip_locked=True, no_key=True, of=("self",)).first()
        if item is None and free.exists():
            # Every free item here is locked by annotators being served right now: wait for the first.
            item = free.select_for_update(no_key=True, of=("self",)).first()
        if item is None:
            after = batch[-1][1]
            continue
        # Re-read the count now that we hold the lock: a new statement sees every commit before it.
        if active_count(item.pk, timezone.now()) < round.overlap:
            return item
        after = None  # someone filled it just before we locked it; rescan from the start
    return None


def get_assignment(token, user):
    a = Assignment.objects.select_related("round", "round__task", "item", "item__prompt").filter(token=token).first()
    if a is None or a.annotator_id != user.pk:
        raise Refused("This item is not assigned to you. Nothing was saved.", status=403)
    return a


# --- submit / skip / undo -----------------------------------------------------------------

@dataclass
class Submitted:
    ranking: Ranking
    duplicate: bool  # True when this exact submission had already been stored


def submit(token, user, *, ranks, harmless, comment="", time_on_page_ms=None, user_agent="", key):
    """Store a ranking once. ``ranks`` / ``harmless`` map shown labels (A, B, ...) to values.

    The caller has validated the values (see forms.RankingForm); this re-checks everything
    that depends on the database, under the assignment's row lock.
    """
    if not key or len(key) > 64:
        raise Refused("The form is missing its submission key; reload the page and try again.", status=400)
    now = timezone.now()
    try:
        return _store(token, user, ranks, harmless, comment, time_on_page_ms, user_agent, key, now)
    except IntegrityError:
        # The unique key (or one live ranking per assignment) caught a concurrent twin of this request.
        done = Ranking.objects.filter(idempotency_key=key, assignment__token=token, annotator=user).first()
        if done is None:
            raise Refused("This item was already submitted. Use “Undo last submission” to change it.")
        return Submitted(done, duplicate=True)


def _store(token, user, ranks, harmless, comment, time_on_page_ms, user_agent, key, now):
    with transaction.atomic():
        a = (
            Assignment.objects.select_for_update(no_key=True, of=("self",)).select_related("round").filter(token=token).first()
        )
        if a is None or a.annotator_id != user.pk:
            raise Refused("This item is not assigned to you. Nothing was saved.", status=403)
        done = Ranking.objects.filter(idempotency_key=key).first()
        if done is not None:
            if done.assignment_id != a.pk:
                raise Refused("This submission key belongs to another item; reload the page.", status=400)
            return Submitted(done, duplicate=True)
        round = a.round
        check_accepts_work(round)
        if a.status == Assignment.Status.SUBMITTED:
            raise Refused("You already submitted this item. Use “Undo last submission” to change it.")
        if a.status == Assignment.Status.SKIPPED:
            raise Refused("You skipped this item, so it cannot be submitted now.")
        if a.expires_at <= now:
            EvalItem.objects.select_for_update(no_key=True).filter(pk=a.item_id).first()
            if active_count(a.item_id, now, exclude_id=a.pk) >= round.overlap:
                raise Refused(
                    "Your time on this item ran out and it went to another annotator. Nothing was saved; "
                    "you will get the next item."
                )
        labels = a.labels
        if set(ranks) - set(labels) or set(harmless) - set(labels):
            raise Refused("The answer names responses that are not on this page. Nothing was saved.", status=400)
        ranking = Ranking(
            assignment=a, round=round, item_id=a.item_id, annotator=user, shown_order=list(a.order),
            comment=comment.strip()[:5000], time_on_page_ms=time_on_page_ms, user_agent=user_agent[:500],
            idempotency_key=key,
        )
        ranking.save()
        RankedResponse.objects.bulk_create([
            RankedResponse(
                ranking=ranking, sample_id=sample_id, label=label, position=i,
                rank=ranks.get(label) if round.asks_rank else None,
                harmless=harmless.get(label) if round.asks_harmless else None,
            )
            for i, (label, sample_id) in enumerate(zip(labels, a.order))
        ])
        a.status = Assignment.Status.SUBMITTED
        a.finished_at = now
        a.save(update_fields=["status", "finished_at", "expires_at"])
        EvalItem.objects.filter(pk=a.item_id).update(n_submitted=F("n_submitted") + 1)
        return Submitted(ranking, duplicate=False)


def skip(token, user, reason):
    with transaction.atomic():
        a = Assignment.objects.select_for_update(no_key=True, of=("self",)).select_related("round").filter(token=token).first()
        if a is None or a.annotator_id != user.pk:
            raise Refused("This item is not assigned to you. Nothing was saved.", status=403)
        check_accepts_work(a.round)
        if a.status != Assignment.Status.LEASED:
            raise Refused("This item is already done; only an item in progress can be skipped.")
        a.status = Assignment.Status.SKIPPED
        a.skip_reason = reason[:500]
        a.finished_at = timezone.now()
        a.save(update_fields=["status", "skip_reason", "finished_at"])
    return a


def last_ranking(round, user):
    return (
        Ranking.objects.filter(round=round, annotator=user, withdrawn_at__isnull=True)
        .order_by("-created_at", "-id").first()
    )


def undo_last(round, user):
    """Withdraw the annotator's latest live ranking in this round; its item is theirs again."""
    now = timezone.now()
    with transaction.atomic():
        check_accepts_work(round)
        r = last_ranking(round, user)
        if r is None:
            raise Refused("There is no submission to undo.")
        a = Assignment.objects.select_for_update(no_key=True).get(pk=r.assignment_id)
        updated = Ranking.objects.filter(pk=r.pk, withdrawn_at__isnull=True).update(withdrawn_at=now)
        if not updated:
            raise Refused("That submission was already undone.")
        a.status = Assignment.Status.LEASED
        a.finished_at = None
        a.expires_at = now + round.lease
        a.save(update_fields=["status", "finished_at", "expires_at"])
        EvalItem.objects.filter(pk=a.item_id).update(n_submitted=F("n_submitted") - 1)
    return a


# --- progress -----------------------------------------------------------------------------

def annotator_progress(round, user):
    done = Ranking.objects.filter(round=round, annotator=user, withdrawn_at__isnull=True).count()
    # Items are fixed once a round opens; open_round stores their number.
    total = round.metadata.get("n_items") if round.status != EvalRound.Status.DRAFT else None
    return {"done": done, "total": total if total is not None else round.items.count()}


def remaining_for(round, user):
    """Items this user could still get: not full and not had by them (items others hold leases on count too)."""
    mine = Assignment.objects.filter(item_id=OuterRef("pk"), annotator=user)
    unfinished = EvalItem.objects.filter(round=round, n_submitted__lt=round.overlap).exclude(Exists(mine)).count()
    own_leases = Assignment.objects.filter(round=round, annotator=user, status=Assignment.Status.LEASED).count()
    return unfinished + own_leases
