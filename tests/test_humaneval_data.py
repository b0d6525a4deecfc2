"""The data contract: ranking_frame and human_pair_preferences."""
import pytest

from evalsite.humaneval import queue
from evalsite.humaneval.data import human_pair_preferences, ranking_frame, win_counts
from evalsite.humaneval.models import EvalRound
from evalsite.models import Sample
from tests.humaneval_demo import make_annotators, make_round

pytestmark = pytest.mark.django_db


def rank_by_policy(a, user, order_of_policies, harmless_of_policy=None, key=None):
    """Submit ranks given as policy names best-first (the test knows what the annotator did not)."""
    name_of = {s.pk: s.policy.name for s in Sample.objects.filter(pk__in=a.order).select_related("policy")}
    ranks, harmless = {}, {}
    for label, sid in zip(a.labels, a.order):
        ranks[label] = order_of_policies.index(name_of[sid]) + 1
        if harmless_of_policy:
            harmless[label] = harmless_of_policy[name_of[sid]]
    return queue.submit(a.token, user, ranks=ranks, harmless=harmless, key=key or f"k{a.pk}")


def test_ranking_frame_has_one_row_per_ranked_response_with_policy_and_lengths():
    u1, u2 = make_annotators(2)
    rnd = make_round(n_prompts=1, overlap=2, policy_names=("sft", "rlhf", "rlaif"), question=EvalRound.Question.BOTH)
    a1 = queue.next_assignment(rnd, u1)
    rank_by_policy(a1, u1, ["rlaif", "rlhf", "sft"], {"sft": False, "rlhf": True, "rlaif": True})
    a2 = queue.next_assignment(rnd, u2)
    rank_by_policy(a2, u2, ["rlhf", "rlaif", "sft"], {"sft": True, "rlhf": True, "rlaif": True})
    df = ranking_frame()
    assert list(df.columns) == [
        "round_id", "item_id", "prompt_id", "annotator_id", "ranking_id", "policy_id", "policy_name", "sample_id",
        "rank", "harmless", "response_chars", "response_tokens", "created_at",
    ]
    assert len(df) == 6
    mine = df[df.annotator_id == u1.pk].set_index("policy_name")
    assert mine.loc["rlaif", "rank"] == 1.0 and mine.loc["rlhf", "rank"] == 2.0 and mine.loc["sft", "rank"] == 3.0
    assert mine.loc["sft", "harmless"] is False and mine.loc["rlaif", "harmless"] is True
    s = Sample.objects.get(policy__name="rlhf")
    assert mine.loc["rlhf", "sample_id"] == s.pk
    assert mine.loc["rlhf", "response_chars"] == len(s.text) and mine.loc["rlhf", "response_tokens"] == 20.0
    assert set(df.round_id) == {rnd.pk} and df.prompt_id.nunique() == 1
    assert ranking_frame(round_ids=[rnd.pk + 1000]).empty


def test_harmless_only_rounds_have_nan_ranks_and_no_pairs():
    (u,) = make_annotators(1)
    rnd = make_round(n_prompts=1, overlap=1, policy_names=("x1", "x2"), question=EvalRound.Question.HARMLESS)
    a = queue.next_assignment(rnd, u)
    queue.submit(a.token, u, ranks={}, harmless={"A": True, "B": False}, key="h1")
    df = ranking_frame([rnd.pk])
    assert df["rank"].isna().all() and len(df) == 2
    assert sorted(df.harmless.tolist()) == [False, True]
    assert human_pair_preferences([rnd.pk]).empty


def test_pair_preferences_expand_each_ranking_into_all_pairs_and_skip_undone_answers():
    u1, u2 = make_annotators(2)
    rnd = make_round(n_prompts=2, overlap=2, policy_names=("sft", "rlhf", "rlaif"))
    for u in (u1, u2):
        for _ in range(2):
            a = queue.next_assignment(rnd, u)
            rank_by_policy(a, u, ["rlaif", "sft", "rlhf"], key=f"{u.pk}-{a.pk}")
    # u2 undoes the last answer and redoes it differently: only the new one counts.
    undone = queue.undo_last(rnd, u2)
    rank_by_policy(undone, u2, ["sft", "rlhf", "rlaif"], key="redo")
    pairs = human_pair_preferences()
    assert len(pairs) == 4 * 3  # 4 rankings × 3 pairs
    assert (pairs.sample_a_id < pairs.sample_b_id).all()
    name = {s.pk: s.policy.name for s in Sample.objects.select_related("policy")}
    text = {s.pk: s.text for s in Sample.objects.all()}
    for row in pairs.itertuples():
        assert row.response_a == text[row.sample_a_id] and row.response_b == text[row.sample_b_id]
    wins = {}
    for row in pairs.itertuples():
        a, b = name[row.sample_a_id], name[row.sample_b_id]
        winner, loser = (a, b) if row.preference == "first" else (b, a)
        wins[(winner, loser)] = wins.get((winner, loser), 0) + 1
    # Three rankings say rlaif > sft > rlhf; the redone one says sft > rlhf > rlaif.
    assert wins == {("rlaif", "sft"): 3, ("rlaif", "rlhf"): 3, ("sft", "rlhf"): 4, ("sft", "rlaif"): 1,
                    ("rlhf", "rlaif"): 1}
    counts = win_counts(pairs)
    assert sum(counts.values()) == 12
    only = human_pair_preferences(prompt_ids=[undone.item.prompt_id])
    assert len(only) == 2 * 3 and set(only.prompt_id) == {undone.item.prompt_id}
    assert len(human_pair_preferences(round_ids=[rnd.pk + 1000])) == 0
