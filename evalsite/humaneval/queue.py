"""The annotator queue: who gets which item next, and what happens on submit, skip and undo.

Concurrency: an item's slots are handed out while holding its row lock. On PostgreSQL the
candidate row is taken with ``SELECT ... FOR UPDATE SKIP LOCKED`` (so fifty annotators never
wait on one another), and the lease is inserted only if the slot count, read again *after* the
lock is held by the INSERT itself (a new statement, which sees every transaction committed
before it), leaves a slot free. Two annotators therefore never take the same last slot. A
lease that expires stops counting, which returns the item to the pool; the annotator who let
it lapse gets it back only if the slot is still free. A submission is stored once: under the
assignment's row lock, or on PostgreSQL by one statement whose UPDATE writes only if it finds
the lease still open once it holds the row.
"""
import json
import random
import re
from contextlib import nullcontext
from dataclasses import dataclass
from functools import lru_cache

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import IntegrityError, connection, transaction
from django.db.models import Exists, F, OuterRef, Q
from django.utils import timezone

from evalsite import rawsql
from evalsite.humaneval.models import ANNOTATORS_GROUP, Assignment, EvalItem, EvalRound, RankedResponse, Ranking
from evalsite.models import Prompt, Sample, Task

SKIP_REASONS = [
    ("cannot_judge", "I can't judge this (unfamiliar topic or language)"),
    ("broken", "The input or the responses are broken or empty"),
    ("identical", "The responses are identical; there is nothing to rank"),
    ("disturbing", "The content is too disturbing for me"),
    ("other", "Other (say why below)"),
]


