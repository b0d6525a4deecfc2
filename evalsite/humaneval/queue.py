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
from django.contrib.auth.models import Group
from django.db import IntegrityError, connection, transaction
from django.db.models import Exists, F, OuterRef, Q
from django.utils import timezone

from evalsite.models import Assignment, EvalItem, EvalRound, Prompt, RankedResponse, Ranking, Sample
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


def _may_annotate(round, user):
    """The round names the user, or names no one and the user is an annotator (drafts: no one)."""
    if not user.is_authenticated or round.status == EvalRound.Status.DRAFT:
        return False
    # SQL written out: this runs on every "next", and the ORM took 1.6 ms to build it as Exists().
    through, user_groups = EvalRound.annotators.through._meta.db_table, user.groups.through._meta.db_table
    with connection.cursor() as c:
        c.execute(
            f"SELECT EXISTS (SELECT 1 FROM {through} WHERE evalround_id = %s AND user_id = %s) "
            f"OR (NOT EXISTS (SELECT 1 FROM {through} WHERE evalround_id = %s) "
            f"AND EXISTS (SELECT 1 FROM {user_groups} ug JOIN {Group._meta.db_table} g ON g.id = ug.group_id "
            f"WHERE ug.user_id = %s AND g.name = %s))",
            [round.pk, user.pk, round.pk, user.pk, ANNOTATORS_GROUP],
        )
        return bool(c.fetchone()[0])


def check_may_annotate(round, user):
    if not _may_annotate(round, user):
        raise Refused("This evaluation round is not available to you.", status=403)


def round_for_annotator(round_id, user):
    """The round (with its task) if this user may annotate it; None if there is no such round."""
    round = EvalRound.objects.select_related("task").filter(pk=round_id).first()
    if round is not None:
        check_may_annotate(round, user)
    return round


def check_accepts_work(round):
    if round.status != EvalRound.Status.OPEN:
        raise Refused("This round is closed; it no longer accepts answers. Nothing was saved.")
    if round.is_past_deadline:
        raise Refused(
            f"This round's deadline ({timezone.localtime(round.deadline):%Y-%m-%d %H:%M}) has passed; "
            "it no longer accepts answers. Nothing was saved."
        )


# --- slots --------------------------------------------------------------------------------
# The queue runs on every "next" and "submit", so its queries are written out in SQL: the ORM
# spent more CPU building the annotated subqueries than PostgreSQL spent running them. The SQL
# is plain enough for SQLite too; only the row-lock clauses are PostgreSQL's (SQLite's
# immediate transactions already let one writer in at a time).

def _sql(query):
    return query.format(
        item=EvalItem._meta.db_table, asg=Assignment._meta.db_table,
        sample=Sample._meta.db_table, item_samples=EvalItem.samples.through._meta.db_table,
        user=get_user_model()._meta.db_table, fence=" OFFSET 0" if _row_locks() else "",
    )


def _row_locks():
    """PostgreSQL: its row-lock clauses (FOR NO KEY UPDATE, SKIP LOCKED) and planner fences apply."""
    return connection.vendor == "postgresql"


_ACTIVE = "(s.status = %s OR (s.status = %s AND s.expires_at > %s))"


def _active_params(now):
    return [Assignment.Status.SUBMITTED, Assignment.Status.LEASED, connection.ops.adapt_datetimefield_value(now)]


def active_count(item_id, now, exclude_id=None):
    """Slots of this item in use: submitted answers plus leases that have not expired."""
    sql = _sql("SELECT COUNT(*) FROM {asg} s WHERE s.item_id = %s AND " + _ACTIVE)
    params = [item_id, *_active_params(now)]
    if exclude_id is not None:
        sql += " AND s.id <> %s"
        params.append(exclude_id)
    with connection.cursor() as c:
        c.execute(sql, params)
        return c.fetchone()[0]


def _lock_row(table_sql, pk):
    if _row_locks():
        with connection.cursor() as c:
            c.execute(_sql(table_sql + " FOR NO KEY UPDATE"), [pk])


def _samples_in_order(item_id):
    """The item's samples, ids shuffled for this annotator, with their texts for the page."""
    with connection.cursor() as c:
        c.execute(_sql(
            "SELECT s.id, s.text FROM {sample} s JOIN {item_samples} t ON t.sample_id = s.id "
            "WHERE t.evalitem_id = %s ORDER BY s.id"
        ), [item_id])
        texts = dict(c.fetchall())
    order = list(texts)
    random.SystemRandom().shuffle(order)
    return order, texts


