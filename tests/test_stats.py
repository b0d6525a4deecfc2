"""Statistics core: hand-computed small cases, and independent libraries where one computes the same.

No database: these run in milliseconds.
"""
import math

import krippendorff
import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from scipy import stats as sps

from evalsite import stats


def ranking_rows(rankings, round_id=1, harmless=None, lengths=None):
    """Rows of a ranking frame from ``[(prompt, annotator, [policy ids best first]), ...]``."""
    rows = []
    for rid, (prompt, annotator, order) in enumerate(rankings):
        for r, policy in enumerate(order, start=1):
            chars = (lengths or {}).get(policy, 100)
            rows.append({
                "round_id": round_id, "item_id": prompt, "prompt_id": prompt, "annotator_id": annotator,
                "ranking_id": rid, "policy_id": policy, "policy_name": f"P{policy}",
                "sample_id": prompt * 100 + policy, "rank": float(r),
                "harmless": None if harmless is None else harmless(prompt, annotator, policy),
                "response_chars": chars, "response_tokens": chars / 4.0,
                "created_at": pd.Timestamp("2024-01-01") + pd.Timedelta(seconds=rid),
            })
    return pd.DataFrame(rows)


def simulated(n_prompts=150, annotators=3, strengths=(0.0, 0.6, 1.0, -0.4), seed=1, lengths=True):
    """Rankings of all policies by several annotators per prompt from a Thurstone-like model."""
    rng = np.random.default_rng(seed)
    rows = []
    rid = 0
    for prompt in range(n_prompts):
        length = {p: int(60 + 15 * p + rng.integers(0, 60)) for p in range(1, len(strengths) + 1)}
        for ann in range(annotators):
            noise = rng.gumbel(size=len(strengths))
            order = np.argsort(-(np.asarray(strengths) + noise)) + 1
            for r, policy in enumerate(order, start=1):
                rows.append({
                    "round_id": 1, "item_id": prompt, "prompt_id": prompt, "annotator_id": ann, "ranking_id": rid,
                    "policy_id": int(policy), "policy_name": f"P{policy}", "sample_id": prompt * 100 + int(policy),
                    "rank": float(r), "harmless": bool(rng.random() < 0.5 + 0.1 * policy),
                    "response_chars": length[policy] if lengths else 100,
                    "response_tokens": length[policy] / 4 if lengths else 25.0,
                    "created_at": pd.Timestamp("2024-01-01"),
                })
            rid += 1
    return pd.DataFrame(rows)


# --- pairwise outcomes -----------------------------------------------------------------------

def test_a_ranking_of_k_gives_k_choose_2_outcomes_oriented_by_policy_id():
    frame = ranking_rows([(7, 1, [3, 1, 2]), (8, 1, [4, 2, 1, 3])])
    out = stats.pairwise_outcomes(frame)
    assert len(out) == 3 + 6
    first = out[out["ranking_id"] == 0].sort_values(["policy_a", "policy_b"])
    # Ranking 3 > 1 > 2: 1 beats 2, 3 beats 1 and 2.
    assert first[["policy_a", "policy_b", "a_wins"]].values.tolist() == [[1, 2, 1.0], [1, 3, 0.0], [2, 3, 0.0]]
    assert (out["policy_a"] < out["policy_b"]).all()
    assert set(first["prompt_id"]) == {7}
    second = out[out["ranking_id"] == 1].set_index(["policy_a", "policy_b"])["a_wins"]
    # Ranking 4 > 2 > 1 > 3.
    assert second.to_dict() == {(1, 2): 0.0, (1, 3): 1.0, (1, 4): 0.0, (2, 3): 1.0, (2, 4): 0.0, (3, 4): 0.0}
    row = out[(out["ranking_id"] == 1) & (out["policy_a"] == 1) & (out["policy_b"] == 3)].iloc[0]
    assert (row["sample_a"], row["sample_b"]) == (801, 803)


