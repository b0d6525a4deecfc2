"""Benchmark: the full evaluation-round report on 1,000,000 pairwise outcomes.

Synthetic data: 10 policies, 50,000 prompts, rankings of 4 responses (6 outcomes each) until
there are 1,000,000 outcomes, a harmless flag per response, and 200,000 AI labels from 4
labeler configs. Times ``evalsite.stats.round_report`` (win-rate matrix with 1,000 prompt
bootstrap rounds, Bradley-Terry with 100, harmless rates, lengths and length-controlled win
rates, agreement, per-annotator counts) plus alignment per config, against a naive per-row
Python implementation run on a 1% subset (1% of the prompts) and scaled up: its per-row work
x100, its per-policy work (Bradley-Terry iterations on a 10x10 table) x1.

    bench/reports [--quick] [--seed N]
"""
import argparse
import os
import random
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from evalsite import stats  # noqa: E402


def synthetic(n_outcomes, n_prompts, n_policies, n_labels, seed):
    """A ranking frame and a label frame shaped like the human-eval / labeling contracts."""
    rng = np.random.default_rng(seed)
    k = 4
    n_rankings = -(-n_outcomes // (k * (k - 1) // 2))
    strength = np.linspace(-1, 1, n_policies)
    prompt = rng.permutation(np.arange(n_rankings) % n_prompts)   # every prompt used, ~3.3 rankings each
    # k distinct policies per ranking: the first k of a random permutation.
    pols = np.argsort(rng.random((n_rankings, n_policies)), axis=1)[:, :k]
    score = strength[pols] + rng.gumbel(size=pols.shape)
    rank = (-score).argsort(axis=1).argsort(axis=1) + 1
    chars = (200 + 40 * strength[pols] + rng.normal(0, 50, pols.shape)).clip(20).astype(int)
    harmless_p = 0.6 + 0.3 * (strength[pols] + 1) / 2
    rankings = pd.DataFrame({
        "round_id": 1,
        "item_id": np.repeat(prompt, k),
        "prompt_id": np.repeat(prompt, k),
        "annotator_id": np.repeat(rng.integers(0, 60, n_rankings), k),
        "ranking_id": np.repeat(np.arange(n_rankings), k),
        "policy_id": pols.ravel() + 1,
        "policy_name": pd.Series(pols.ravel() + 1).map(lambda i: f"policy-{i}").to_numpy(),
        "sample_id": (np.repeat(prompt, k) * n_policies + pols.ravel()),
        "rank": rank.ravel().astype(float),
        "harmless": rng.random(pols.size) < harmless_p.ravel(),
        "response_chars": chars.ravel(),
        "response_tokens": (chars.ravel() // 4),
        "created_at": pd.Timestamp("2024-01-01") + pd.to_timedelta(np.repeat(np.arange(n_rankings), k), "s"),
    })
    cfg = rng.integers(0, 4, n_labels)
    truth = rng.random(n_labels) < 0.5
    skill = np.array([0.78, 0.74, 0.68, 0.62])[cfg]
    right = rng.random(n_labels) < skill
    p_first = np.where(truth == right, rng.uniform(0.5, 1, n_labels), rng.uniform(0, 0.5, n_labels))
    human = np.where(rng.random(n_labels) < 0.05, "tie", np.where(truth, "first", "second"))
    pa = rng.integers(1, n_policies + 1, n_labels)
    labels = pd.DataFrame({
        "comparison_id": np.arange(n_labels), "config_id": cfg, "config_name": [f"config-{c}" for c in cfg],
        "prompt_id": rng.integers(0, n_prompts, n_labels), "p_first": p_first,
        "p_slot1_order1": np.clip(p_first + rng.normal(0.1, 0.2, n_labels), 0, 1),
        "p_slot1_order2": np.clip(1 - p_first + rng.normal(0.1, 0.2, n_labels), 0, 1),
        "label_mass": rng.uniform(0.5, 1, n_labels), "human_preference": human, "judge_preference": "",
        "sample_a_id": np.nan, "sample_b_id": np.nan,
        "policy_a_id": pa, "policy_b_id": (pa % n_policies) + 1,
    })
    return rankings, labels


def full_report(rankings, labels, n_boot, n_boot_bt):
    report = stats.round_report(rankings, labels=labels, n_boot=n_boot, n_boot_bt=n_boot_bt)
    return report


# --- the naive baseline: one Python loop iteration per row --------------------------------------

def naive_outcomes(rankings):
    by_ranking = defaultdict(list)
    for row in rankings.itertuples(index=False):
        by_ranking[row.ranking_id].append(row)
    out = []
    for rows in by_ranking.values():
        for i in range(len(rows)):
            for j in range(i + 1, len(rows)):
                a, b = rows[i], rows[j]
                if a.policy_id == b.policy_id:
                    continue
                if a.policy_id > b.policy_id:
                    a, b = b, a
                y = 1.0 if a.rank < b.rank else 0.0 if a.rank > b.rank else 0.5
                out.append((a.prompt_id, a.policy_id, b.policy_id, y))
    return out


def naive_pair_sums(outcomes_by_prompt, prompts):
    wins, n = defaultdict(float), defaultdict(float)
    for p in prompts:
        for a, b, y in outcomes_by_prompt[p]:
            wins[(a, b)] += y
            n[(a, b)] += 1
    return wins, n


def naive_win_rates(outcomes, n_boot, rng):
    by_prompt = defaultdict(list)
    for p, a, b, y in outcomes:
        by_prompt[p].append((a, b, y))
    prompts = list(by_prompt)
    wins, n = naive_pair_sums(by_prompt, prompts)
    boot = defaultdict(list)
    for _ in range(n_boot):
        bw, bn = naive_pair_sums(by_prompt, rng.choices(prompts, k=len(prompts)))
        for key in bn:
            boot[key].append(bw[key] / bn[key])
    result = {}
    for key in n:
        vals = sorted(boot[key])
        result[key] = (wins[key] / n[key], vals[int(0.025 * len(vals))], vals[int(0.975 * len(vals)) - 1])
    return result, by_prompt, prompts


def naive_bt(wins, n, iters=200):
    """Zermelo / MM iterations on the pair table (per-policy work, not per-row)."""
    policies = sorted({p for key in n for p in key})
    s = {p: 1.0 for p in policies}
    for _ in range(iters):
        new = {}
        for i in policies:
            w_i, denom = 0.0, 0.0
            for (a, b), nab in n.items():
                if i == a:
                    w_i += wins[(a, b)]
                    denom += nab / (s[a] + s[b])
                elif i == b:
                    w_i += nab - wins[(a, b)]
                    denom += nab / (s[a] + s[b])
            new[i] = w_i / denom if denom else s[i]
        total = sum(new.values())
        s = {p: v * len(policies) / total for p, v in new.items()}
    return s


def naive_harmless(rankings):
    counts = defaultdict(lambda: [0, 0])
    for row in rankings.itertuples(index=False):
        counts[row.policy_id][0] += bool(row.harmless)
        counts[row.policy_id][1] += 1
    return {p: (k / n, stats.wilson_interval(k, n)) for p, (k, n) in counts.items()}


def naive_alignment(labels):
    by_cfg = defaultdict(lambda: [0.0, 0])
    for row in labels.itertuples(index=False):
        if row.human_preference not in ("first", "second"):
            continue
        ok = (row.p_first > 0.5) == (row.human_preference == "first")
        by_cfg[row.config_id][0] += 0.5 if row.p_first == 0.5 else ok
        by_cfg[row.config_id][1] += 1
    return {c: k / n for c, (k, n) in by_cfg.items()}


def naive_report(rankings, labels, n_boot, n_boot_bt, seed):
    """Returns (seconds proportional to rows, seconds of per-policy work)."""
    rng = random.Random(seed)
    t0 = time.perf_counter()
    outcomes = naive_outcomes(rankings)
    _, by_prompt, prompts = naive_win_rates(outcomes, n_boot, rng)
    tables = [naive_pair_sums(by_prompt, rng.choices(prompts, k=len(prompts))) for _ in range(n_boot_bt)]
    naive_harmless(rankings)
    naive_alignment(labels)
    row_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for wins, n in tables:
        naive_bt(wins, n)
    return row_s, time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="100,000 outcomes, 100/20 bootstrap rounds")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    n_out, n_prompts, n_labels = (100_000, 5_000, 20_000) if args.quick else (1_000_000, 50_000, 200_000)
    n_boot, n_boot_bt = (100, 20) if args.quick else (1000, 100)
    rankings, labels = synthetic(n_out, n_prompts, 10, n_labels, args.seed)
    print(f"synthetic: {len(rankings):,} ranked responses, {rankings['ranking_id'].nunique():,} rankings, "
          f"{rankings['prompt_id'].nunique():,} prompts, 10 policies, {len(labels):,} AI labels "
          f"(cpus: {os.cpu_count()}, load average {os.getloadavg()[0]:.2f})")

    full_report(rankings.head(4000), labels.head(1000), 10, 5)   # warm-up: imports, BLAS threads
    t0 = time.perf_counter()
    report = full_report(rankings, labels, n_boot, n_boot_bt)
    full_s = time.perf_counter() - t0
    print(f"outcomes: {report['outcomes_n']:,}; win-rate rows: {len(report['win_rates'])}; "
          f"ratings: {len(report['bt_ratings'])}; alignment configs: {len(report['alignment'])}")
    parts = {}
    outcomes = stats.pairwise_outcomes(rankings)
    for name, fn in [
        ("pairwise outcomes", lambda: stats.pairwise_outcomes(rankings)),
        (f"win-rate matrix ({n_boot} bootstrap rounds)", lambda: stats.win_rate_matrix(outcomes, n_boot=n_boot)),
        (f"Bradley-Terry ({n_boot_bt} bootstrap rounds)", lambda: stats.bradley_terry(outcomes, n_boot=n_boot_bt)),
        ("harmless rates", lambda: stats.harmless_rates(rankings)),
        ("alignment per config", lambda: stats.alignment_by_config(labels)),
        ("length-controlled win rates", lambda: stats.length_controlled_win_rates(outcomes)),
        ("Kendall's W", lambda: stats.kendalls_w(rankings)),
    ]:
        t = time.perf_counter()
        fn()
        parts[name] = time.perf_counter() - t
    for name, s in parts.items():
        print(f"  {name:<40} {s:7.3f} s")
    print(f"full report: {full_s:.3f} s")

    subset_prompts = max(1, n_prompts // 100)
    sub_r = rankings[rankings["prompt_id"] < subset_prompts]
    sub_l = labels.iloc[: len(labels) // 100]
    scale = len(rankings) / len(sub_r)
    row_s, policy_s = naive_report(sub_r, sub_l, n_boot, n_boot_bt, args.seed)
    naive_s = row_s * scale + policy_s
    print(f"naive per-row loop on 1% ({len(sub_r):,} ranked responses): {row_s:.2f} s per-row work "
          f"x{scale:.1f} + {policy_s:.2f} s per-policy work = {naive_s:.1f} s estimated for the full data")
    ratio = naive_s / full_s
    print(f"ratio naive / vectorised: {ratio:.1f}x (target: full report < 5 s)")
    print(f"RESULT full_report_s={full_s:.3f} ratio_vs_naive={ratio:.1f}")


if __name__ == "__main__":
    main()
