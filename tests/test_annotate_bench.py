"""bench/annotate measures faults: its annotators count a failed request and go on, and its
database check counts an item answered twice."""
import importlib.util
import queue as stdlib_queue
import time

import pytest
from django.conf import settings

from evalsite.humaneval import queue
from tests.humaneval_demo import make_annotators, make_round
from tests.scripted_annotator import session_for

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("annotate_bench", settings.BASE_DIR / "bench" / "annotate_bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_an_annotator_counts_a_failed_next_and_goes_on(bench, live_server, monkeypatch):
    (user,) = make_annotators(1, prefix="faulty")
    n_items = 5
    rnd = make_round(n_prompts=n_items, overlap=1, name="fault round")
    next_for, calls = queue.next_for, []

    def next_for_failing_once(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2:  # the second item's "next" fails: the server answers 500
            raise RuntimeError("fault injected by the test")
        return next_for(*args, **kwargs)

    monkeypatch.setattr(queue, "next_for", next_for_failing_once)
    results = stdlib_queue.Queue()
    started = time.time()
    retry_every = n_items  # the last submission is sent twice, as a retry
    bench.client_process(live_server.url, rnd.pk, [session_for(user)], 0, started + 60, retry_every, 0.0, results)
    result = results.get_nowait()

    # Counted, then every item answered after it, until the round ran out, which the benchmark
    # counts too (a round too small for the run).
    assert result["errors"] == ["next: HTTP 500", "ran out of items"]
    assert len(calls) == n_items + 2  # every item, the failed request and the "done" page
    assert len(result["next"]) == n_items + 2 and len(result["submit"]) == n_items + 1
    assert len(set(result["acknowledged"])) == n_items
    assert bench.ERROR_PAUSE_SECONDS <= time.time() - started < 30
    assert bench.check_database(rnd.pk, result["acknowledged"], overlap=1) == {
        "stored": n_items, "lost": 0, "doubled": 0, "over_overlap": 0, "unacknowledged": 0,
    }


def test_the_database_check_counts_an_item_answered_twice(bench):
    (user,) = make_annotators(1, prefix="twice")
    rnd = make_round(n_prompts=2, overlap=1, name="twice round")

    def answer(key):
        a = queue.next_assignment(rnd, user)
        queue.submit(a.token, user, ranks={label: i + 1 for i, label in enumerate(a.labels)},
                     harmless={}, key=key)

    answer("first")
    answer("second")
    assert bench.check_database(rnd.pk, ["first", "second"], overlap=1) == {
        "stored": 2, "lost": 0, "doubled": 0, "over_overlap": 0, "unacknowledged": 0,
    }
    # The second item answered again under a new id (the benchmark never withdraws an answer):
    # the acknowledged answer is gone, and the item was answered twice.
    queue.undo_last(rnd, user)
    answer("again")
    assert bench.check_database(rnd.pk, ["first", "second", "again"], overlap=1) == {
        "stored": 2, "lost": 1, "doubled": 1, "over_overlap": 0, "unacknowledged": 0,
    }
    # An answer whose acknowledgement never reached the client.
    assert bench.check_database(rnd.pk, ["first"], overlap=1)["unacknowledged"] == 1
