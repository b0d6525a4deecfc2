"""Human evaluation results as data frames (the contract reports and training code rely on).

Only live rankings count: an answer the annotator undid is kept in the database for the
audit trail but appears in neither frame.
"""
from itertools import combinations

import pandas as pd

from evalsite.humaneval.models import RankedResponse

RANKING_COLUMNS = [
    "round_id", "item_id", "prompt_id", "annotator_id", "ranking_id", "policy_id", "policy_name", "sample_id",
    "rank", "harmless", "response_chars", "response_tokens", "created_at",
]
PAIR_COLUMNS = [
    "round_id", "prompt_id", "annotator_id", "sample_a_id", "sample_b_id", "response_a", "response_b", "preference",
    # Beyond the contract, for convenience:
    "ranking_id", "item_id", "policy_a_id", "policy_b_id",
]


def _responses(round_ids=None, prompt_ids=None):
    qs = RankedResponse.objects.filter(ranking__withdrawn_at__isnull=True)
    if round_ids is not None:
        qs = qs.filter(ranking__round_id__in=list(round_ids))
    if prompt_ids is not None:
        qs = qs.filter(ranking__item__prompt_id__in=list(prompt_ids))
    return qs.order_by("ranking_id", "position")


def ranking_frame(round_ids=None):
    """One row per (submitted ranking, response); ``rank`` 1 = best, NaN in harmlessness-only rounds."""
    rows = list(_responses(round_ids).values_list(
        "ranking__round_id", "ranking__item_id", "ranking__item__prompt_id", "ranking__annotator_id", "ranking_id",
        "sample__policy_id", "sample__policy__name", "sample_id", "rank", "harmless", "sample__text",
        "sample__token_count", "ranking__created_at",
    ))
    if not rows:
        df = pd.DataFrame({c: pd.Series(dtype=object) for c in RANKING_COLUMNS})
        df["rank"] = df["rank"].astype(float)
        return df
    df = pd.DataFrame(rows, columns=RANKING_COLUMNS[:10] + ["text", "response_tokens", "created_at"])
    df["response_chars"] = df.pop("text").str.len()
    df["rank"] = pd.to_numeric(df["rank"], errors="coerce").astype(float)
    df["response_tokens"] = pd.to_numeric(df["response_tokens"], errors="coerce").astype(float)
    df["harmless"] = df["harmless"].astype(object).where(df["harmless"].notna(), None)
    return df[RANKING_COLUMNS].reset_index(drop=True)


def human_pair_preferences(round_ids=None, prompt_ids=None):
    """One row per pair of responses inside a ranking: k responses give k(k-1)/2 rows.

    ``response_a`` is the response with the smaller sample id; ``preference`` is 'first' when
    the annotator ranked it better, 'second' otherwise (rankings have no ties).
    """
    rows = _responses(round_ids, prompt_ids).filter(rank__isnull=False).values_list(
        "ranking_id", "ranking__round_id", "ranking__item_id", "ranking__item__prompt_id", "ranking__annotator_id",
        "sample_id", "sample__policy_id", "sample__text", "rank",
    )
    by_ranking = {}
    for ranking_id, round_id, item_id, prompt_id, annotator_id, sample_id, policy_id, text, rank in rows:
        head, members = by_ranking.setdefault(ranking_id, ((round_id, item_id, prompt_id, annotator_id), []))
        members.append((sample_id, policy_id, text, rank))
    out = []
    for ranking_id, ((round_id, item_id, prompt_id, annotator_id), members) in by_ranking.items():
        members.sort()
        for (sa, pa, ta, ra), (sb, pb, tb, rb) in combinations(members, 2):
            out.append((round_id, prompt_id, annotator_id, sa, sb, ta, tb, "first" if ra < rb else "second",
                        ranking_id, item_id, pa, pb))
    df = pd.DataFrame(out, columns=PAIR_COLUMNS)
    if df.empty:
        df = df.astype({c: object for c in PAIR_COLUMNS})
    return df


def win_counts(pairs):
    """Wins of each policy over each other in a pair frame: ``{(winner_policy_id, loser_policy_id): n}``."""
    counts = {}
    for pa, pb, pref in zip(pairs["policy_a_id"], pairs["policy_b_id"], pairs["preference"]):
        key = (pa, pb) if pref == "first" else (pb, pa)
        counts[key] = counts.get(key, 0) + 1
    return counts