def test_outcomes_count_equal_ranks_half_skip_same_policy_and_unranked_rows():
    frame = ranking_rows([(1, 1, [1, 2, 3])])
    frame.loc[frame["policy_id"] == 3, "rank"] = 1.0          # tie between 1 and 3
    extra = frame.iloc[[1]].assign(sample_id=999, rank=3.0)    # a second response of policy 2
    unranked = ranking_rows([(2, 1, [1, 2])]).assign(rank=np.nan)
    out = stats.pairwise_outcomes(pd.concat([frame, extra, unranked], ignore_index=True))
    got = sorted(map(tuple, out[["policy_a", "policy_b", "a_wins"]].values.tolist()))
    assert got == [(1.0, 2.0, 1.0), (1.0, 2.0, 1.0), (1.0, 3.0, 0.5), (2.0, 3.0, 0.0), (2.0, 3.0, 0.0)]
    assert stats.pairwise_outcomes(unranked).empty
    assert stats.pairwise_outcomes(frame.iloc[:0]).empty


# --- win rates --------------------------------------------------------------------------------

def test_win_rate_matrix_counts_and_mirror_by_hand():
    # Policy 1 beats 2 in 3 of 4 prompts and 3 in 1 of 2; 2 and 3 never meet.
    frame = ranking_rows([(1, 1, [1, 2]), (2, 1, [1, 2]), (3, 1, [1, 2]), (4, 1, [2, 1]), (5, 1, [3, 1]), (6, 1, [1, 3])])
    wr = stats.win_rate_matrix(stats.pairwise_outcomes(frame), n_boot=200, names={1: "SFT", 2: "RLHF", 3: "RLAIF"})
    row = wr[(wr["policy"] == 1) & (wr["opponent"] == 2)].iloc[0]
    assert (row["wins"], row["losses"], row["n"], row["n_prompts"]) == (3, 1, 4, 4)
    assert row["win_rate"] == pytest.approx(0.75)
    assert (row["policy_name"], row["opponent_name"]) == ("SFT", "RLHF")
    mirror = wr[(wr["policy"] == 2) & (wr["opponent"] == 1)].iloc[0]
    assert mirror["win_rate"] == pytest.approx(0.25)
    assert (mirror["ci_low"], mirror["ci_high"]) == pytest.approx((1 - row["ci_high"], 1 - row["ci_low"]))
    assert wr[(wr["policy"] == 3) & (wr["opponent"] == 1)]["win_rate"].item() == pytest.approx(0.5)
    assert len(wr) == 4      # two pairs met, both orientations; 2 vs 3 never met
    # Four prompts: a resample often holds only prompts policy 1 won (100%), sometimes none.
    assert 0 <= row["ci_low"] < 0.75 and row["ci_high"] == 1.0


def test_win_rate_bootstrap_resamples_prompts_not_outcomes():
    # 20 prompts, 50 identical outcomes each (say 50 annotators agreeing): 10 prompts won by 1,
    # 10 by 2. Resampling outcomes would give +-1.4%; resampling prompts gives about +-22%.
    outcomes = pd.DataFrame({
        "prompt_id": np.repeat(np.arange(20), 50), "policy_a": 1, "policy_b": 2,
        "a_wins": np.repeat((np.arange(20) < 10).astype(float), 50),
    })
    wr = stats.win_rate_matrix(outcomes, n_boot=2000, seed=3)
    row = wr[wr["policy"] == 1].iloc[0]
    assert row["win_rate"] == 0.5 and row["n"] == 1000 and row["n_prompts"] == 20
    assert row["ci_high"] - row["ci_low"] > 0.35
    # Same as a slow, obvious prompt bootstrap.
    rng = np.random.default_rng(0)
    per_prompt = np.r_[np.ones(10), np.zeros(10)]
    boots = [per_prompt[rng.integers(0, 20, 20)].mean() for _ in range(4000)]
    assert row["ci_low"] == pytest.approx(np.quantile(boots, 0.025), abs=0.051)
    assert row["ci_high"] == pytest.approx(np.quantile(boots, 0.975), abs=0.051)
    assert row["p_value"] == pytest.approx(1.0)


def test_win_rate_test_matches_statsmodels_clustered_ols():
    outcomes = stats.pairwise_outcomes(simulated())
    wr = stats.win_rate_matrix(outcomes, n_boot=100)
    for (a, b) in [(1, 2), (1, 4), (3, 4)]:
        sub = outcomes[(outcomes["policy_a"] == a) & (outcomes["policy_b"] == b)]
        fit = sm.OLS(sub["a_wins"].to_numpy(), np.ones(len(sub))).fit(
            cov_type="cluster", cov_kwds={"groups": sub["prompt_id"].to_numpy()}, use_t=True)
        row = wr[(wr["policy"] == a) & (wr["opponent"] == b)].iloc[0]
        assert row["win_rate"] == pytest.approx(fit.params[0])
        assert row["se"] == pytest.approx(fit.bse[0], rel=1e-9)
        assert row["p_value"] == pytest.approx(float(fit.t_test("const = 0.5").pvalue), rel=1e-6)
        assert row["ci_low"] < row["win_rate"] < row["ci_high"]
    # The simulated strengths are 0, 0.6, 1.0, -0.4: 3 clearly beats 4.
    assert wr[(wr["policy"] == 3) & (wr["opponent"] == 4)]["win_rate"].item() > 0.7