def next_assignment(round, user, now=None):
    """The assignment this annotator should work on now, or None when nothing is left for them.

    Their own live lease comes first (reloading a page never hands out a second item).
    """
    now = now or timezone.now()
    check_accepts_work(round)
    with transaction.atomic():
        # One request per annotator at a time: a double click on "Start" gets one lease, not two.
        _lock_row("SELECT 1 FROM {user} WHERE id = %s", user.pk)
        with connection.cursor() as c:
            c.execute(_sql("SELECT id FROM {asg} WHERE round_id = %s AND annotator_id = %s AND status = %s"),
                      [round.pk, user.pk, Assignment.Status.LEASED])
            own = [row[0] for row in c.fetchall()]  # usually none: read the rows only when there are some
        for a in Assignment.objects.filter(pk__in=own).order_by("id") if own else []:
            if a.expires_at > now:
                return a
            _lock_row("SELECT 1 FROM {item} WHERE id = %s", a.item_id)
            if active_count(a.item_id, now, exclude_id=a.pk) < round.overlap:
                a.expires_at = now + round.lease
                a.save(update_fields=["expires_at"])
                return a
            a.delete()  # the lapsed slot went to someone else; this annotator may not get it back

        item = _lock_free_item(round, user, now)
        if item is None:
            return None
        order, texts = _samples_in_order(item.pk)
        a = Assignment.objects.create(
            round=round, item=item, annotator=user, order=order, leased_at=now, expires_at=now + round.lease,
        )
        a.is_new = True  # nothing to pre-fill: it was never answered
        a.texts = texts  # the page needs them; saves reading them again
        return a


_FREE_ITEM = (
    "SELECT i.id, i.prompt_id, i.position, i.n_submitted, p.context FROM {item} i "
    "JOIN " + Prompt._meta.db_table + " p ON p.id = i.prompt_id "
    "WHERE i.round_id = %s AND i.n_submitted < %s "
    "AND NOT EXISTS (SELECT 1 FROM {asg} m WHERE m.item_id = i.id AND m.annotator_id = %s{fence}) "
    "AND (SELECT COUNT(*) FROM {asg} s WHERE s.item_id = i.id AND " + _ACTIVE + ") < %s "
    "ORDER BY i.position LIMIT 1"
)
# OFFSET 0 keeps "not had by me" a per-row check that PostgreSQL runs before the (dearer) slot
# count; as an anti-join it ran after it, and an annotator far ahead of the others paid for a
# slot count on every item they had already done (3.6 ms instead of 1.5 ms after 300 items).


def _lock_free_item(round, user, now):
    """Lock and return the first item in queue order with a free slot this user has not had; or None.

    PostgreSQL walks the (round, position) index and stops at the first row that passes, so
    the slot count is computed only for the items it passes over (full or leased ones), not
    for the whole round. SKIP LOCKED passes over items other annotators are being given right
    now, so fifty annotators never queue behind one another.
    """
    params = [round.pk, round.overlap, user.pk, *_active_params(now), round.overlap]
    for _ in range(1000):
        row = None
        with connection.cursor() as c:
            if _row_locks():
                c.execute(_sql(_FREE_ITEM + " FOR NO KEY UPDATE OF i SKIP LOCKED"), params)
                row = c.fetchone()
                if row is None:
                    # Every free item may be locked by annotators being served right now: wait for the first.
                    c.execute(_sql(_FREE_ITEM + " FOR NO KEY UPDATE OF i"), params)
                    row = c.fetchone()
            else:
                c.execute(_sql(_FREE_ITEM), params)
                row = c.fetchone()
        if row is None:
            return None
        pk, prompt_id, position, n_submitted, context = row
        # Re-read the count now that we hold the lock: a new statement sees every commit before it.
        if active_count(pk, timezone.now()) < round.overlap:
            item = EvalItem(pk=pk, round_id=round.pk, prompt_id=prompt_id, position=position, n_submitted=n_submitted)
            item.prompt = Prompt(pk=prompt_id, context=context)
            return item
        # Someone filled it just before we locked it: look again.
    return None


def get_assignment(token, user, related=("round__task", "item__prompt")):
    """The user's assignment with this token (and the rows named in ``related``), or Refused."""
    a = Assignment.objects.select_related(*related).filter(token=token).first()
    if a is None or a.annotator_id != user.pk:
        raise Refused("This item is not assigned to you. Nothing was saved.", status=403)
    return a


# --- submit / skip / undo -----------------------------------------------------------------

@dataclass
class Submitted:
    ranking: Ranking
    duplicate: bool  # True when this exact submission had already been stored


def submit(token, user, *, ranks, harmless, comment="", time_on_page_ms=None, user_agent="", key, assignment=None):
    """Store a ranking once. ``ranks`` / ``harmless`` map shown labels (A, B, ...) to values.

    The caller has validated the values (see forms.RankingForm); this re-checks everything
    that depends on the database, under the assignment's row lock. ``assignment``: the one
    with this token, with its round, if the caller has already read it.
    """
    if not key or len(key) > 64:
        raise Refused("The form is missing its submission key; reload the page and try again.", status=400)
    now = timezone.now()
    try:
        return _store(token, user, ranks, harmless, comment, time_on_page_ms, user_agent, key, now, assignment)
    except IntegrityError:
        # The unique key caught a twin of this request (a retry, or one that raced this one), or
        # one live ranking per assignment caught a second answer with another key.
        done = Ranking.objects.filter(idempotency_key=key).select_related("assignment").first()
        if done is None:
            raise Refused("This item was already submitted. Use “Undo last submission” to change it.")
        if done.assignment.token != token or done.annotator_id != user.pk:
            raise Refused("This submission key belongs to another item; reload the page.", status=400)
        return Submitted(done, duplicate=True)


