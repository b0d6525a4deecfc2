"""Human evaluation: queue, overlap, leases, refusals, idempotent submit, undo, skip, blinding."""
import re
import uuid
from datetime import timedelta

import pytest
from django.contrib.staticfiles import finders
from django.urls import reverse
from django.utils import timezone

from evalsite.humaneval import queue
from evalsite.humaneval.models import Assignment, EvalItem, EvalRound, Ranking
from evalsite.humaneval.queue import Refused
from evalsite.models import Policy, Sample
from tests.humaneval_demo import make_annotators, make_round

pytestmark = pytest.mark.django_db

POLICY_PK = 987650
SAMPLE_PK = 5550000
POLICY_NAMES = ("sft-QUOKKA", "rlhf-NARWHAL", "rlaif-AXOLOTL")


@pytest.fixture
def annotators():
    return make_annotators(3, password="pw-annotator")


@pytest.fixture
def rnd(annotators):
    return make_round(n_prompts=4, overlap=2, policy_names=POLICY_NAMES, policy_pk_base=POLICY_PK,
                      sample_pk_base=SAMPLE_PK)


def login(client, user):
    client.force_login(user)
    return client


def answer(a, ranks=None, harmless=None, key=None, **extra):
    """Form data for assignment ``a``: ranks/harmless keyed by shown label."""
    labels = a.labels
    ranks = ranks if ranks is not None else {lab: i + 1 for i, lab in enumerate(labels)}
    data = {"key": key or uuid.uuid4().hex, "elapsed_ms": "1234", "comment": ""}
    for lab, r in ranks.items():
        data[f"rank_{lab}"] = str(r)
    for lab, v in (harmless or {}).items():
        data[f"harmless_{lab}"] = v
    data.update(extra)
    return data


def submit_direct(a, user, ranks=None, key=None):
    labels = a.labels
    ranks = ranks or {lab: i + 1 for i, lab in enumerate(labels)}
    return queue.submit(a.token, user, ranks=ranks, harmless={}, key=key or f"key-{a.pk}-{Ranking.objects.count()}")


# --- queue and overlap ------------------------------------------------------------------------

def test_every_item_gets_exactly_overlap_answers_from_distinct_annotators(rnd, annotators):
    done = {u.pk: 0 for u in annotators}
    progress = True
    while progress:
        progress = False
        for u in annotators:
            a = queue.next_assignment(rnd, u)
            if a is not None:
                submit_direct(a, u)
                done[u.pk] += 1
                progress = True
    per_item = {}
    for item_id, annotator_id in Ranking.objects.values_list("item_id", "annotator_id"):
        per_item.setdefault(item_id, []).append(annotator_id)
    assert len(per_item) == 4
    assert all(len(v) == 2 and len(set(v)) == 2 for v in per_item.values())
    assert sum(done.values()) == 8
    assert sorted(rnd.items.values_list("n_submitted", flat=True)) == [2, 2, 2, 2]
    for u in annotators:
        assert queue.next_assignment(rnd, u) is None


def test_reloading_keeps_the_same_item_and_order(rnd, annotators):
    u = annotators[0]
    a1 = queue.next_assignment(rnd, u)
    a2 = queue.next_assignment(rnd, u)
    assert a1.pk == a2.pk and a1.order == a2.order
    assert Assignment.objects.filter(annotator=u).count() == 1


def test_shown_order_is_a_recorded_random_permutation_per_annotator_and_item(annotators):
    rnd = make_round(n_prompts=12, overlap=3, name="order round")
    orders = []
    for u in annotators:
        for _ in range(12):
            a = queue.next_assignment(rnd, u)
            assert sorted(a.order) == sorted(a.item.samples.values_list("id", flat=True))
            orders.append(tuple(Sample.objects.get(pk=s).policy.name for s in a.order))
            submit_direct(a, u)
    # 36 shuffles of 3 responses: every one of the 6 orders turns up (chance of missing one < 1e-2).
    assert len(set(orders)) >= 5
    r = Ranking.objects.first()
    assert r.shown_order == r.assignment.order
    assert list(r.responses.order_by("position").values_list("sample_id", flat=True)) == r.shown_order