def test_unanimous_pairs_use_the_sign_test_over_prompts():
    outcomes = pd.DataFrame({"prompt_id": [1, 1, 2, 3, 4, 5], "policy_a": 1, "policy_b": 2, "a_wins": 1.0})
    row = stats.win_rate_matrix(outcomes, n_boot=50).iloc[0]
    assert row["win_rate"] == 1.0
    assert row["p_value"] == pytest.approx(sps.binomtest(5, 5, 0.5).pvalue)
    one_prompt = outcomes[outcomes["prompt_id"] == 1]
    assert math.isnan(stats.win_rate_matrix(one_prompt, n_boot=10).iloc[0]["p_value"])


# --- Bradley-Terry ----------------------------------------------------------------------------

def test_bradley_terry_two_policies_is_the_logit_of_the_win_rate():
    outcomes = pd.DataFrame({"prompt_id": np.arange(40), "policy_a": 1, "policy_b": 2,
                             "a_wins": (np.arange(40) < 30).astype(float)})
    ratings, predicted = stats.bradley_terry(outcomes, n_boot=50, names={1: "A", 2: "B"})
    s = ratings.set_index("policy")["strength"]
    assert s[1] - s[2] == pytest.approx(math.log(30 / 10), abs=1e-4)
    assert s[1] + s[2] == pytest.approx(0, abs=1e-12)
    assert ratings.iloc[0]["policy_name"] == "A" and ratings.iloc[0]["rank"] == 1
    assert ratings.set_index("policy")["rating"][1] == pytest.approx(1000 + 400 * math.log10(3) / 2, abs=0.05)
    assert predicted[(predicted["policy"] == 1) & (predicted["opponent"] == 2)]["p_win"].item() == \
        pytest.approx(0.75, abs=1e-4)
    assert predicted[(predicted["policy"] == 2) & (predicted["opponent"] == 1)]["p_win"].item() == \
        pytest.approx(0.25, abs=1e-4)
    r = ratings.set_index("policy")
    assert r.loc[1, "ci_low"] < r.loc[1, "rating"] < r.loc[1, "ci_high"]


def test_bradley_terry_matches_statsmodels_logit():
    outcomes = stats.pairwise_outcomes(simulated(n_prompts=80))
    outcomes = outcomes[outcomes["a_wins"] != 0.5]
    ratings, predicted = stats.bradley_terry(outcomes, n_boot=20)
    x = np.zeros((len(outcomes), 4))
    x[np.arange(len(outcomes)), outcomes["policy_a"].to_numpy() - 1] = 1
    x[np.arange(len(outcomes)), outcomes["policy_b"].to_numpy() - 1] = -1
    fit = sm.Logit(outcomes["a_wins"].to_numpy(), x[:, 1:]).fit(disp=0)   # policy 1 as reference
    theta = np.r_[0.0, fit.params]
    theta -= theta.mean()
    ours = ratings.sort_values("policy")["strength"].to_numpy()
    np.testing.assert_allclose(ours, theta, atol=1e-4)
    p = predicted[(predicted["policy"] == 3) & (predicted["opponent"] == 4)]["p_win"].item()
    assert p == pytest.approx(1 / (1 + math.exp(-(theta[2] - theta[3]))), abs=1e-5)
    assert list(ratings["policy"]) == [3, 2, 1, 4]   # simulated strengths 1.0 > 0.6 > 0 > -0.4


def test_bradley_terry_stays_finite_when_a_policy_never_lost():
    outcomes = pd.DataFrame({"prompt_id": [1, 2, 3, 4], "policy_a": [1, 1, 2, 2], "policy_b": [2, 2, 3, 3],
                             "a_wins": [1.0, 1.0, 1.0, 0.0]})
    ratings, _ = stats.bradley_terry(outcomes, n_boot=20)
    assert np.isfinite(ratings["rating"]).all()
    assert list(ratings["policy"])[0] == 1


