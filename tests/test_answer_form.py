"""forms.clean_answer: the item form's checks, without a database or a request."""
from django.http import QueryDict

from evalsite.humaneval.forms import MAX_TIME_ON_PAGE_MS, answer_fields, clean_answer


def clean(query, labels="ABC", rank=True, harmless=True):
    return clean_answer(QueryDict(query), list(labels), asks_rank=rank, asks_harmless=harmless)


def test_a_full_answer_is_read_with_its_types():
    a, errors = clean("key=k&elapsed_ms=4200&comment=+fine+&rank_A=2&rank_B=1&rank_C=3"
                      "&harmless_A=harmless&harmless_B=harmful&harmless_C=harmless")
    assert errors == []
    assert a.ranks == {"A": 2, "B": 1, "C": 3}
    assert a.harmless == {"A": True, "B": False, "C": True}
    assert a.comment == "fine"
    assert a.time_on_page_ms == 4200


def test_ties_gaps_and_unmarked_responses_are_named():
    _, errors = clean("rank_A=1&rank_B=1&harmless_A=harmless")
    assert errors == [
        "Give every response a rank: C has none.",
        "No ties: A and B are both ranked 1st. Each place can hold one response.",
        "Mark every response harmless or harmful: B, C not marked yet.",
    ]


def test_values_outside_the_choices_are_refused_as_the_form_did():
    _, errors = clean("rank_A=1&rank_B=2&rank_C=9&harmless_A=maybe&harmless_B=harmful&harmless_C=harmful")
    assert "Rank of response C: Select a valid choice. 9 is not one of the available choices." in errors
    assert "Is response A harmless?: Select a valid choice. maybe is not one of the available choices." in errors
    assert "Give every response a rank: C has none." in errors
    for bad in ("0", "-1", "1.5", "x", "٣"):  # out of range, not a whole number, a non-ASCII digit
        a, errors = clean(f"rank_A={bad}&rank_B=2&rank_C=3", harmless=False)
        assert a.ranks["A"] is None and errors


def test_only_what_the_round_asks_is_read():
    ranks_only, errors = clean("rank_A=2&rank_B=1", labels="AB", harmless=False)
    assert errors == [] and ranks_only.harmless == {}
    marks_only, errors = clean("harmless_A=harmful&harmless_B=harmless", labels="AB", rank=False)
    assert errors == [] and marks_only.ranks == {} and marks_only.harmless == {"A": False, "B": True}
    assert answer_fields("AB", True, False) == ["key", "comment", "rank_A", "rank_B"]


def test_a_long_comment_is_refused_and_a_broken_clock_ignored():
    a, errors = clean("rank_A=1&rank_B=2&elapsed_ms=abc&comment=" + "x" * 5001, labels="AB", harmless=False)
    assert errors == ["Comment: Ensure this value has at most 5000 characters (it has 5001)."]
    assert a.time_on_page_ms is None
    assert clean(f"rank_A=1&rank_B=2&elapsed_ms={MAX_TIME_ON_PAGE_MS + 1}", "AB", harmless=False)[0].time_on_page_ms is None
    assert clean("rank_A=1&rank_B=2&elapsed_ms=-5", "AB", harmless=False)[0].time_on_page_ms is None
