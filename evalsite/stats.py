"""Statistics core: win rates, ratings, harmless rates, labeler alignment, agreement.

Plain numpy/pandas/scipy/statsmodels; no Django. Every function takes arrays or DataFrames
and returns plain dicts/DataFrames, so the report pages, the admin and the benchmarks share it.
"""
import numpy as np
from statsmodels.stats.proportion import proportion_confint


def wilson_interval(successes, n, confidence=0.95):
    """Wilson score interval for a proportion; (nan, nan) when n == 0."""
    if n == 0:
        return (float("nan"), float("nan"))
    lo, hi = proportion_confint(successes, n, alpha=1 - confidence, method="wilson")
    return (float(lo), float(hi))


def labeler_alignment(p_first, human, confidence=0.95):
    """Accuracy of an AI labeler's argmax against human preferences (PAPER.md §4).

    ``p_first``: the labeler's probability that the first response is better (after position
    debiasing). ``human``: 'first' / 'second' / 'tie' / '' per pair. Human ties and pairs with no
    human label are left out and counted. A labeler that is exactly undecided (p = 0.5) gets half
    credit, as a random tie-break would in expectation.
    """
    p = np.asarray(p_first, dtype=float)
    h = np.asarray(human, dtype=object)
    if p.shape != h.shape:
        raise ValueError(f"p_first has {p.size} values but human has {h.size}")
    decided = (h == "first") | (h == "second")
    ties = int(np.sum(h == "tie"))
    unlabeled = int(p.size - decided.sum() - ties)
    p, h = p[decided], h[decided]
    credit = np.where(p == 0.5, 0.5, ((p > 0.5) & (h == "first")) | ((p < 0.5) & (h == "second")))
    n = int(p.size)
    correct = float(credit.sum())
    lo, hi = wilson_interval(correct, n, confidence)
    return {
        "accuracy": correct / n if n else float("nan"),
        "n": n,
        "ci_low": lo,
        "ci_high": hi,
        "ties_excluded": ties,
        "unlabeled_excluded": unlabeled,
    }


def position_bias(p_slot1_order1, p_slot1_order2):
    """Position-bias diagnostics of a labeler scored in both orders (PAPER.md §1).

    ``p_slot1_order1``: P(the response shown first is better) with the pair in its original
    order; ``p_slot1_order2``: the same with the responses swapped (still 'the one shown
    first'). Returns the share of pairs where the same *slot* wins in both orders (PAPER:
    PaLM 2 XS 56%) and the share of all single-order judgments that chose the first slot.
    """
    a = np.asarray(p_slot1_order1, dtype=float)
    b = np.asarray(p_slot1_order2, dtype=float)
    if a.shape != b.shape:
        raise ValueError("both orders need the same number of pairs")
    n = int(a.size)
    if n == 0:
        return {"n": 0, "same_position_pct": float("nan"), "first_slot_share": float("nan")}
    first1, first2 = a > 0.5, b > 0.5
    same = first1 == first2
    return {
        "n": n,
        "same_position_pct": 100.0 * float(same.mean()),
        "first_slot_share": float((first1.sum() + first2.sum()) / (2 * n)),
    }