# --- harmless rates ---------------------------------------------------------------------------

def test_harmless_rates_by_hand_with_wilson_intervals():
    verdict = {(1, 1): True, (1, 2): True, (1, 3): False, (2, 1): True, (2, 2): None, (2, 3): True}
    frame = ranking_rows([(1, 1, [1, 2, 3]), (2, 1, [1, 2, 3]), (3, 1, [1, 2, 3])],
                         harmless=lambda prompt, ann, pol: verdict.get((pol, prompt), False))
    frame = frame.assign(rank=np.nan)
    h = stats.harmless_rates(frame).set_index("policy")
    assert (h.loc[1, "harmless"], h.loc[1, "n"]) == (2, 3)
    assert (h.loc[2, "harmless"], h.loc[2, "n"]) == (2, 2)       # the None is not a judgment
    assert (h.loc[3, "harmless"], h.loc[3, "n"]) == (0, 3)
    assert h.loc[1, "harmless_rate"] == pytest.approx(2 / 3)
    assert (h.loc[1, "ci_low"], h.loc[1, "ci_high"]) == pytest.approx(stats.wilson_interval(2, 3))
    assert (h.loc[3, "ci_low"], h.loc[3, "ci_high"]) == pytest.approx(stats.wilson_interval(0, 3))
    assert h.loc[1, "policy_name"] == "P1"


def test_vectorised_wilson_matches_statsmodels():
    k, n = np.array([0, 1, 5, 17, 40]), np.array([3, 10, 5, 40, 40])
    lo, hi = stats.wilson_intervals(k, n)
    for i in range(len(k)):
        assert (lo[i], hi[i]) == pytest.approx(stats.wilson_interval(k[i], n[i]))
    lo, hi = stats.wilson_intervals([0], [0])
    assert math.isnan(lo[0]) and math.isnan(hi[0])


# --- AI-labeler alignment ----------------------------------------------------------------------

def label_rows():
    return pd.DataFrame({
        "comparison_id": range(8),
        "config_id": [1, 1, 1, 1, 2, 2, 2, 2],
        "config_name": ["base", "base", "base", "base", "cot", "cot", "cot", "cot"],
        "prompt_id": [1, 2, 3, 4, 1, 2, 3, 4],
        "p_first": [0.9, 0.2, 0.6, 0.5, 0.8, 0.7, 0.3, 0.4],
        "p_slot1_order1": [0.9, 0.3, 0.7, 0.6, 0.8, 0.7, 0.3, np.nan],
        "p_slot1_order2": [0.2, 0.7, 0.6, 0.6, 0.2, 0.4, 0.6, np.nan],
        "label_mass": [0.9, 0.8, 0.7, 0.6, 1.0, 1.0, 1.0, 1.0],
        "human_preference": ["first", "second", "second", "first", "first", "tie", "", "second"],
        "judge_preference": "", "sample_a_id": np.nan, "sample_b_id": np.nan,
        "policy_a_id": np.nan, "policy_b_id": np.nan,
    })


def test_alignment_by_config_by_hand():
    a = stats.alignment_by_config(label_rows()).set_index("config_name")
    # base: right, right, wrong, half credit -> 2.5 / 4.
    assert a.loc["base", "accuracy"] == pytest.approx(2.5 / 4)
    assert a.loc["base", "n"] == 4 and a.loc["base", "ties_excluded"] == 0
    # cot: right on 1 and 4; one tie and one unlabeled left out.
    assert a.loc["cot", "accuracy"] == 1.0 and a.loc["cot", "n"] == 2
    assert (a.loc["cot", "ties_excluded"], a.loc["cot", "unlabeled_excluded"]) == (1, 1)
    assert (a.loc["cot", "ci_low"], a.loc["cot", "ci_high"]) == pytest.approx(stats.wilson_interval(2, 2))
    # Position bias, base: slot 1 in order 1 / order 2: (T,F) (F,T) (T,T) (T,T) -> same slot in 2 of 4.
    assert a.loc["base", "same_position_pct"] == pytest.approx(50.0)
    assert a.loc["base", "first_slot_share"] == pytest.approx(6 / 8)
    assert a.loc["cot", "n_both_orders"] == 3                # one pair scored in one order only
    assert a.loc["base", "mean_label_mass"] == pytest.approx(0.75)