def test_expired_lease_returns_the_item_to_the_pool(annotators):
    rnd = make_round(n_prompts=1, overlap=1, name="lease round")
    a_user, b_user = annotators[:2]
    a = queue.next_assignment(rnd, a_user)
    assert queue.next_assignment(rnd, b_user) is None  # the only slot is leased
    Assignment.objects.filter(pk=a.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    b = queue.next_assignment(rnd, b_user)
    assert b is not None and b.item_id == a.item_id
    # The annotator who let the lease lapse cannot submit on it any more, and nothing is stored.
    with pytest.raises(Refused, match="ran out"):
        submit_direct(Assignment.objects.get(pk=a.pk), a_user)
    assert Ranking.objects.count() == 0
    assert queue.next_assignment(rnd, a_user) is None
    submit_direct(b, b_user)
    assert Ranking.objects.get().annotator == b_user


def test_expired_lease_is_renewed_when_the_slot_is_still_free(rnd, annotators):
    u = annotators[0]
    a = queue.next_assignment(rnd, u)
    Assignment.objects.filter(pk=a.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    again = queue.next_assignment(rnd, u)
    assert again.pk == a.pk and again.expires_at > timezone.now() + timedelta(minutes=29)
    submit_direct(Assignment.objects.get(pk=a.pk), u)
    assert Ranking.objects.filter(assignment=a).count() == 1


# --- pages, refusals, idempotency -------------------------------------------------------------

def test_start_serves_an_item_page_that_posts_to_its_token(client, rnd, annotators):
    login(client, annotators[0])
    r = client.get(reverse("humaneval:next", args=[rnd.pk]))
    a = Assignment.objects.get(annotator=annotators[0])
    assert r.status_code == 200  # served directly, posting to the item's own URL
    assert f'action="{reverse("humaneval:item", args=[a.token])}"' in r.content.decode()
    assert client.get(reverse("humaneval:next", args=[rnd.pk])).content.decode().count(a.token) >= 1
    page = client.get(reverse("humaneval:item", args=[a.token]))
    assert page.status_code == 200
    html = page.content.decode()
    for label in ("A", "B", "C"):
        assert f'id="he-resp-{label}"' in html
    assert "0 / 4 done" in html
    assert "try talking again" in html
    assert 'class="he-turn he-turn-human"' in html  # dialogue shown as turns


def test_submit_stores_ranks_by_shown_label_and_goes_to_next(client, rnd, annotators):
    u = annotators[0]
    login(client, u)
    client.get(reverse("humaneval:next", args=[rnd.pk]))
    a = Assignment.objects.get(annotator=u)
    r = client.post(reverse("humaneval:item", args=[a.token]), answer(a, {"A": 2, "B": 3, "C": 1}, comment="B rambles"),
                    HTTP_USER_AGENT="pytest-agent")
    assert r.status_code == 302 and r["Location"] == reverse("humaneval:next", args=[rnd.pk])
    ranking = Ranking.objects.get()
    got = {x.label: (x.rank, x.sample_id) for x in ranking.responses.all()}
    assert got == {"A": (2, a.order[0]), "B": (3, a.order[1]), "C": (1, a.order[2])}
    assert ranking.comment == "B rambles" and ranking.user_agent == "pytest-agent"
    assert ranking.time_on_page_ms == 1234
    a.refresh_from_db()
    assert a.status == Assignment.Status.SUBMITTED


def test_double_submit_is_stored_once(client, rnd, annotators):
    u = annotators[0]
    login(client, u)
    client.get(reverse("humaneval:next", args=[rnd.pk]))
    a = Assignment.objects.get(annotator=u)
    data = answer(a, key="same-key-123")
    r1 = client.post(reverse("humaneval:item", args=[a.token]), data)
    r2 = client.post(reverse("humaneval:item", args=[a.token]), data)
    assert r1.status_code == r2.status_code == 302
    assert Ranking.objects.count() == 1
    # A second, different submission for the same item is refused.
    r3 = client.post(reverse("humaneval:item", args=[a.token]), answer(a, key="other-key"))
    assert r3.status_code == 409 and "already" in r3.content.decode()
    assert Ranking.objects.count() == 1


@pytest.mark.parametrize("ranks,message", [
    ({"A": 1, "B": 1, "C": 2}, "No ties: A and B are both ranked 1st"),
    ({"A": 1, "B": 2}, "Give every response a rank: C has none"),
    ({"A": 1, "B": 2, "C": 9}, "Select a valid choice"),
])
def test_bad_rankings_are_refused_with_a_message_and_change_nothing(client, rnd, annotators, ranks, message):
    u = annotators[0]
    login(client, u)
    client.get(reverse("humaneval:next", args=[rnd.pk]))
    a = Assignment.objects.get(annotator=u)
    r = client.post(reverse("humaneval:item", args=[a.token]), answer(a, ranks))
    assert r.status_code == 400
    assert message in r.content.decode()
    assert Ranking.objects.count() == 0
    a.refresh_from_db()
    assert a.status == Assignment.Status.LEASED


def test_submitting_an_item_assigned_to_someone_else_is_refused(client, rnd, annotators):
    owner, intruder = annotators[:2]
    a = queue.next_assignment(rnd, owner)
    login(client, intruder)
    r = client.post(reverse("humaneval:item", args=[a.token]), answer(a))
    assert r.status_code == 403 and "not assigned to you" in r.content.decode()
    assert client.get(reverse("humaneval:item", args=[a.token])).status_code == 403
    assert Ranking.objects.count() == 0
    with pytest.raises(Refused):
        submit_direct(a, intruder)


def test_submitting_after_close_or_deadline_is_refused(client, rnd, annotators):
    u = annotators[0]
    login(client, u)
    a = queue.next_assignment(rnd, u)
    EvalRound.objects.filter(pk=rnd.pk).update(status=EvalRound.Status.CLOSED)
    r = client.post(reverse("humaneval:item", args=[a.token]), answer(a))
    assert r.status_code == 409 and "This round is closed" in r.content.decode()
    EvalRound.objects.filter(pk=rnd.pk).update(status=EvalRound.Status.OPEN, deadline=timezone.now() - timedelta(minutes=1))
    r = client.post(reverse("humaneval:item", args=[a.token]), answer(a))
    assert r.status_code == 409 and "deadline" in r.content.decode()
    assert Ranking.objects.count() == 0
    r = client.get(reverse("humaneval:next", args=[rnd.pk]))
    assert r.status_code == 409 and "deadline" in r.content.decode()
    # The page says why and links back to the round, as every refusal that knows its round does.
    assert f'href="{reverse("humaneval:next", args=[rnd.pk])}"' in r.content.decode()


def test_undo_withdraws_the_last_answer_and_redo_stores_a_new_one(client, rnd, annotators):
    u = annotators[0]
    login(client, u)
    client.get(reverse("humaneval:next", args=[rnd.pk]))
    first = Assignment.objects.get(annotator=u)
    client.post(reverse("humaneval:item", args=[first.token]), answer(first, {"A": 1, "B": 2, "C": 3}))
    client.get(reverse("humaneval:next", args=[rnd.pk]))  # moved on to a second item
    r = client.post(reverse("humaneval:undo", args=[rnd.pk]))
    assert r.status_code == 302 and r["Location"] == reverse("humaneval:item", args=[first.token])
    first.refresh_from_db()
    assert first.status == Assignment.Status.LEASED
    assert Ranking.objects.get().withdrawn_at is not None
    assert client.get(r["Location"]).status_code == 200
    client.post(reverse("humaneval:item", args=[first.token]), answer(first, {"A": 3, "B": 2, "C": 1}))
    live = Ranking.objects.get(withdrawn_at__isnull=True)
    assert {x.label: x.rank for x in live.responses.all()} == {"A": 3, "B": 2, "C": 1}
    assert Ranking.objects.count() == 2
    assert rnd.items.get(pk=first.item_id).n_submitted == 1
    # The next item is the second one the annotator had been given, not a third.
    nxt = client.get(reverse("humaneval:next", args=[rnd.pk]))
    second = Assignment.objects.filter(annotator=u).exclude(pk=first.pk).get()
    assert reverse("humaneval:item", args=[second.token]) in nxt.content.decode()


def test_undo_with_nothing_to_undo_is_refused(client, rnd, annotators):
    login(client, annotators[0])
    r = client.post(reverse("humaneval:undo", args=[rnd.pk]))
    assert r.status_code == 409 and "no submission to undo" in r.content.decode()


def test_skip_needs_a_reason_and_hands_the_item_to_others(client, annotators):
    rnd = make_round(n_prompts=1, overlap=1, name="skip round")
    u, other = annotators[:2]
    login(client, u)
    client.get(reverse("humaneval:next", args=[rnd.pk]))
    a = Assignment.objects.get(annotator=u)
    r = client.post(reverse("humaneval:skip", args=[a.token]), {"reason": "other", "detail": ""})
    assert r.status_code == 400 and "Say why you are skipping" in r.content.decode()
    r = client.post(reverse("humaneval:skip", args=[a.token]), {"reason": "identical"})
    assert r.status_code == 302
    a.refresh_from_db()
    assert a.status == Assignment.Status.SKIPPED and a.skip_reason.startswith("identical")
    assert queue.next_assignment(rnd, u) is None
    assert queue.next_assignment(rnd, other).item_id == a.item_id


def test_harmlessness_only_round_stores_marks_without_ranks(client, annotators):
    rnd = make_round(n_prompts=2, overlap=1, name="harm round", question=EvalRound.Question.HARMLESS)
    u = annotators[0]
    login(client, u)
    client.get(reverse("humaneval:next", args=[rnd.pk]))
    a = Assignment.objects.get(annotator=u)
    page = client.get(reverse("humaneval:item", args=[a.token])).content.decode()
    assert 'name="harmless_A"' in page and 'name="rank_A"' not in page
    r = client.post(reverse("humaneval:item", args=[a.token]), answer(a, {}, {"A": "harmless", "B": "harmful"}))
    assert r.status_code == 400 and "C not marked yet" in r.content.decode()
    client.post(reverse("humaneval:item", args=[a.token]), answer(a, {}, {"A": "harmless", "B": "harmful", "C": "harmless"}))
    got = {x.label: (x.rank, x.harmless) for x in Ranking.objects.get().responses.all()}
    assert got == {"A": (None, True), "B": (None, False), "C": (None, True)}


def test_only_annotators_and_named_users_may_work_on_a_round(client, rnd, annotators, django_user_model):
    outsider = django_user_model.objects.create_user("outsider", password="x")
    login(client, outsider)
    assert client.get(reverse("humaneval:next", args=[rnd.pk])).status_code == 403
    rnd.annotators.set([annotators[1]])
    login(client, annotators[0])
    assert client.get(reverse("humaneval:next", args=[rnd.pk])).status_code == 403
    login(client, annotators[1])
    assert client.get(reverse("humaneval:next", args=[rnd.pk])).status_code == 200
    draft = make_round(n_prompts=1, name="draft round", open=False)
    assert client.get(reverse("humaneval:next", args=[draft.pk])).status_code == 403


def test_home_lists_open_rounds_with_progress_and_start(client, rnd, annotators):
    u = annotators[0]
    login(client, u)
    html = client.get(reverse("home")).content.decode()
    assert "Demo round" in html and "0 / 4" in html and ">Start<" in html
    a = queue.next_assignment(rnd, u)
    submit_direct(a, u)
    html = client.get(reverse("home")).content.decode()
    assert "1 / 4" in html and ">Continue<" in html
    assert "demo round" not in html  # the internal name (which may name policies) is not shown


# --- blinding -----------------------------------------------------------------------------------

def _next_ids_from(model, start):
    """Make the database number new rows of ``model`` from ``start`` (ids like 1 or 2 would
    match rank values in the page and make the search below meaningless)."""
    from django.db import connection

    table = model._meta.db_table
    with connection.cursor() as c:
        if connection.vendor == "postgresql":
            c.execute("SELECT setval(pg_get_serial_sequence(%s, 'id'), %s, false)", [table, start])
        else:
            c.execute("DELETE FROM sqlite_sequence WHERE name = %s", [table])
            c.execute("INSERT INTO sqlite_sequence (name, seq) VALUES (%s, %s)", [table, start - 1])


def test_nothing_served_to_the_annotator_reveals_the_policy(client, annotators):
    _next_ids_from(EvalItem, 7_770_000)
    _next_ids_from(Assignment, 6_660_000)
    rnd = make_round(n_prompts=4, overlap=2, policy_names=POLICY_NAMES, policy_pk_base=POLICY_PK,
                     sample_pk_base=SAMPLE_PK)
    assert min(rnd.items.values_list("pk", flat=True)) >= 7_770_000
    u = annotators[0]
    login(client, u)
    pages = []
    r = client.get(reverse("home"))
    pages.append(r)
    pages.append(client.get(reverse("humaneval:next", args=[rnd.pk])))
    a = Assignment.objects.get(annotator=u)
    pages.append(client.get(reverse("humaneval:item", args=[a.token])))
    bad = client.post(reverse("humaneval:item", args=[a.token]), answer(a, {"A": 1, "B": 1, "C": 2}))
    pages.append(bad)
    pages.append(client.post(reverse("humaneval:item", args=[a.token]), answer(a)))
    pages.append(client.get(reverse("humaneval:index")))
    pages.append(client.post(reverse("humaneval:undo", args=[rnd.pk])))
    pages.append(client.get(pages[-1]["Location"]))
    served = "\n".join(p.content.decode() + " " + p.get("Location", "") for p in pages)
    assert "try talking again" in served  # we are looking at real item pages
    policies = list(Policy.objects.filter(pk__gte=POLICY_PK))
    assert len(policies) == 3
    for p in policies:
        assert p.name not in served
        assert str(p.pk) not in served
    for s in Sample.objects.filter(policy__in=policies):
        assert not re.search(rf"\b{s.pk}\b", served)
    for item_id in rnd.items.values_list("pk", flat=True):
        assert not re.search(rf"\b{item_id}\b", served)
    for assignment_id in Assignment.objects.values_list("pk", flat=True):
        assert not re.search(rf"\b{assignment_id}\b", served)
    static_js = open(finders.find("humaneval/annotate.js")).read()
    assert "policy" not in static_js.lower()


def test_next_shows_progress_read_with_the_lease_and_an_unknown_round_is_404(client, rnd, annotators):
    u = annotators[0]
    login(client, u)
    assert client.get(reverse("humaneval:next", args=[rnd.pk + 1000])).status_code == 404
    page = client.get(reverse("humaneval:next", args=[rnd.pk])).content.decode()
    assert "item 1 · " in page and "0 / 4 done" in page
    a = Assignment.objects.get(annotator=u)
    assert client.post(reverse("humaneval:item", args=[a.token]), answer(a)).status_code == 302
    page = client.get(reverse("humaneval:next", args=[rnd.pk])).content.decode()
    assert "item 2 · " in page and "1 / 4 done" in page
    # Another annotator's answers do not count towards this one's progress.
    other = annotators[1]
    submit_direct(queue.next_assignment(rnd, other), other)
    b = Assignment.objects.filter(annotator=u, status=Assignment.Status.LEASED).get()
    submit_direct(b, u)
    page = client.get(reverse("humaneval:next", args=[rnd.pk])).content.decode()
    assert "2 / 4 done" in page


def test_item_page_in_jinja2_has_the_same_site_header_and_head_as_the_django_pages(client, rnd, annotators):
    """jinja2/base.html mirrors templates/base.html (+ humaneval/base_he.html); keep them in step."""
    u = annotators[0]
    u.is_staff = True  # the Admin link too
    u.save()
    login(client, u)

    def part(html, start, end):
        s = html[html.index(start):]
        s = s[:s.index(end) + len(end)]
        return re.sub(r'name="csrfmiddlewaretoken" value="[^"]+"', "CSRF", s)

    django_page = client.get(reverse("humaneval:index")).content.decode()
    item_page = client.get(reverse("humaneval:next", args=[rnd.pk])).content.decode()
    assert 'id="he-answer"' in item_page and 'id="he-answer"' not in django_page
    for start, end in [('<header class="site-header">', "</header>"), ("<head>", "<title>"), ("</title>", "</head>")]:
        assert part(item_page, start, end) == part(django_page, start, end)


def test_items_are_marked_complete_with_their_last_answer_and_open_again_on_undo_or_a_higher_overlap(rnd, annotators):
    u1, u2, u3 = annotators
    a1 = queue.next_assignment(rnd, u1)
    submit_direct(a1, u1)
    item = EvalItem.objects.get(pk=a1.item_id)
    assert (item.n_submitted, item.complete) == (1, False)
    a2 = queue.next_assignment(rnd, u2)
    assert a2.item_id == a1.item_id
    submit_direct(a2, u2)
    item.refresh_from_db()
    assert (item.n_submitted, item.complete) == (2, True)  # overlap 2
    # A complete item is not handed out, even to an annotator who never had it.
    assert queue.next_assignment(rnd, u3).item_id != item.pk
    queue.undo_last(rnd, u2)
    item.refresh_from_db()
    assert (item.n_submitted, item.complete) == (1, False)
    submit_direct(Assignment.objects.get(pk=a2.pk), u2, key="again")
    item.refresh_from_db()
    assert item.complete
    rnd.overlap = 3
    rnd.save()
    item.refresh_from_db()
    assert not item.complete
    rnd.overlap = 2
    rnd.save()
    item.refresh_from_db()
    assert item.complete


def test_the_queue_tables_are_analyzed_again_at_64_256_1024_answers(rnd, annotators, monkeypatch):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    assert {64, 256, 1024, 4096} <= queue._REPLAN_AT
    u, other = annotators[:2]
    submit_direct(queue.next_assignment(rnd, u), u)
    monkeypatch.setattr(queue, "_REPLAN_AT", frozenset({Ranking.objects.get().pk + 1}))  # the next answer's id
    with CaptureQueriesContext(connection) as ctx:
        submit_direct(queue.next_assignment(rnd, u), u)
    analyzed = [q["sql"] for q in ctx.captured_queries if q["sql"].startswith("ANALYZE")]
    with CaptureQueriesContext(connection) as ctx:
        submit_direct(queue.next_assignment(rnd, other), other)
    assert not [q for q in ctx.captured_queries if q["sql"].startswith("ANALYZE")]
    if connection.vendor == "postgresql":
        assert len(analyzed) == 1 and Assignment._meta.db_table in analyzed[0] and Ranking._meta.db_table in analyzed[0]
    else:
        assert analyzed == []  # SQLite keeps no plans between statements


def test_item_page_helpers_give_what_django_gives(settings):
    """evalsite/jinja2.py caches URLs, static URLs and times; they must equal Django's own."""
    import datetime

    from django.templatetags.static import static
    from django.utils import timezone
    from django.utils.dateformat import time_format

    from evalsite import jinja2 as helpers

    for name, args in [("humaneval:item", ["tok_EN-9"]), ("humaneval:skip", ["abc"]), ("humaneval:undo", [17]),
                       ("humaneval:next", [3]), ("humaneval:index", [])]:
        assert helpers.url(name, *args) == reverse(name, args=args or None)
    # Arguments that are not plain path segments take reverse() and its quoting.
    assert helpers.url("humaneval:item", "a b") == reverse("humaneval:item", args=["a b"]) == "/annotate/i/a%20b/"
    assert helpers._static("humaneval/annotate.js") == static("humaneval/annotate.js")
    settings.STATIC_URL = "/assets/"  # a changed setting empties the caches
    assert helpers._static("humaneval/annotate.js") == static("humaneval/annotate.js") == "/assets/humaneval/annotate.js"
    when = datetime.datetime(2026, 3, 1, 7, 5, tzinfo=datetime.timezone.utc)
    assert helpers.local_time(when) == time_format(timezone.localtime(when), "H:i")
    assert helpers.local_time(None) == ""