def _store(token, user, ranks, harmless, comment, time_on_page_ms, user_agent, key, now, a=None):
    with transaction.atomic():
        if a is None or a.token != token:
            a = Assignment.objects.select_related("round").filter(token=token).first()
        if a is None or a.annotator_id != user.pk:
            raise Refused("This item is not assigned to you. Nothing was saved.", status=403)
        # Lock the row, then re-read what a concurrent request may have changed.
        a.status, a.expires_at = (
            Assignment.objects.select_for_update(no_key=True).filter(pk=a.pk).values_list("status", "expires_at").get()
        )
        if a.status != Assignment.Status.LEASED:
            # Most often a retry of a submission that was stored: answer it as the first time.
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
            _lock_row("SELECT 1 FROM {item} WHERE id = %s", a.item_id)
            if active_count(a.item_id, now, exclude_id=a.pk) >= round.overlap:
                raise Refused(
                    "Your time on this item ran out and it went to another annotator. Nothing was saved; "
                    "you will get the next item."
                )
        labels = a.labels
        if set(ranks) - set(labels) or set(harmless) - set(labels):
            raise Refused("The answer names responses that are not on this page. Nothing was saved.", status=400)
        # A key used before (a retry after an undo, or a form posted for another item) breaks
        # the unique constraint on idempotency_key; submit() answers that case.
        ranking = Ranking(
            assignment=a, round=round, item_id=a.item_id, annotator=user, shown_order=list(a.order),
            comment=comment.strip()[:5000], time_on_page_ms=time_on_page_ms, user_agent=user_agent[:500],
            idempotency_key=key, created_at=now,
        )
        [ranking.pk] = _insert_rows(Ranking, [{
            f: getattr(ranking, f) for f in ("assignment_id", "round_id", "item_id", "annotator_id", "shown_order",
                                             "comment", "time_on_page_ms", "user_agent", "idempotency_key",
                                             "created_at", "withdrawn_at")
        }])
        _insert_rows(RankedResponse, [
            {"ranking_id": ranking.pk, "sample_id": sample_id, "label": label, "position": i,
             "rank": ranks.get(label) if round.asks_rank else None,
             "harmless": harmless.get(label) if round.asks_harmless else None}
            for i, (label, sample_id) in enumerate(zip(labels, a.order))
        ])
        with connection.cursor() as c:
            c.execute(_sql("UPDATE {asg} SET status = %s, finished_at = %s WHERE id = %s"),
                      [Assignment.Status.SUBMITTED, connection.ops.adapt_datetimefield_value(now), a.pk])
            c.execute(_sql("UPDATE {item} SET n_submitted = n_submitted + 1 WHERE id = %s"), [a.item_id])
        ranking._state.adding, ranking._state.db = False, connection.alias  # it is in the database now
        a.status, a.finished_at = Assignment.Status.SUBMITTED, now
        return Submitted(ranking, duplicate=False)


def _insert_rows(model, rows):
    """INSERT ``rows`` (dicts of field attname -> value) in one statement; returns their ids.

    Written out because every submit runs it: save() and bulk_create() spent more CPU in
    Python than the database spent storing the rows. Values go through each field's own
    conversion (JSON, datetimes), as the ORM's would.
    """
    qn = connection.ops.quote_name
    fields = [next(f for f in model._meta.concrete_fields if f.attname == name) for name in rows[0]]
    one_row = "(" + ", ".join(["%s"] * len(fields)) + ")"
    params = [f.get_db_prep_save(row[f.attname], connection) for row in rows for f in fields]
    with connection.cursor() as c:
        c.execute(
            f"INSERT INTO {qn(model._meta.db_table)} ({', '.join(qn(f.column) for f in fields)}) "
            f"VALUES {', '.join([one_row] * len(rows))} RETURNING {qn(model._meta.pk.column)}",
            params,
        )
        return [row[0] for row in c.fetchall()]


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
    with connection.cursor() as c:
        c.execute(f"SELECT COUNT(*) FROM {Ranking._meta.db_table} WHERE round_id = %s AND annotator_id = %s "
                  "AND withdrawn_at IS NULL", [round.pk, user.pk])
        done = c.fetchone()[0]
    # Items are fixed once a round opens; open_round stores their number.
    total = round.metadata.get("n_items") if round.status != EvalRound.Status.DRAFT else None
    return {"done": done, "total": total if total is not None else round.items.count()}


def remaining_for(round, user):
    """Items this user could still get: not full and not had by them (items others hold leases on count too)."""
    mine = Assignment.objects.filter(item_id=OuterRef("pk"), annotator=user)
    unfinished = EvalItem.objects.filter(round=round, n_submitted__lt=round.overlap).exclude(Exists(mine)).count()
    own_leases = Assignment.objects.filter(round=round, annotator=user, status=Assignment.Status.LEASED).count()
    return unfinished + own_leases