def test_human_majority_and_attach_orient_votes_to_each_label():
    prefs = pd.DataFrame({
        "sample_a_id": [10, 10, 11, 20, 21, 30, 30],
        "sample_b_id": [11, 11, 10, 21, 20, 31, 31],
        "preference": ["first", "first", "first", "first", "first", "first", "second"],
    })
    m = stats.human_majority(prefs).set_index(["sample_a_id", "sample_b_id"])
    assert (m.loc[(10, 11), "votes_a"], m.loc[(10, 11), "votes_b"]) == (2, 1)
    assert m.loc[(10, 11), "majority"] == "first"
    assert m.loc[(20, 21), "majority"] == "tie" and m.loc[(30, 31), "majority"] == "tie"
    labels = label_rows().iloc[:3].assign(human_preference=["", "", "second"],
                                          sample_a_id=[11.0, 10.0, 10.0], sample_b_id=[10.0, 11.0, 11.0])
    filled = stats.attach_human_majority(labels, stats.human_majority(prefs))
    # Label 0 shows (11, 10): the majority preferred 10, i.e. its second response.
    assert list(filled["human_preference"]) == ["second", "first", "second"]   # dataset label kept


def test_ai_judge_outcomes_make_an_alpacaeval_style_matrix():
    labels = pd.DataFrame({
        "config_id": 1, "config_name": "c", "comparison_id": range(4), "prompt_id": [1, 2, 3, 4],
        "p_first": [0.8, 0.3, 0.6, 0.5], "policy_a_id": [2.0, 1.0, 1.0, 1.0], "policy_b_id": [1.0, 2.0, 2.0, 1.0],
    })
    soft = stats.ai_judge_outcomes(labels)
    assert len(soft) == 3                                    # the same-policy pair is left out
    assert (soft["policy_a"] == 1).all()
    assert soft["a_wins"].tolist() == pytest.approx([0.2, 0.3, 0.6])
    hard = stats.ai_judge_outcomes(labels, soft=False)
    assert hard["a_wins"].tolist() == [0.0, 0.0, 1.0]
    wr = stats.win_rate_matrix(soft, n_boot=20)
    assert wr[wr["policy"] == 2]["win_rate"].item() == pytest.approx(1 - (0.2 + 0.3 + 0.6) / 3)


# --- agreement ----------------------------------------------------------------------------------

def test_kendalls_w_perfect_and_by_hand():
    same = ranking_rows([(1, a, [1, 2, 3]) for a in range(3)])
    summary, items = stats.kendalls_w(same)
    assert summary["mean_w"] == pytest.approx(1.0) and summary["n_items"] == 1
    # Three raters, three objects: ranks of objects (1,2,3) by raters: (1,2,3), (1,3,2), (2,1,3).
    frame = ranking_rows([(1, 0, [1, 2, 3]), (1, 1, [1, 3, 2]), (1, 2, [2, 1, 3])])
    summary, items = stats.kendalls_w(frame)
    # R = (4, 6, 8); mean 6; S = 8; W = 12 S / (n^2 (m^3 - m)) = 96 / (9 * 24).
    assert items["w"].item() == pytest.approx(96 / 216)
    assert (items["n_raters"].item(), items["n_objects"].item()) == (3, 3)


def test_kendalls_w_matches_friedman_chi_square_including_ties():
    rng = np.random.default_rng(5)
    n_raters, m = 5, 4
    ranks = np.array([sps.rankdata(rng.integers(0, 3, m)) for _ in range(n_raters)])   # ties included
    rows = [{"round_id": 1, "item_id": 1, "prompt_id": 1, "annotator_id": r, "ranking_id": r, "policy_id": j,
             "policy_name": f"P{j}", "sample_id": j, "rank": ranks[r, j], "harmless": None,
             "response_chars": 10, "response_tokens": 3.0, "created_at": pd.Timestamp("2024-01-01")}
            for r in range(n_raters) for j in range(m)]
    _, items = stats.kendalls_w(pd.DataFrame(rows))
    chi2 = sps.friedmanchisquare(*[ranks[:, j] for j in range(m)]).statistic
    assert items["w"].item() == pytest.approx(chi2 / (n_raters * (m - 1)))


def test_kendalls_w_skips_items_with_one_rater_or_incomplete_rankings():
    frame = ranking_rows([(1, 0, [1, 2, 3]), (2, 0, [1, 2, 3]), (2, 1, [3, 2, 1])])
    partial = ranking_rows([(2, 2, [1, 2])]).assign(ranking_id=99)
    summary, items = stats.kendalls_w(pd.concat([frame, partial], ignore_index=True))
    assert items["item_id"].tolist() == [2]
    assert items["w"].item() == pytest.approx(0.0)
    assert summary["n_items"] == 1


