"""Many annotators at once against a live server on PostgreSQL: overlap holds, nothing lost or doubled."""
import threading
from collections import Counter

import pytest
from django.db import connection

from evalsite.humaneval.models import Assignment, Ranking
from tests.humaneval_demo import make_annotators, make_round
from tests.scripted_annotator import Annotator, session_for

pytestmark = pytest.mark.django_db(transaction=True)


def test_concurrent_annotators_never_exceed_overlap_and_every_submission_is_stored_once(live_server):
    if connection.vendor != "postgresql":
        pytest.skip("row locks (the point of this test) need PostgreSQL")
    n_annotators, n_items, overlap = 12, 15, 3
    users = make_annotators(n_annotators, prefix="conc")
    rnd = make_round(n_prompts=n_items, overlap=overlap, name="concurrency round")
    bots = [Annotator(live_server.url, session_for(u), rnd.pk, seed=i) for i, u in enumerate(users)]
    start = threading.Barrier(n_annotators)

    def work(bot, index):
        start.wait()
        while True:
            page = bot.next_item()
            if page is None:
                return
            data = bot.answer(page)
            if index % 3 == 0:
                # A double click: the same submission twice at the same moment.
                twice = [threading.Thread(target=bot.submit, args=(page, data)) for _ in range(2)]
                [t.start() for t in twice]
                [t.join() for t in twice]
            else:
                bot.submit(page, data)

    threads = [threading.Thread(target=work, args=(b, i)) for i, b in enumerate(bots)]
    [t.start() for t in threads]
    [t.join(timeout=240) for t in threads]
    assert not any(t.is_alive() for t in threads)

    live = Ranking.objects.filter(withdrawn_at__isnull=True)
    per_item = Counter(live.values_list("item_id", flat=True))
    assert max(per_item.values()) <= overlap
    assert sorted(per_item.values()) == [overlap] * n_items  # 12 annotators fill every slot
    acknowledged = {key for b in bots for _, key in b.acknowledged}
    stored = set(live.values_list("idempotency_key", flat=True))
    assert stored == acknowledged  # nothing lost, nothing extra
    assert live.count() == len(acknowledged) == n_items * overlap
    assert Counter(live.values_list("assignment_id", flat=True)).most_common(1)[0][1] == 1  # nothing doubled
    pairs = Counter(Assignment.objects.values_list("item_id", "annotator_id"))
    assert max(pairs.values()) == 1
    assert all(n == overlap for n in rnd.items.values_list("n_submitted", flat=True))
    # The duplicate halves of double clicks were answered as success, not as errors.
    assert not [e for b in bots for e in b.errors], [e for b in bots for e in b.errors][:5]


@pytest.mark.parametrize("other_key, outcome", [("k-other", "refused"), ("k-same", "duplicate")])
def test_a_submission_that_loses_a_race_after_reading_its_item_writes_nothing(other_key, outcome):
    """PostgreSQL submits an open lease with one statement, without locking it first. If another
    request submits the item between this one's read and its write (here: while its answer is
    being checked), the write must find the lease gone and store nothing; the locked path then
    answers as for any second submission: refused, or the first one's result for the same key."""
    from django.db import connections

    from evalsite.humaneval import queue
    from evalsite.humaneval.models import EvalItem

    if connection.vendor != "postgresql":
        pytest.skip("the one-statement submission is PostgreSQL's")
    (u,) = make_annotators(1, prefix="race")
    rnd = make_round(n_prompts=2, overlap=1, name="race round")
    a = queue.next_assignment(rnd, u)
    ranks = {label: i + 1 for i, label in enumerate(a.labels)}
    marks = {label: True for label in a.labels}
    calls = []

    def read_answer(assignment):
        calls.append(assignment.status)
        if len(calls) == 1:  # the first read, before the one-statement write: another request wins
            def other():
                try:
                    queue.submit(a.token, u, ranks=ranks, harmless=marks, key=other_key.replace("same", "mine"))
                finally:
                    connections.close_all()
            t = threading.Thread(target=other)
            t.start()
            t.join()
        return queue.Answer(ranks, marks)

    if outcome == "refused":
        # The locked path's words; a write that went ahead would have met the one-live-ranking
        # constraint instead ("This item was already submitted").
        with pytest.raises(queue.Refused, match="You already submitted this item"):
            queue.submit_answer(a.token, u, read_answer, key="k-mine")
    else:
        result = queue.submit_answer(a.token, u, read_answer, key="k-mine")
        assert result.duplicate and result.ranking.idempotency_key == "k-mine"
    assert calls == [Assignment.Status.LEASED]  # the locked path saw it submitted and read no answer
    assert Ranking.objects.count() == 1
    assert EvalItem.objects.get(pk=a.item_id).n_submitted == 1
    assert Assignment.objects.get(pk=a.pk).status == Assignment.Status.SUBMITTED