class Refused(Exception):
    """A request the annotator may not make now; ``message`` is shown to them, nothing changed."""

    def __init__(self, message, status=409, round=None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.round = round  # the round it is about, where known (the page links back to it)


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


# Round r names user u, or names no one and u is in the annotators group (parameter: the group's name).
_MAY_ANNOTATE = (
    "(EXISTS (SELECT 1 FROM {round_annotators} x WHERE x.evalround_id = r.id AND x.user_id = u.id) "
    "OR (NOT EXISTS (SELECT 1 FROM {round_annotators} x WHERE x.evalround_id = r.id) "
    "AND EXISTS (SELECT 1 FROM {user_groups} ug JOIN {group} g ON g.id = ug.group_id "
    "WHERE ug.user_id = u.id AND g.name = %s)))"
)


def _may_annotate(round, user):
    """The round names the user, or names no one and the user is an annotator (drafts: no one)."""
    if not user.is_authenticated or round.status == EvalRound.Status.DRAFT:
        return False
    # SQL written out: this runs on every request, and building it as an ORM Exists() costs more
    # than running it (bench/annotate).
    with connection.cursor() as c:
        c.execute(_sql("SELECT " + _MAY_ANNOTATE + " FROM {round} r CROSS JOIN {user} u WHERE r.id = %s AND u.id = %s"),
                  [ANNOTATORS_GROUP, round.pk, user.pk])
        row = c.fetchone()
        return bool(row and row[0])


def _not_available(round):
    return Refused("This evaluation round is not available to you.", status=403, round=round)


def check_may_annotate(round, user):
    if not _may_annotate(round, user):
        raise _not_available(round)


def check_accepts_work(round):
    if round.status != EvalRound.Status.OPEN:
        raise Refused("This round is closed; it no longer accepts answers. Nothing was saved.", round=round)
    if round.is_past_deadline:
        raise Refused(
            f"This round's deadline ({timezone.localtime(round.deadline):%Y-%m-%d %H:%M}) has passed; "
            "it no longer accepts answers. Nothing was saved.", round=round,
        )


# --- slots --------------------------------------------------------------------------------
# The queue runs on every "next" and "submit", so its queries are written out in SQL: the ORM
# spent more CPU building the annotated subqueries than PostgreSQL spent running them. The SQL
# is plain enough for SQLite too; only the row-lock clauses are PostgreSQL's (SQLite's
# immediate transactions already let one writer in at a time).

def _sql(query):
    return _sql_for(query, connection.vendor)


@lru_cache(maxsize=None)
def _sql_for(query, vendor):
    # Cached: the queue's statements are built from a few fixed templates, on every request.
    return query.format(
        item=EvalItem._meta.db_table, asg=Assignment._meta.db_table, prompt=Prompt._meta.db_table,
        round=EvalRound._meta.db_table, task=Task._meta.db_table,
        sample=Sample._meta.db_table, item_samples=EvalItem.samples.through._meta.db_table,
        ranking=Ranking._meta.db_table, user=get_user_model()._meta.db_table,
        round_annotators=EvalRound.annotators.through._meta.db_table,
        user_groups=get_user_model().groups.through._meta.db_table, group=Group._meta.db_table,
        json_pairs=_JSON_PAIRS[vendor], fence=" OFFSET 0" if vendor == "postgresql" else "",
    )


def _row_locks():
    """PostgreSQL: its row-lock clauses (FOR NO KEY UPDATE, SKIP LOCKED) and planner fences apply."""
    return connection.vendor == "postgresql"


_ACTIVE = "(s.status = %s OR (s.status = %s AND s.expires_at > %s))"

# Items the annotator has done in the round: live (not withdrawn) answers. Parameters: round, annotator.
_DONE = "(SELECT COUNT(*) FROM {ranking} rk WHERE rk.round_id = %s AND rk.annotator_id = %s AND rk.withdrawn_at IS NULL)"


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


def next_assignment(round, user, now=None):
    """The assignment this annotator should work on now, or None when nothing is left for them.

    Their own live lease comes first (reloading a page never hands out a second item).
    """
    now = now or timezone.now()
    check_accepts_work(round)
    with transaction.atomic():
        # One request per annotator at a time: a double click on "Start" gets one lease, not two.
        _lock_row("SELECT 1 FROM {user} WHERE id = %s", user.pk)
        return _next_locked(round, user, now)


def next_for(round_id, user, now=None):
    """``(round, assignment)`` for the annotator's "next" request: what ``next_assignment`` gives.

    The request path: one statement reads the round with its task, checks that the user may
    annotate it and takes the user's lock. ``round`` is None when there is no such round;
    Refused when the user may not have it or it takes no answers now.
    """
    now = now or timezone.now()
    with transaction.atomic():
        with connection.cursor() as c:
            c.execute(
                _sql("SELECT " + rawsql.columns(EvalRound, "r") + ", " + rawsql.columns(Task, "t") + ", "
                     + _MAY_ANNOTATE + " FROM {round} r JOIN {task} t ON t.id = r.task_id "
                     "CROSS JOIN {user} u WHERE r.id = %s AND u.id = %s")
                + (" FOR NO KEY UPDATE OF u" if _row_locks() else ""),
                [ANNOTATORS_GROUP, round_id, user.pk],
            )
            row = c.fetchone()
        if row is None:
            return None, None
        round, task = rawsql.load_row(row, EvalRound, Task)
        round.task = task
        if not row[-1] or round.status == EvalRound.Status.DRAFT:
            raise _not_available(round)
        check_accepts_work(round)
        return round, _next_locked(round, user, now)


def _next_locked(round, user, now):
    """next_assignment's work, once this user's lock is held (inside its transaction).

    Usually one statement: the free-item search, which finds nothing while the annotator holds
    a lease in the round. Only then are their leases read (a reload, or a lease that lapsed).
    """
    a = _lease_free_item(round, user, now, wait=False)
    if a is not None:
        return a
    with connection.cursor() as c:
        c.execute(_sql("SELECT " + rawsql.columns(Assignment, "a") + " FROM {asg} a "
                       "WHERE a.round_id = %s AND a.annotator_id = %s AND a.status = %s ORDER BY a.id"),
                  [round.pk, user.pk, Assignment.Status.LEASED])
        own = [rawsql.load(Assignment, row) for row in c.fetchall()]
    for a in own:
        if a.expires_at > now:
            return a
        _lock_row("SELECT 1 FROM {item} WHERE id = %s", a.item_id)
        if active_count(a.item_id, now, exclude_id=a.pk) < round.overlap:
            a.expires_at = now + round.lease
            a.save(update_fields=["expires_at"])
            return a
        a.delete()  # the lapsed slot went to someone else; this annotator may not get it back
    if not own and not _row_locks():
        return None  # the search above was not held back by leases or by row locks: nothing is free
    # Every free item may be locked by annotators being served right now: wait for the first.
    return _lease_free_item(round, user, now, wait=True)


def _lease_free_item(round, user, now, wait):
    """A new lease on the first free item for this annotator, or None (also while they hold one).

    ``wait``: on PostgreSQL, wait for items other requests hold locked instead of passing them.
    """
    params = [round.pk, user.pk,  # done (progress)
              round.pk, round.pk, user.pk, Assignment.Status.LEASED,  # the round; no lease held
              user.pk, *_active_params(now), round.overlap]  # not had by this user; a free slot
    sql = _free_item_sql()
    if _row_locks():
        sql += " FOR NO KEY UPDATE OF i" + ("" if wait else " SKIP LOCKED")
    for _ in range(1000):
        with connection.cursor() as c:
            c.execute(sql, params)
            row = c.fetchone()
        if row is None:
            return None
        item_id, prompt_id, position, n_submitted, context, pairs, n_done = row
        texts = dict(json.loads(pairs) if isinstance(pairs, str) else pairs or [])
        order = list(texts)
        random.SystemRandom().shuffle(order)
        a = Assignment(round=round, item_id=item_id, annotator=user, order=order, leased_at=now,
                       expires_at=now + round.lease)
        a.pk = _insert_if_free(a, now, round.overlap)
        if a.pk is not None:
            a._state.adding, a._state.db = False, connection.alias
            a.item = EvalItem(pk=item_id, round_id=round.pk, prompt_id=prompt_id, position=position,
                              n_submitted=n_submitted)
            a.item.prompt = Prompt(pk=prompt_id, context=context)
            a.is_new = True  # nothing to pre-fill: it was never answered
            a.texts = texts  # the page needs them; saves reading them again
            a.n_done = n_done  # and the annotator's progress
            return a
        # Someone filled it just before we locked it: look again.
    return None


# The first item in queue order with a free slot that this user has not had, with what its
# page needs: the responses' texts and how many items the user has done in the round; none
# while the user holds a lease in the round (a condition PostgreSQL checks once, not per row).
_FREE_ITEM = (
    "SELECT i.id, i.prompt_id, i.position, i.n_submitted, p.context, "
    "(SELECT {json_pairs} FROM {sample} sm JOIN {item_samples} t ON t.sample_id = sm.id WHERE t.evalitem_id = i.id), "
    + _DONE + " "
    "FROM {item} i JOIN {prompt} p ON p.id = i.prompt_id "
    "WHERE i.round_id = %s "
    "AND NOT EXISTS (SELECT 1 FROM {asg} o WHERE o.round_id = %s AND o.annotator_id = %s AND o.status = %s) "
    "AND NOT i.complete "
    "AND NOT EXISTS (SELECT 1 FROM {asg} m WHERE m.item_id = i.id AND m.annotator_id = %s{fence}) "
    "AND (SELECT COUNT(*) FROM {asg} s WHERE s.item_id = i.id AND " + _ACTIVE + ") < %s "
    "ORDER BY i.position LIMIT 1"
)
# OFFSET 0 keeps "not had by me" a per-row check that PostgreSQL runs before the (dearer) slot
# count; as an anti-join it ran after it, and an annotator far ahead of the others paid for a
# slot count on every item they had already done.
# Walking the (round, position) index, PostgreSQL stops at the first row that passes, so the
# slot count is computed only for the items it passes over (full or leased ones), not for the
# whole round. SKIP LOCKED passes over items other annotators are being given right now, so
# fifty annotators never queue behind one another.

_JSON_PAIRS = {
    "postgresql": "json_agg(json_build_array(sm.id, sm.text))",
    "sqlite": "json_group_array(json_array(sm.id, sm.text))",
}


def _free_item_sql():
    return _sql(_FREE_ITEM)


def _insert_if_free(a, now, overlap):
    """INSERT the lease ``a`` if its item still has a free slot; its id, or None if the item is full.

    The item's row lock is held, and the count runs in this new statement, which sees every
    transaction committed before it: no one can take the slot between the count and the insert.
    """
    row = {f.attname: getattr(a, f.attname) for f in Assignment._meta.concrete_fields if not f.primary_key}
    sql, params = rawsql.insert_sql(
        Assignment, [row], where=_sql("(SELECT COUNT(*) FROM {asg} s WHERE s.item_id = %s AND " + _ACTIVE + ") < %s"),
    )
    with connection.cursor() as c:
        c.execute(sql + " RETURNING id", [*params, a.item_id, *_active_params(now), overlap])
        row = c.fetchone()
    return row[0] if row else None


# What models.new_token() makes (URL-safe base64) within the column's 32 characters.
_TOKEN_SHAPE = re.compile(r"[A-Za-z0-9_-]{1,32}")


def is_token_shaped(token):
    return _TOKEN_SHAPE.fullmatch(token) is not None


def get_assignment(token, user):
    """The user's assignment with this token, with its round, task, item and prompt; or Refused.

    Refused too when the user may no longer annotate the round (removed from it, or from the
    annotators group): the item they had leased goes back to the pool.
    """
    with connection.cursor() as c:
        c.execute(
            _sql("SELECT " + ", ".join(rawsql.columns(m, alias) for m, alias in _ASSIGNMENT_PAGE) + ", "
                 + _MAY_ANNOTATE + " FROM {asg} a JOIN {round} r ON r.id = a.round_id "
                 "JOIN {task} t ON t.id = r.task_id JOIN {item} i ON i.id = a.item_id "
                 "JOIN {prompt} p ON p.id = i.prompt_id JOIN {user} u ON u.id = a.annotator_id "
                 "WHERE a.token = %s AND a.annotator_id = %s"),
            [ANNOTATORS_GROUP, token, user.pk],
        )
        row = c.fetchone()
    if row is None:
        raise Refused("This item is not assigned to you. Nothing was saved.", status=403)
    a, round, task, item, prompt = rawsql.load_row(row, *(m for m, _ in _ASSIGNMENT_PAGE))
    round.task, item.prompt, a.round, a.item = task, prompt, round, item
    if not row[-1] or round.status == EvalRound.Status.DRAFT:
        raise _no_longer_available(a)
    return a


_ASSIGNMENT_PAGE = ((Assignment, "a"), (EvalRound, "r"), (Task, "t"), (EvalItem, "i"), (Prompt, "p"))


def _no_longer_available(a, now=None):
    """Refused for an annotator who may no longer work on the round of their assignment ``a``;
    their lease on it ends now, so the item goes back to the pool at once."""
    now = now or timezone.now()
    Assignment.objects.filter(pk=a.pk, status=Assignment.Status.LEASED, expires_at__gt=now).update(expires_at=now)
    return Refused("You can no longer annotate this round; the item went back to the pool. Nothing was saved.",
                   status=403, round=a.round)


# --- submit / skip / undo -----------------------------------------------------------------

@dataclass
class Submitted:
    ranking: Ranking
    duplicate: bool  # True when this exact submission had already been stored


@dataclass
class Answer:
    """What an annotator answered for one item; ``ranks`` / ``harmless`` map shown labels to values."""
    ranks: dict
    harmless: dict
    comment: str = ""
    time_on_page_ms: int | None = None


def submit(token, user, *, ranks, harmless, comment="", time_on_page_ms=None, user_agent="", key):
    """Store a ranking once. ``ranks`` / ``harmless`` map shown labels (A, B, ...) to values.

    The caller has validated the values (see forms.clean_answer); this re-checks everything
    that depends on the database (see submit_answer).
    """
    answer = Answer(ranks, harmless, comment, time_on_page_ms)
    return submit_answer(token, user, lambda a: answer, key=key, user_agent=user_agent)


def submit_answer(token, user, read_answer, *, key, user_agent=""):
    """Store, once, the Answer that ``read_answer(assignment)`` reads for the item with this token.

    ``read_answer`` gets the assignment (with its round) after every check that depends on the
    database has passed, and validates the posted values against it. If it raises, nothing is
    stored. Refused carries the round, for the page that says why. The assignment is row-locked
    meanwhile, except on PostgreSQL's one-statement path, whose write checks that nothing changed.
    """
    if not key or len(key) > 64 or not key.isprintable():
        # The page puts 32 hex digits here; anything else (a NUL most of all) is not its form.
        raise Refused("The form is missing its submission key; reload the page and try again.", status=400)
    now = timezone.now()
    a = None
    try:
        result = None
        if _row_locks():
            # PostgreSQL: an open lease is usually submitted by one statement and no transaction
            # (two round trips fewer than BEGIN, a locking read, the writes and COMMIT). The
            # statement writes only if the assignment is still an open lease when its UPDATE
            # holds the row; anything else takes the locked path below.
            a = read_assignment(token, user)
            if a.status == Assignment.Status.LEASED and a.expires_at > now and a.may_annotate:
                # Inside a caller's transaction a savepoint keeps it usable if the write fails.
                with transaction.atomic() if connection.in_atomic_block else nullcontext():
                    result = _store(a, user, read_answer, user_agent, key, now, unless_changed=True)
        if result is None:
            with transaction.atomic():
                a = lock_assignment(token, user)
                if a.may_annotate:
                    result = _store(a, user, read_answer, user_agent, key, now)
            if result is None:  # removed from the round since they took the item
                raise _no_longer_available(a, now)
        if not result.duplicate and result.ranking.pk in _REPLAN_AT:
            _replan_as_tables_grow()
        return result
    except IntegrityError:
        # The unique key caught a twin of this request (a retry, or one that raced this one), or
        # one live ranking per assignment caught a second answer with another key.
        done = Ranking.objects.filter(idempotency_key=key).select_related("assignment").first()
        if done is None:
            raise Refused("This item was already submitted. Use “Undo last submission” to change it.", round=a.round)
        if done.assignment.token != token or done.annotator_id != user.pk:
            raise Refused("This submission key belongs to another item; reload the page.", status=400, round=a.round)
        return Submitted(done, duplicate=True)
    except Refused as e:
        e.round = e.round or (a.round if a is not None else None)
        raise


# Numbers of answers stored (ranking ids) at which the queue's tables are analyzed again.
_REPLAN_AT = frozenset(4 ** k for k in range(3, 16))  # 64, 256, 1024, ...


def _replan_as_tables_grow():
    """ANALYZE the queue's growing tables at 64, 256, 1024, ... answers (PostgreSQL).

    A new deployment's first answers land in nearly empty tables. PostgreSQL plans the queue's
    prepared statements for tables that small (sequential scans, the cheapest there) and keeps
    those plans until the tables are analyzed. Autovacuum does that only once a table has grown
    by a tenth, and not at all where it is switched off; meanwhile every "next" scanned every
    assignment for each item it passed: 7 ms of database time per "next" instead of 0.5 ms
    with 50 annotators. Once the tables hold a few hundred rows the plans use indexes, which
    stay right as they grow, so analyzing at geometric steps is enough.
    """
    rawsql.analyze(Assignment, Ranking)


def lock_assignment(token, user):
    """The user's assignment with this token, and its round, row-locked (in a transaction); or Refused.

    One statement: the lock returns the row as the last transaction to change it left it.
    """
    return read_assignment(token, user, lock=_row_locks())


def read_assignment(token, user, lock=False):
    """The user's assignment with this token, and its round (``lock``: row-locked); or Refused.

    ``a.may_annotate``: whether the user may (still) work on the round.
    """
    with connection.cursor() as c:
        c.execute(
            _sql("SELECT " + rawsql.columns(Assignment, "a") + ", " + rawsql.columns(EvalRound, "r") + ", "
                 + _MAY_ANNOTATE + " FROM {asg} a JOIN {round} r ON r.id = a.round_id "
                 "JOIN {user} u ON u.id = a.annotator_id WHERE a.token = %s AND a.annotator_id = %s")
            + (" FOR NO KEY UPDATE OF a" if lock else ""),
            [ANNOTATORS_GROUP, token, user.pk],
        )
        row = c.fetchone()
    if row is None:
        raise Refused("This item is not assigned to you. Nothing was saved.", status=403)
    a, round = rawsql.load_row(row, Assignment, EvalRound)
    a.round = round
    a.may_annotate = bool(row[-1]) and round.status != EvalRound.Status.DRAFT
    return a


def _store(a, user, read_answer, user_agent, key, now, unless_changed=False):
    """Check and store the answer for ``a``; Submitted, or Refused.

    ``unless_changed``: ``a`` was read without its lock, so the write happens only if it is
    still an open lease; None when it is not (nothing written).
    """
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
    answer = read_answer(a)
    labels = a.labels
    if set(answer.ranks) - set(labels) or set(answer.harmless) - set(labels):
        raise Refused("The answer names responses that are not on this page. Nothing was saved.", status=400)
    # A key used before (a retry after an undo, or a form posted for another item) breaks
    # the unique constraint on idempotency_key; submit_answer() answers that case.
    ranking = Ranking(
        assignment=a, round=round, item_id=a.item_id, annotator=user, shown_order=list(a.order),
        comment=answer.comment.strip()[:5000], time_on_page_ms=answer.time_on_page_ms,
        user_agent=user_agent[:500].replace("\x00", ""), idempotency_key=key, created_at=now,
    )
    responses = [
        {"ranking_id": None, "sample_id": sample_id, "label": label, "position": i,
         "rank": answer.ranks.get(label) if round.asks_rank else None,
         "harmless": answer.harmless.get(label) if round.asks_harmless else None}
        for i, (label, sample_id) in enumerate(zip(labels, a.order))
    ]
    ranking.pk = _write_ranking(ranking, responses, now, round.overlap, open_at=now if unless_changed else None)
    if ranking.pk is None:
        return None
    ranking._state.adding, ranking._state.db = False, connection.alias  # it is in the database now
    a.status, a.finished_at = Assignment.Status.SUBMITTED, now
    return Submitted(ranking, duplicate=False)


_RANKING_COLUMNS = ("assignment_id", "round_id", "item_id", "annotator_id", "shown_order", "comment",
                    "time_on_page_ms", "user_agent", "idempotency_key", "created_at", "withdrawn_at")


def _write_ranking(ranking, responses, now, overlap, open_at=None):
    """Store the ranking and its responses, mark the assignment submitted, count it on the item.

    Written out because every submit runs it: save() and bulk_create() spent more CPU in Python
    than the database spent storing the rows. On PostgreSQL the four writes are one statement
    (data-modifying WITH), which writes nothing unless its UPDATE finds the assignment still
    leased (and, with ``open_at``, its lease open then); it returns the ranking's id or None.
    SQLite, which has no such statement, runs them one by one under the caller's lock.
    """
    mark_sql = _sql("UPDATE {asg} SET status = %s, finished_at = %s WHERE id = %s")
    mark_params = [Assignment.Status.SUBMITTED, connection.ops.adapt_datetimefield_value(now), ranking.assignment_id]
    count_sql = _sql("UPDATE {item} SET n_submitted = n_submitted + 1, complete = (n_submitted + 1 >= %s) WHERE id = %s")
    ranking_row = {f: getattr(ranking, f) for f in _RANKING_COLUMNS}
    if connection.vendor == "postgresql":
        mark_sql += " AND status = %s" + (" AND expires_at > %s" if open_at else "") + " RETURNING id"
        mark_params += [Assignment.Status.LEASED] + ([open_at] if open_at else [])
        ranking_sql, ranking_params = rawsql.insert_sql(Ranking, [ranking_row], where="EXISTS (SELECT 1 FROM marked)")
        responses_sql, responses_params = rawsql.insert_each_sql(
            RankedResponse, responses, "new_ranking", {"ranking_id": "new_ranking.id"},
        )
        with connection.cursor() as c:
            c.execute(
                f"WITH marked AS ({mark_sql}), new_ranking AS ({ranking_sql} RETURNING id), "
                f"new_responses AS ({responses_sql}), "
                f"counted AS ({count_sql} AND EXISTS (SELECT 1 FROM marked)) SELECT id FROM new_ranking",
                [*mark_params, *ranking_params, *responses_params, overlap, ranking.item_id],
            )
            row = c.fetchone()
        return row[0] if row else None
    ranking_sql, ranking_params = rawsql.insert_sql(Ranking, [ranking_row])
    with connection.cursor() as c:
        c.execute(ranking_sql + " RETURNING id", ranking_params)
        ranking_id = c.fetchone()[0]
        rawsql.insert_rows(RankedResponse, [{**r, "ranking_id": ranking_id} for r in responses])
        c.execute(mark_sql, mark_params)
        c.execute(count_sql, [overlap, ranking.item_id])
    return ranking_id


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
        # complete = (n_submitted - 1 >= overlap), in terms of the value before this update
        EvalItem.objects.filter(pk=a.item_id).update(
            n_submitted=F("n_submitted") - 1, complete=Q(n_submitted__gt=round.overlap),
        )
    return a


# --- progress -----------------------------------------------------------------------------

def annotator_progress(round, user):
    with connection.cursor() as c:
        c.execute(_sql("SELECT " + _DONE), [round.pk, user.pk])
        done = c.fetchone()[0]
    return {"done": done, "total": items_in(round)}


def items_in(round):
    # Items are fixed once a round opens; open_round stores their number.
    total = round.metadata.get("n_items") if round.status != EvalRound.Status.DRAFT else None
    return total if total is not None else round.items.count()


def remaining_for(round, user):
    """Items this user could still get: not full and not had by them (items others hold leases on count too)."""
    mine = Assignment.objects.filter(item_id=OuterRef("pk"), annotator=user)
    unfinished = EvalItem.objects.filter(round=round, complete=False).exclude(Exists(mine)).count()
    own_leases = Assignment.objects.filter(round=round, annotator=user, status=Assignment.Status.LEASED).count()
    return unfinished + own_leases