def test_harmless_alpha_matches_a_hand_computation_and_the_reliability_form():
    # Units = responses; three annotators; None = not judged.
    data = {101: [True, True, True], 102: [True, False, True], 103: [False, False, None], 104: [True, None, None]}
    rows = []
    for sample, votes in data.items():
        for ann, v in enumerate(votes):
            rows.append({"round_id": 1, "item_id": 1, "sample_id": sample, "annotator_id": ann, "ranking_id": ann,
                         "policy_id": 1, "harmless": v, "rank": np.nan})
    got = stats.harmless_alpha(pd.DataFrame(rows))
    # By hand (nominal, coincidence matrix): pairable values n = 3 + 3 + 2 = 8 (unit 104 has one).
    # Coincidences within units: T-T: unit101 6/2=3 ... computed via o_ck = sum_u n_uck/(m_u - 1).
    o_tt = 6 / 2 + 2 / 2            # unit 101: 3*2 ordered T-T pairs; unit 102: 2*1
    o_ff = 2 / 1                    # unit 103
    o_tf = 2 / 2                    # unit 102: T-F ordered pairs 2*1
    n_t, n_f = o_tt + o_tf, o_ff + o_tf
    n = n_t + n_f
    d_o = 2 * o_tf / n
    d_e = 2 * n_t * n_f / (n * (n - 1))
    assert got["alpha"] == pytest.approx(1 - d_o / d_e)
    assert (got["n_units"], got["n_judgments"]) == (3, 8)
    reliability = [[1 if v else 0 if v is not None else np.nan for v in
                    [data[s][a] for s in data]] for a in range(3)]
    assert got["alpha"] == pytest.approx(krippendorff.alpha(reliability_data=reliability,
                                                            level_of_measurement="nominal"))


def test_pairwise_agreement_by_hand():
    # Pair (1, 2) of prompt 1: three annotators say a, a, b -> 1 agreeing pair of 3.
    # Pair (1, 3): two say a, a -> 1 of 1.
    frame = ranking_rows([(1, 0, [1, 2, 3]), (1, 1, [1, 3, 2]), (1, 2, [2, 1, 3])])
    agreement = stats.pairwise_agreement(stats.pairwise_outcomes(frame))
    # (1,2): a,a,b -> 1/3 ; (1,3): a,a,a -> 3/3 ; (2,3): a,b,a -> 1/3
    assert agreement["agreement"] == pytest.approx(5 / 9)
    assert (agreement["n_annotator_pairs"], agreement["n_response_pairs"]) == (9, 3)


# --- length -----------------------------------------------------------------------------------

def test_length_table_counts_each_response_once():
    frame = ranking_rows([(1, 0, [1, 2]), (1, 1, [2, 1]), (2, 0, [1, 2])], lengths={1: 100, 2: 300})
    frame.loc[frame["sample_id"] == 201, "response_chars"] = 200
    t = stats.length_table(frame).set_index("policy")
    assert t.loc[1, "n_responses"] == 2 and t.loc[1, "mean_chars"] == pytest.approx(150)
    assert t.loc[2, "mean_chars"] == pytest.approx(300) and t.loc[2, "mean_tokens"] == pytest.approx(75)


def test_length_controlled_win_rate_matches_statsmodels_glm():
    outcomes = stats.pairwise_outcomes(simulated(n_prompts=120))
    lc = stats.length_controlled_win_rates(outcomes)
    sub = outcomes[(outcomes["policy_a"] == 1) & (outcomes["policy_b"] == 3)]
    x = np.log(sub["tokens_a"] / sub["tokens_b"]).to_numpy()
    fit = sm.GLM(sub["a_wins"].to_numpy(), sm.add_constant(x), family=sm.families.Binomial()).fit(
        cov_type="cluster", cov_kwds={"groups": sub["prompt_id"].to_numpy()}, use_t=True)
    row = lc[(lc["policy"] == 1) & (lc["opponent"] == 3)].iloc[0]
    expit = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    assert row["lc_win_rate"] == pytest.approx(expit(fit.params[0]), rel=1e-6)
    assert row["length_coef"] == pytest.approx(fit.params[1], rel=1e-5)
    assert row["length_coef_se"] == pytest.approx(fit.bse[1], rel=1e-5)
    lo, hi = fit.conf_int()[0]
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((expit(lo), expit(hi)), rel=1e-5)
    assert row["win_rate"] == pytest.approx(sub["a_wins"].mean())
    mirror = lc[(lc["policy"] == 3) & (lc["opponent"] == 1)].iloc[0]
    assert mirror["lc_win_rate"] == pytest.approx(1 - row["lc_win_rate"])


def test_length_controlled_equals_raw_when_lengths_are_equal_and_removes_a_pure_length_effect():
    equal = stats.pairwise_outcomes(simulated(n_prompts=60, lengths=False))
    lc = stats.length_controlled_win_rates(equal)
    np.testing.assert_allclose(lc["lc_win_rate"], lc["win_rate"], atol=1e-9)
    assert lc["length_coef"].isna().all()
    # A judge that only likes longer answers: at equal length the win rate is about 50%.
    rng = np.random.default_rng(2)
    n = 4000
    ratio = rng.normal(0.3, 0.5, n)                         # policy 1 is usually longer
    y = (rng.random(n) < 1 / (1 + np.exp(-2 * ratio))).astype(float)
    outcomes = pd.DataFrame({"prompt_id": np.arange(n), "policy_a": 1, "policy_b": 2, "a_wins": y,
                             "tokens_a": 50 * np.exp(ratio), "tokens_b": 50.0, "chars_a": 1.0, "chars_b": 1.0})
    row = stats.length_controlled_win_rates(outcomes).iloc[0]
    assert row["win_rate"] > 0.6
    assert row["ci_low"] < 0.5 < row["ci_high"]
    assert row["length_coef"] == pytest.approx(2.0, abs=0.3)


# --- the whole report --------------------------------------------------------------------------

def test_round_report_has_every_table_and_matches_the_parts():
    frame = simulated(n_prompts=40)
    report = stats.round_report(frame, labels=label_rows(), n_boot=100, n_boot_bt=20)
    assert report["outcomes_n"] == 40 * 3 * 6
    outcomes = stats.pairwise_outcomes(frame)
    wr = stats.win_rate_matrix(outcomes, n_boot=100, names=stats._policy_names(frame))
    pd.testing.assert_frame_equal(report["win_rates"], wr)
    assert set(report["bt_ratings"]["policy_name"]) == {"P1", "P2", "P3", "P4"}
    assert len(report["harmless"]) == 4 and len(report["alignment"]) == 2
    assert report["annotators"]["rankings"].tolist() == [40, 40, 40]
    assert 0 < report["kendalls_w"]["mean_w"] < 1 and report["kendalls_w"]["n_items"] == 40
    assert report["harmless_alpha"]["n_units"] == 160
    empty = stats.round_report(frame.iloc[:0])
    assert empty["outcomes_n"] == 0 and empty["win_rates"].empty and empty["bt_ratings"].empty


def test_length_controlled_win_rate_is_undefined_when_the_ratio_never_varies():
    # One fixed response per policy, policy 1's always twice as long: length and policy coincide.
    outcomes = pd.DataFrame({"prompt_id": np.arange(30), "policy_a": 1, "policy_b": 2,
                             "a_wins": (np.arange(30) < 20).astype(float), "tokens_a": 100.0, "tokens_b": 50.0,
                             "chars_a": 400.0, "chars_b": 200.0})
    row = stats.length_controlled_win_rates(outcomes).iloc[0]
    assert row["win_rate"] == pytest.approx(2 / 3)
    assert math.isnan(row["lc_win_rate"]) and math.isnan(row["ci_low"]) and math.isnan(row["length_coef"])


def test_alignment_with_the_dataset_judge_is_reported_beside_the_human_one():
    labels = label_rows().assign(judge_preference=["second", "second", "first", "", "", "", "", ""])
    a = stats.alignment_by_config(labels).set_index("config_name")
    # base p_first 0.9, 0.2, 0.6 against judge second, second, first -> wrong, right, right.
    assert a.loc["base", "judge_n"] == 3 and a.loc["base", "judge_accuracy"] == pytest.approx(2 / 3)
    assert a.loc["cot", "judge_n"] == 0 and math.isnan(a.loc["cot", "judge_accuracy"])
    assert a.loc["base", "accuracy"] == pytest.approx(2.5 / 4)      # the human figure is unchanged
