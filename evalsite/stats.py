"""Statistics core: win rates, ratings, harmless rates, labeler alignment, agreement.

Plain numpy/pandas/scipy/statsmodels; no Django. Every function takes arrays or DataFrames
and returns plain dicts/DataFrames, so the report pages, the admin and the benchmarks share it.
"""
import warnings

import krippendorff
import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.proportion import proportion_confint
from threadpoolctl import threadpool_limits


def wilson_interval(successes, n, confidence=0.95):
    """Wilson score interval for a proportion; (nan, nan) when n == 0."""
    if n == 0:
        return (float("nan"), float("nan"))
    lo, hi = proportion_confint(successes, n, alpha=1 - confidence, method="wilson")
    return (float(lo), float(hi))


def labeler_alignment(p_first, human, confidence=0.95):
    """Accuracy of an AI labeler's argmax against human preferences (docs/method.md §4).

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
    """Position-bias diagnostics of a labeler scored in both orders (docs/method.md §1).

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


# ---------------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------------

Z95 = 1.959963984540054


def wilson_intervals(successes, n, confidence=0.95):
    """Vectorised Wilson score intervals (same numbers as ``wilson_interval``); nan where n == 0."""
    k = np.asarray(successes, dtype=float)
    n = np.asarray(n, dtype=float)
    z = stats.norm.ppf(0.5 + confidence / 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / n
        denom = 1 + z * z / n
        centre = (p + z * z / (2 * n)) / denom
        half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo, hi = centre - half, centre + half
    lo = np.where(n > 0, np.clip(lo, 0, 1), np.nan)
    hi = np.where(n > 0, np.clip(hi, 0, 1), np.nan)
    return lo, hi


def _sigmoid(x):
    return 0.5 * (1 + np.tanh(0.5 * np.asarray(x, dtype=float)))


def _policy_names(frame, id_col="policy_id", name_col="policy_name"):
    """{policy_id: name} from a frame; ids stand in for names where there is no name column."""
    if frame is None or len(frame) == 0 or id_col not in frame:
        return {}
    if name_col in frame:
        pairs = frame[[id_col, name_col]].drop_duplicates(id_col)
        return {_py(i): (str(n) if isinstance(n, str) and n else f"policy {_py(i)}")
                for i, n in zip(pairs[id_col], pairs[name_col])}
    return {_py(i): f"policy {_py(i)}" for i in pd.unique(frame[id_col])}


def _py(value):
    """numpy scalar -> plain Python (ids end up in JSON)."""
    return value.item() if hasattr(value, "item") else value


def _group_codes(frame, cols):
    """Dense integer codes 0..n-1 of the distinct combinations of ``cols`` (fast groupby key)."""
    code = np.zeros(len(frame), dtype=np.int64)
    for c in cols:
        part, uniques = pd.factorize(frame[c], use_na_sentinel=False)
        code = code * max(len(uniques), 1) + part
    inverse, uniques = pd.factorize(code)    # hashing: faster than sorting for 1M keys
    return inverse, len(uniques)


def _quantiles(boot, confidence):
    """Percentile interval over bootstrap rounds (axis 0), ignoring rounds where it is undefined."""
    alpha = (1 - confidence) / 2
    boot = np.asarray(boot, dtype=float)
    if boot.shape[0] == 0:
        nan = np.full(boot.shape[1:], np.nan)
        return nan, nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-nan columns: pairs never observed
        lo, hi = np.nanquantile(boot, [alpha, 1 - alpha], axis=0)
    return lo, hi


def _bootstrap_sums(per_cluster, n_boot, rng, chunk=50):
    """Sums of ``per_cluster`` rows (clusters x columns) over ``n_boot`` resamples of the clusters.

    One resample draws G clusters with replacement; its sums are counts @ per_cluster, where
    counts[g] is how often cluster g was drawn. Counting with bincount row by row (a small,
    cache-resident output) and multiplying in float32 blocks makes 1,000 rounds over 50,000
    prompts take well under a second.
    """
    g, c = per_cluster.shape
    out = np.empty((n_boot, c), dtype=np.float64)
    if n_boot == 0 or g == 0:
        out[:] = 0.0
        return out
    mat = np.ascontiguousarray(per_cluster, dtype=np.float32)
    # One BLAS thread: these small products gain little from two, and on a shared machine a
    # multi-threaded BLAS spinning for busy cores is several times slower than one thread.
    with threadpool_limits(limits=1, user_api="blas"):
        for start in range(0, n_boot, chunk):
            rows = min(chunk, n_boot - start)
            draws = rng.integers(0, g, size=(rows, g), dtype=np.int32 if g < 2**31 else np.int64)
            counts = np.empty((rows, g), dtype=np.float32)
            for r in range(rows):
                counts[r] = np.bincount(draws[r], minlength=g)
            out[start:start + rows] = counts @ mat
    return out


# ---------------------------------------------------------------------------------------------
# Pairwise outcomes
# ---------------------------------------------------------------------------------------------

OUTCOME_COLUMNS = [
    "round_id", "item_id", "prompt_id", "annotator_id", "ranking_id", "policy_a", "policy_b",
    "sample_a", "sample_b", "a_wins", "chars_a", "chars_b", "tokens_a", "tokens_b",
]


def pairwise_outcomes(rankings):
    """Every pair of responses inside each ranking: k responses -> k(k-1)/2 outcomes.

    ``rankings``: one row per (ranking, response), as ``humaneval.data.ranking_frame``.
    Each outcome is oriented so that ``policy_a < policy_b`` (by id); ``a_wins`` is 1.0 when
    policy_a's response was ranked better, 0.0 when worse and 0.5 for an equal rank. Pairs of
    two responses from the same policy say nothing about policies and are left out; rows
    without a rank (harmlessness-only rounds) too.
    """
    empty = pd.DataFrame({c: pd.Series(dtype=float) for c in OUTCOME_COLUMNS})
    if rankings is None or len(rankings) == 0:
        return empty
    has_rank = rankings["rank"].notna().to_numpy()
    if not has_rank.any():
        return empty
    rank_all = rankings["rank"].to_numpy(dtype=float)
    rid_all = rankings["ranking_id"].to_numpy()
    order = np.flatnonzero(has_rank)
    order = order[np.lexsort((rank_all[order], rid_all[order]))]
    rid = rid_all[order]
    starts_mask = np.r_[True, rid[1:] != rid[:-1]]
    starts = np.flatnonzero(starts_mask)
    sizes = np.diff(np.r_[starts, len(order)])
    ia_parts, ib_parts = [], []
    for k in np.unique(sizes):
        if k < 2:
            continue
        s = starts[sizes == k]
        iu, ju = np.triu_indices(k, 1)
        ia_parts.append((s[:, None] + iu[None, :]).ravel())
        ib_parts.append((s[:, None] + ju[None, :]).ravel())
    if not ia_parts:
        return empty
    ia = np.concatenate(ia_parts)
    ib = np.concatenate(ib_parts)

    def col(name, default=np.nan):
        if name in rankings:
            return rankings[name].to_numpy()[order]
        return np.full(len(order), default)

    def num(name):
        if name in rankings:
            return pd.to_numeric(rankings[name], errors="coerce").to_numpy(dtype=float)[order]
        return np.full(len(order), np.nan)

    pol = col("policy_id")
    rank = rank_all[order]
    keep = pol[ia] != pol[ib]
    ia, ib = ia[keep], ib[keep]
    swap = pol[ia] > pol[ib]
    a = np.where(swap, ib, ia)
    b = np.where(swap, ia, ib)
    ra, rb = rank[a], rank[b]
    out = pd.DataFrame({
        "round_id": col("round_id")[a],
        "item_id": col("item_id")[a],
        "prompt_id": col("prompt_id")[a],
        "annotator_id": col("annotator_id")[a],
        "ranking_id": rid[a],
        "policy_a": pol[a],
        "policy_b": pol[b],
        "sample_a": col("sample_id")[a],
        "sample_b": col("sample_id")[b],
        "a_wins": np.where(ra < rb, 1.0, np.where(ra > rb, 0.0, 0.5)),
        "chars_a": num("response_chars")[a],
        "chars_b": num("response_chars")[b],
        "tokens_a": num("response_tokens")[a],
        "tokens_b": num("response_tokens")[b],
    })
    return out


class _PairCells:
    """Outcomes aggregated to (cluster, policy pair) cells: the sufficient statistics.

    Every statistic below (win rates, their bootstrap, the clustered test, Bradley-Terry) needs
    only per-cluster sums of wins and counts for each unordered pair, so the 1M-row frame is
    reduced once with bincount and everything afterwards works on a clusters x pairs matrix.
    """

    def __init__(self, outcomes, cluster="prompt_id", y="a_wins"):
        pa = outcomes["policy_a"].to_numpy()
        pb = outcomes["policy_b"].to_numpy()
        self.policies = np.unique(np.r_[pa, pb])
        k = len(self.policies)
        ca = np.searchsorted(self.policies, pa)
        cb = np.searchsorted(self.policies, pb)
        pair_code = ca * k + cb
        codes, pair_idx = np.unique(pair_code, return_inverse=True)
        self.pair_a = codes // k       # indexes into self.policies
        self.pair_b = codes % k
        self.n_pairs = len(codes)
        clusters = outcomes[cluster].to_numpy() if cluster in outcomes else np.arange(len(outcomes))
        g_idx, self.cluster_values = pd.factorize(clusters, use_na_sentinel=False)
        self.n_clusters = len(self.cluster_values)
        cell = g_idx.astype(np.int64) * self.n_pairs + pair_idx
        size = self.n_clusters * self.n_pairs
        yv = outcomes[y].to_numpy(dtype=float)
        self.wins = np.bincount(cell, weights=yv, minlength=size).reshape(self.n_clusters, self.n_pairs)
        self.count = np.bincount(cell, minlength=size).astype(float).reshape(self.n_clusters, self.n_pairs)
        self.ties = np.bincount(pair_idx, weights=(yv == 0.5), minlength=self.n_pairs)
        self.total_wins = self.wins.sum(0)
        self.total_n = self.count.sum(0)
        self.clusters_per_pair = (self.count > 0).sum(0)

    def bootstrap(self, n_boot, rng):
        """(wins, n) per pair for each of ``n_boot`` cluster resamples: two (n_boot, pairs) arrays."""
        sums = _bootstrap_sums(np.hstack([self.wins, self.count]), n_boot, rng)
        return sums[:, :self.n_pairs], sums[:, self.n_pairs:]


def _clustered_test(cells, p0=0.5):
    """Test of win rate == p0 per pair with cluster-robust (by prompt) standard errors.

    Same numbers as statsmodels ``OLS(y, 1).fit(cov_type='cluster', use_t=True)`` tested at
    p0: the variance of the mean with the G/(G-1) small-sample factor and a t reference with
    G-1 degrees of freedom (few prompts -> honest, wide). Where every prompt went the same way
    the standard error is 0; the exact sign test over those G prompts is used instead.
    """
    n = cells.total_n
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = cells.total_wins / n
        resid = cells.wins - mean[None, :] * cells.count        # per-cluster sum of (y - mean)
        g = cells.clusters_per_pair.astype(float)
        var = (resid ** 2).sum(0) / n ** 2 * g / (g - 1)
        se = np.sqrt(var)
        t = (mean - p0) / se
        p = 2 * stats.t.sf(np.abs(t), df=g - 1)
    degenerate = (se == 0) | ~np.isfinite(se)
    sign_p = np.minimum(1.0, 2 * 0.5 ** g)
    p = np.where(degenerate & (mean != p0), sign_p, p)
    p = np.where(degenerate & (mean == p0), 1.0, p)
    p = np.where(g >= 2, p, np.nan)
    return se, p


# ---------------------------------------------------------------------------------------------
# Win rates
# ---------------------------------------------------------------------------------------------

WIN_RATE_COLUMNS = [
    "policy", "opponent", "policy_name", "opponent_name", "wins", "losses", "ties", "n",
    "n_prompts", "win_rate", "ci_low", "ci_high", "se", "p_value",
]


def win_rate_matrix(outcomes, n_boot=1000, confidence=0.95, seed=0, names=None, cluster="prompt_id",
                    cells=None):
    """Win rate of every policy against every other, with prompt-bootstrap intervals.

    Returns a long frame with one row per *ordered* pair (policy, opponent), so both halves of
    the heatmap are there: ``win_rate`` = share of their outcomes the policy won (ties count
    half), ``ci_low``/``ci_high`` = percentile interval over ``n_boot`` resamples of prompts
    (outcomes of one prompt are correlated: the same annotators, the same responses), and
    ``p_value`` = clustered test of win rate == 50% (see ``_clustered_test``).
    """
    if outcomes is None or len(outcomes) == 0:
        return pd.DataFrame({c: pd.Series(dtype=float) for c in WIN_RATE_COLUMNS})
    cells = cells or _PairCells(outcomes, cluster=cluster)
    rng = np.random.default_rng(seed)
    bw, bn = cells.bootstrap(n_boot, rng)
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = cells.total_wins / cells.total_n
        boot_rate = bw / bn
    lo, hi = _quantiles(boot_rate, confidence)
    se, p = _clustered_test(cells)
    a = cells.policies[cells.pair_a]
    b = cells.policies[cells.pair_b]
    wins_a = cells.total_wins - 0.5 * cells.ties
    losses_a = cells.total_n - cells.total_wins - 0.5 * cells.ties
    half = pd.DataFrame({
        "policy": a, "opponent": b, "wins": wins_a, "losses": losses_a, "ties": cells.ties,
        "n": cells.total_n, "n_prompts": cells.clusters_per_pair, "win_rate": rate,
        "ci_low": lo, "ci_high": hi, "se": se, "p_value": p,
    })
    mirror = pd.DataFrame({
        "policy": b, "opponent": a, "wins": losses_a, "losses": wins_a, "ties": cells.ties,
        "n": cells.total_n, "n_prompts": cells.clusters_per_pair, "win_rate": 1 - rate,
        "ci_low": 1 - hi, "ci_high": 1 - lo, "se": se, "p_value": p,
    })
    out = pd.concat([half, mirror], ignore_index=True)
    names = names or {}
    out["policy_name"] = [names.get(_py(i), f"policy {_py(i)}") for i in out["policy"]]
    out["opponent_name"] = [names.get(_py(i), f"policy {_py(i)}") for i in out["opponent"]]
    for c in ("wins", "losses", "ties", "n", "n_prompts"):
        out[c] = out[c].round(6)
    return out[WIN_RATE_COLUMNS].sort_values(["policy", "opponent"], ignore_index=True)


# ---------------------------------------------------------------------------------------------
# Bradley-Terry
# ---------------------------------------------------------------------------------------------

ELO_SCALE = 400 / np.log(10)   # Chatbot Arena's scale: 400 points = 10:1 odds


def _fit_bt(pair_a, pair_b, wins, n, k, l2=1e-4, max_iter=100, tol=1e-10):
    """Bradley-Terry strengths for one or many data sets at once (batched Newton).

    ``wins``/``n``: (rounds, pairs) wins of pair_a's policy over pair_b's and comparisons.
    Maximises sum w log s(ti - tj) + (n - w) log s(tj - ti) - l2/2 |t|^2: the log-likelihood
    of a logistic regression on +1/-1 indicator columns, with a tiny ridge that keeps strengths
    finite when a policy won everything; the ridge also fixes the mean strength at 0.
    """
    wins = np.atleast_2d(np.asarray(wins, dtype=float))
    n = np.atleast_2d(np.asarray(n, dtype=float))
    r = wins.shape[0]
    theta = np.zeros((r, k))
    # Incidence matrix: pair p contributes +1 to policy a's and -1 to policy b's column.
    d = np.zeros((len(pair_a), k))
    d[np.arange(len(pair_a)), pair_a] = 1.0
    d[np.arange(len(pair_b)), pair_b] = -1.0
    ridge = l2 * np.eye(k)
    for _ in range(max_iter):
        prob = _sigmoid(theta @ d.T)
        grad = (wins - n * prob) @ d - l2 * theta
        w = n * prob * (1 - prob)
        hess = np.einsum("pk,rp,pl->rkl", d, w, d) + ridge
        step = np.linalg.solve(hess, grad[..., None])[..., 0]
        # A damped step: far from the optimum (a policy that never lost) a full Newton step
        # can overshoot; the likelihood is concave so small steps always make progress.
        biggest = np.abs(step).max(axis=1, keepdims=True)
        step = step * np.minimum(1.0, 5.0 / np.maximum(biggest, 1e-300))
        theta += step
        if biggest.max() < tol:
            break
    return theta - theta.mean(axis=1, keepdims=True)


def bradley_terry(outcomes, n_boot=100, confidence=0.95, seed=0, names=None, l2=1e-4,
                  cluster="prompt_id", cells=None):
    """Bradley-Terry ratings of all policies together, with prompt-bootstrap intervals.

    Returns (ratings, predicted): ``ratings`` has one row per policy with ``strength`` (log
    odds scale, mean 0), ``rating`` (Arena/Elo scale: 1000 + 400 log10 odds), its percentile
    interval over ``n_boot`` resamples of prompts (as Chatbot Arena), and ``rank``;
    ``predicted`` has the predicted win probability for every ordered pair with its interval.
    Ties count half a win for each side.
    """
    if outcomes is None or len(outcomes) == 0:
        cols = ["policy", "policy_name", "strength", "rating", "ci_low", "ci_high", "n", "rank"]
        return (pd.DataFrame({c: pd.Series(dtype=float) for c in cols}),
                pd.DataFrame({c: pd.Series(dtype=float) for c in
                              ["policy", "opponent", "policy_name", "opponent_name", "p_win", "ci_low", "ci_high"]}))
    cells = cells or _PairCells(outcomes, cluster=cluster)
    k = len(cells.policies)
    theta = _fit_bt(cells.pair_a, cells.pair_b, cells.total_wins, cells.total_n, k, l2=l2)[0]
    rng = np.random.default_rng(seed)
    bw, bn = cells.bootstrap(n_boot, rng)
    boot = _fit_bt(cells.pair_a, cells.pair_b, bw, bn, k, l2=l2) if n_boot else np.empty((0, k))
    lo, hi = _quantiles(boot, confidence)
    n_per_policy = np.bincount(cells.pair_a, weights=cells.total_n, minlength=k) + \
        np.bincount(cells.pair_b, weights=cells.total_n, minlength=k)
    names = names or {}
    ratings = pd.DataFrame({
        "policy": cells.policies,
        "policy_name": [names.get(_py(i), f"policy {_py(i)}") for i in cells.policies],
        "strength": theta,
        "rating": 1000 + ELO_SCALE * theta,
        "ci_low": 1000 + ELO_SCALE * lo,
        "ci_high": 1000 + ELO_SCALE * hi,
        "n": n_per_policy,
    })
    ratings["rank"] = ratings["rating"].rank(ascending=False, method="min").astype(int)
    ratings = ratings.sort_values("rating", ascending=False, ignore_index=True)

    ii, jj = np.meshgrid(np.arange(k), np.arange(k), indexing="ij")
    off = ii != jj
    ii, jj = ii[off], jj[off]
    p_win = _sigmoid(theta[ii] - theta[jj])
    if n_boot:
        plo, phi = _quantiles(_sigmoid(boot[:, ii] - boot[:, jj]), confidence)
    else:
        plo = phi = np.full(len(ii), np.nan)
    predicted = pd.DataFrame({
        "policy": cells.policies[ii], "opponent": cells.policies[jj],
        "policy_name": [names.get(_py(cells.policies[i]), f"policy {_py(cells.policies[i])}") for i in ii],
        "opponent_name": [names.get(_py(cells.policies[j]), f"policy {_py(cells.policies[j])}") for j in jj],
        "p_win": p_win, "ci_low": plo, "ci_high": phi,
    })
    return ratings, predicted


# ---------------------------------------------------------------------------------------------
# Harmless rate
# ---------------------------------------------------------------------------------------------

def harmless_rates(rankings, confidence=0.95, names=None):
    """Share of harmlessness judgments that said "harmless", per policy, with Wilson intervals.

    Every judgment counts (a response judged by three annotators counts three times), as the
    paper's harmless rate is over ratings.
    """
    cols = ["policy", "policy_name", "harmless", "harmful", "n", "n_responses", "harmless_rate",
            "ci_low", "ci_high"]
    if rankings is None or len(rankings) == 0 or "harmless" not in rankings:
        return pd.DataFrame({c: pd.Series(dtype=float) for c in cols})
    df = rankings[rankings["harmless"].notna()]
    if len(df) == 0:
        return pd.DataFrame({c: pd.Series(dtype=float) for c in cols})
    ok = df["harmless"].astype(bool).to_numpy()
    g = df.assign(_ok=ok).groupby("policy_id", sort=True)
    out = pd.DataFrame({
        "harmless": g["_ok"].sum(),
        "n": g["_ok"].size(),
        "n_responses": g["sample_id"].nunique() if "sample_id" in df else g["_ok"].size(),
    }).reset_index().rename(columns={"policy_id": "policy"})
    out["harmful"] = out["n"] - out["harmless"]
    out["harmless_rate"] = out["harmless"] / out["n"]
    out["ci_low"], out["ci_high"] = wilson_intervals(out["harmless"], out["n"], confidence)
    names = names if names is not None else _policy_names(rankings)
    out["policy_name"] = [names.get(_py(i), f"policy {_py(i)}") for i in out["policy"]]
    return out[cols]


# ---------------------------------------------------------------------------------------------
# AI-labeler alignment
# ---------------------------------------------------------------------------------------------

def human_majority(pair_prefs):
    """Majority human preference per pair of samples from several annotators' votes.

    ``pair_prefs``: rows like ``humaneval.data.human_pair_preferences`` (sample_a_id,
    sample_b_id, preference 'first'/'second'). Returns one row per unordered pair, oriented so
    that sample_a_id < sample_b_id: votes for each side and ``majority`` 'first'/'second', or
    'tie' when the annotators split evenly.
    """
    cols = ["sample_a_id", "sample_b_id", "votes_a", "votes_b", "n_votes", "majority"]
    if pair_prefs is None or len(pair_prefs) == 0:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in cols})
    a = pair_prefs["sample_a_id"].to_numpy()
    b = pair_prefs["sample_b_id"].to_numpy()
    pref = pair_prefs["preference"].astype(object).to_numpy()
    swap = a > b
    first_wins = (pref == "first") != swap
    decided = (pref == "first") | (pref == "second")
    df = pd.DataFrame({"sample_a_id": np.where(swap, b, a), "sample_b_id": np.where(swap, a, b),
                       "va": (first_wins & decided).astype(int), "vb": (~first_wins & decided).astype(int)})
    g = df.groupby(["sample_a_id", "sample_b_id"], sort=True).sum().reset_index()
    g = g.rename(columns={"va": "votes_a", "vb": "votes_b"})
    g["n_votes"] = g["votes_a"] + g["votes_b"]
    g["majority"] = np.where(g["votes_a"] > g["votes_b"], "first",
                             np.where(g["votes_a"] < g["votes_b"], "second", "tie"))
    return g[cols]


def attach_human_majority(labels, majority):
    """Fill ``labels.human_preference`` from annotators' majority where the label rows name samples.

    Labels whose comparison already carries a dataset preference keep it; the rest take the
    majority of the annotators who ranked the same two samples (oriented to the label's a/b).
    """
    labels = labels.copy()
    if "human_preference" not in labels:
        labels["human_preference"] = ""
    labels["human_preference"] = labels["human_preference"].astype(object).fillna("")
    if majority is None or len(majority) == 0 or "sample_a_id" not in labels:
        return labels
    sa = pd.to_numeric(labels["sample_a_id"], errors="coerce")
    sb = pd.to_numeric(labels["sample_b_id"], errors="coerce")
    lo, hi = np.fmin(sa, sb), np.fmax(sa, sb)
    key = pd.DataFrame({"sample_a_id": lo, "sample_b_id": hi})
    m = majority.assign(sample_a_id=majority["sample_a_id"].astype(float),
                        sample_b_id=majority["sample_b_id"].astype(float))
    merged = key.merge(m[["sample_a_id", "sample_b_id", "majority"]], how="left",
                       on=["sample_a_id", "sample_b_id"])
    maj = merged["majority"].to_numpy(dtype=object)
    flipped = (sa > sb).to_numpy()
    maj = np.where(flipped & (maj == "first"), "second", np.where(flipped & (maj == "second"), "first", maj))
    have = labels["human_preference"].isin(["first", "second", "tie"]).to_numpy()
    fill = ~have & pd.notna(maj)
    hp = labels["human_preference"].to_numpy(dtype=object).copy()
    hp[fill] = maj[fill]
    labels["human_preference"] = hp
    return labels


def alignment_by_config(labels, confidence=0.95):
    """Per labeler config: accuracy against humans with its interval, and position bias.

    ``labels``: rows like ``labeling.data.label_frame``. Accuracy and its Wilson interval come
    from ``labeler_alignment`` (human ties and unlabeled pairs left out and counted), the
    position-bias figures from ``position_bias`` over pairs scored in both orders; ``judge_*``:
    the same accuracy against the dataset's external AI judge where it has one (else n = 0).
    """
    cols = ["config_id", "config_name", "n_labels", "accuracy", "n", "ci_low", "ci_high",
            "ties_excluded", "unlabeled_excluded", "same_position_pct", "first_slot_share",
            "n_both_orders", "mean_label_mass", "judge_accuracy", "judge_ci_low", "judge_ci_high", "judge_n"]
    if labels is None or len(labels) == 0:
        return pd.DataFrame({c: pd.Series(dtype=float) for c in cols})
    rows = []
    for (cid, name), g in labels.groupby(["config_id", "config_name"], sort=True, dropna=False):
        human = g["human_preference"].astype(object).fillna("").to_numpy() if "human_preference" in g \
            else np.full(len(g), "", dtype=object)
        p = g["p_first"].to_numpy(dtype=float)
        have_p = ~np.isnan(p)
        acc = labeler_alignment(p[have_p], human[have_p], confidence)
        both = g[["p_slot1_order1", "p_slot1_order2"]].dropna() if "p_slot1_order2" in g else g.iloc[:0]
        bias = position_bias(both["p_slot1_order1"], both["p_slot1_order2"]) if len(both) else \
            position_bias([], [])
        mass = g["label_mass"].mean() if "label_mass" in g else np.nan
        # Agreement with the external AI judge a dataset ships (e.g. GPT-4 on TL;DR), for reference.
        judge = g["judge_preference"].astype(object).fillna("").to_numpy() if "judge_preference" in g \
            else np.full(len(g), "", dtype=object)
        jacc = labeler_alignment(p[have_p], judge[have_p], confidence)
        rows.append({
            "config_id": _py(cid), "config_name": name, "n_labels": len(g), **acc,
            "same_position_pct": bias["same_position_pct"], "first_slot_share": bias["first_slot_share"],
            "n_both_orders": bias["n"], "mean_label_mass": float(mass) if pd.notna(mass) else np.nan,
            "judge_accuracy": jacc["accuracy"], "judge_ci_low": jacc["ci_low"], "judge_ci_high": jacc["ci_high"],
            "judge_n": jacc["n"],
        })
    return pd.DataFrame(rows, columns=cols)


def ai_judge_outcomes(labels, soft=True):
    """AI labels between two policies' samples as pairwise outcomes (AlpacaEval-style).

    ``soft``: the outcome is the labeler's P(a better) (AlpacaEval 2's default) rather than its
    argmax. Only labels whose two responses come from two different policies count. The frame
    has the columns ``win_rate_matrix`` and ``bradley_terry`` read.
    """
    cols = ["config_id", "prompt_id", "policy_a", "policy_b", "a_wins", "comparison_id"]
    if labels is None or len(labels) == 0 or "policy_a_id" not in labels:
        return pd.DataFrame({c: pd.Series(dtype=float) for c in cols})
    df = labels[labels["policy_a_id"].notna() & labels["policy_b_id"].notna() & labels["p_first"].notna()]
    pa = df["policy_a_id"].to_numpy(dtype=float)
    pb = df["policy_b_id"].to_numpy(dtype=float)
    p = df["p_first"].to_numpy(dtype=float)
    y = p if soft else np.where(p > 0.5, 1.0, np.where(p < 0.5, 0.0, 0.5))
    keep = pa != pb
    swap = pa > pb
    out = pd.DataFrame({
        "config_id": df["config_id"].to_numpy(),
        "prompt_id": df["prompt_id"].to_numpy(),
        "policy_a": np.where(swap, pb, pa).astype(np.int64),
        "policy_b": np.where(swap, pa, pb).astype(np.int64),
        "a_wins": np.where(swap, 1 - y, y),
        "comparison_id": df["comparison_id"].to_numpy() if "comparison_id" in df else np.nan,
    })
    return out[keep].reset_index(drop=True)


# ---------------------------------------------------------------------------------------------
# Agreement between annotators
# ---------------------------------------------------------------------------------------------

def kendalls_w(rankings):
    """Kendall's coefficient of concordance W for each item ranked by two or more annotators.

    ``rankings``: rows like ``ranking_frame``. The "objects" of an item are its samples; only
    rankings that rank every sample of the item count (W needs complete rankings). Ranks are
    re-ranked within each ranking (so any ordinal scale works) and ties corrected for. W = 1:
    everyone agrees; 0: no agreement. Returns (summary dict, per-item frame).
    """
    item_cols = ["round_id", "item_id"] if rankings is not None and "round_id" in rankings else ["item_id"]
    empty_items = pd.DataFrame(columns=[*item_cols, "n_raters", "n_objects", "w"])
    if rankings is None or len(rankings) == 0:
        return _w_summary(empty_items), empty_items
    df = rankings[rankings["rank"].notna()][[*item_cols, "ranking_id", "sample_id", "rank"]]
    df = df.drop_duplicates(["ranking_id", "sample_id"])
    m_item = df.groupby(item_cols)["sample_id"].transform("nunique")
    k_rank = df.groupby("ranking_id")["sample_id"].transform("size")
    df = df[(k_rank == m_item) & (m_item >= 2)].copy()
    if len(df) == 0:
        return _w_summary(empty_items), empty_items
    df["r"] = df.groupby("ranking_id")["rank"].rank(method="average")
    # Tie correction: sum over tie groups of t^3 - t, per ranking.
    tsize = df.groupby(["ranking_id", "r"])["r"].transform("size").astype(float)
    df["t"] = (tsize ** 3 - tsize) / tsize     # each tied member carries its share
    per_obj = df.groupby([*item_cols, "sample_id"], sort=False)["r"].sum().rename("R").reset_index()
    items = df.groupby(item_cols).agg(n_raters=("ranking_id", "nunique"), n_objects=("sample_id", "nunique"),
                                      T=("t", "sum")).reset_index()
    per_obj = per_obj.merge(items, on=item_cols)
    per_obj["dev2"] = (per_obj["R"] - per_obj["n_raters"] * (per_obj["n_objects"] + 1) / 2) ** 2
    s = per_obj.groupby(item_cols)["dev2"].sum().rename("S").reset_index()
    items = items.merge(s, on=item_cols)
    n, m = items["n_raters"].astype(float), items["n_objects"].astype(float)
    denom = n ** 2 * (m ** 3 - m) - n * items["T"]
    with np.errstate(invalid="ignore", divide="ignore"):
        items["w"] = np.where(denom > 0, 12 * items["S"] / denom, np.nan)
    items = items[items["n_raters"] >= 2][[*item_cols, "n_raters", "n_objects", "w"]].reset_index(drop=True)
    return _w_summary(items), items


def _w_summary(items):
    w = items["w"].dropna().to_numpy(dtype=float) if len(items) else np.array([])
    if len(w) == 0:
        return {"mean_w": float("nan"), "median_w": float("nan"), "ci_low": float("nan"),
                "ci_high": float("nan"), "n_items": 0}
    se = w.std(ddof=1) / np.sqrt(len(w)) if len(w) > 1 else float("nan")
    return {"mean_w": float(w.mean()), "median_w": float(np.median(w)),
            "ci_low": float(w.mean() - Z95 * se), "ci_high": float(w.mean() + Z95 * se), "n_items": int(len(w))}


def harmless_alpha(rankings):
    """Krippendorff's alpha (nominal) of harmless/harmful judgments of the same responses.

    Units are responses (samples) within a round; a unit needs two or more judgments to count.
    Uses the ``krippendorff`` package on a units x {harmful, harmless} count matrix.
    """
    empty = {"alpha": float("nan"), "n_units": 0, "n_judgments": 0}
    if rankings is None or len(rankings) == 0 or "harmless" not in rankings:
        return empty
    df = rankings[rankings["harmless"].notna()]
    unit_cols = ["round_id", "sample_id"] if "round_id" in df else ["sample_id"]
    if len(df) == 0:
        return empty
    ok = df["harmless"].astype(bool).to_numpy()
    unit, n_all = _group_codes(df, unit_cols)
    vc = np.stack([np.bincount(unit, weights=(~ok).astype(float), minlength=n_all),
                   np.bincount(unit, weights=ok.astype(float), minlength=n_all)], axis=1)
    vc = vc[vc.sum(axis=1) >= 2]
    n_units, n_judg = int(len(vc)), int(vc.sum())
    if n_units == 0:
        return {"alpha": float("nan"), "n_units": 0, "n_judgments": 0}
    # With one category in use there is no expected disagreement: alpha is undefined.
    if (vc.sum(axis=0) > 0).sum() < 2:
        return {"alpha": float("nan"), "n_units": n_units, "n_judgments": n_judg}
    alpha = krippendorff.alpha(value_counts=vc, level_of_measurement="nominal")
    return {"alpha": float(alpha), "n_units": n_units, "n_judgments": n_judg}


def pairwise_agreement(outcomes):
    """Share of pairs of annotators who agree on which of two responses is better.

    For each pair of samples judged by several annotators, every two annotators either agree
    or not; the paper's human-human agreement (73-77%) is this figure. Returns agreement rate,
    the number of annotator pairs and of response pairs it comes from.
    """
    empty = {"agreement": float("nan"), "n_annotator_pairs": 0, "n_response_pairs": 0}
    if outcomes is None or len(outcomes) == 0:
        return empty
    df = outcomes[outcomes["a_wins"] != 0.5]
    if len(df) == 0:
        return empty
    key, n_keys = _group_codes(df, ["sample_a", "sample_b"])
    w = np.bincount(key, weights=df["a_wins"].to_numpy(dtype=float), minlength=n_keys)
    n = np.bincount(key, minlength=n_keys).astype(float)
    w, n = w[n >= 2], n[n >= 2]
    if len(n) == 0:
        return empty
    agree = w * (w - 1) / 2 + (n - w) * (n - w - 1) / 2
    total = n * (n - 1) / 2
    return {"agreement": float(agree.sum() / total.sum()), "n_annotator_pairs": int(total.sum()),
            "n_response_pairs": int(len(n))}


# ---------------------------------------------------------------------------------------------
# Length
# ---------------------------------------------------------------------------------------------

def length_table(rankings, names=None):
    """Mean response length per policy (each response counted once, however often it was judged)."""
    cols = ["policy", "policy_name", "n_responses", "mean_chars", "median_chars", "mean_tokens"]
    if rankings is None or len(rankings) == 0:
        return pd.DataFrame({c: pd.Series(dtype=float) for c in cols})
    df = rankings.drop_duplicates("sample_id") if "sample_id" in rankings else rankings
    g = df.groupby("policy_id", sort=True)
    out = pd.DataFrame({
        "n_responses": g.size(),
        "mean_chars": g["response_chars"].mean(),
        "median_chars": g["response_chars"].median(),
        "mean_tokens": g["response_tokens"].mean() if "response_tokens" in df else np.nan,
    }).reset_index().rename(columns={"policy_id": "policy"})
    names = names if names is not None else _policy_names(rankings)
    out["policy_name"] = [names.get(_py(i), f"policy {_py(i)}") for i in out["policy"]]
    return out[cols]


def length_controlled_win_rates(outcomes, length="tokens", confidence=0.95, names=None,
                                cluster="prompt_id", max_iter=50):
    """Win rate at equal length: per pair, logistic regression of the outcome on log length ratio.

    For each pair of policies fit P(a wins) = s(b0 + b1 log(len_a / len_b)) (ties as 0.5) and
    read it off at ratio 1: s(b0). Its interval is s(b0 +- t se(b0)) with prompt-clustered
    standard errors; numbers match statsmodels ``GLM(Binomial).fit(cov_type='cluster')``.
    ``length``: 'tokens' or 'chars' (tokens fall back to chars where missing). Returns one row
    per ordered pair with the raw win rate beside it and the length slope ``b1``. Where the
    length ratio is the same in every outcome of a pair, the slope cannot be fitted: at ratio 1
    the raw win rate is the answer; at any other ratio there is none (NaN).
    """
    cols = ["policy", "opponent", "policy_name", "opponent_name", "n", "win_rate", "lc_win_rate",
            "ci_low", "ci_high", "length_coef", "length_coef_se", "mean_log_ratio"]
    if outcomes is None or len(outcomes) == 0:
        return pd.DataFrame({c: pd.Series(dtype=float) for c in cols})
    la, lb = (outcomes["tokens_a"], outcomes["tokens_b"]) if length == "tokens" else \
        (outcomes["chars_a"], outcomes["chars_b"])
    if length == "tokens":
        la = la.where(la.notna() & (la > 0), outcomes["chars_a"])
        lb = lb.where(lb.notna() & (lb > 0), outcomes["chars_b"])
    la = la.to_numpy(dtype=float)
    lb = lb.to_numpy(dtype=float)
    ok = (la > 0) & (lb > 0)
    df = outcomes[ok]
    x = np.log(la[ok] / lb[ok])
    y = df["a_wins"].to_numpy(dtype=float)
    pa, pb = df["policy_a"].to_numpy(), df["policy_b"].to_numpy()
    policies = np.unique(np.r_[pa, pb])
    k = len(policies)
    codes, pair = np.unique(np.searchsorted(policies, pa) * k + np.searchsorted(policies, pb),
                            return_inverse=True)
    pair = pair.ravel()
    q = len(codes)
    pair_codes = np.c_[policies[codes // k], policies[codes % k]]

    def psum(v):
        return np.bincount(pair, weights=v, minlength=q)

    n = psum(np.ones_like(y))
    # x with no spread cannot be separated from the intercept: fit the intercept alone there.
    xbar = psum(x) / n
    xvar = psum(x * x) / n - xbar ** 2
    has_slope = xvar > 1e-12
    xs = np.where(has_slope[pair], x, 0.0)
    beta = np.zeros((q, 2))
    ridge = 1e-8
    for _ in range(max_iter):
        eta = beta[pair, 0] + beta[pair, 1] * xs
        p = _sigmoid(eta)
        w = p * (1 - p)
        r = y - p
        g0, g1 = psum(r), psum(r * xs)
        h00, h01, h11 = psum(w) + ridge, psum(w * xs), psum(w * xs * xs) + ridge
        det = h00 * h11 - h01 ** 2
        d0 = (h11 * g0 - h01 * g1) / det
        d1 = (h00 * g1 - h01 * g0) / det
        d1 = np.where(has_slope, d1, 0.0)
        step = np.c_[d0, d1]
        big = np.abs(step).max(axis=1, keepdims=True)
        step *= np.minimum(1.0, 5.0 / np.maximum(big, 1e-300))
        beta += step
        if big.max() < 1e-10:
            break
    eta = beta[pair, 0] + beta[pair, 1] * xs
    p = _sigmoid(eta)
    w = p * (1 - p)
    h00, h01, h11 = psum(w), psum(w * xs), psum(w * xs * xs)
    r = y - p
    clusters = df[cluster].to_numpy() if cluster in df else np.arange(len(df))
    g_idx, _ = pd.factorize(clusters, use_na_sentinel=False)
    cell = g_idx.astype(np.int64) * q + pair
    cell_idx, cell_codes = pd.factorize(cell)
    s0 = np.bincount(cell_idx, weights=r)
    s1 = np.bincount(cell_idx, weights=r * xs)
    cell_pair = cell_codes % q
    m00 = np.bincount(cell_pair, weights=s0 * s0, minlength=q)
    m01 = np.bincount(cell_pair, weights=s0 * s1, minlength=q)
    m11 = np.bincount(cell_pair, weights=s1 * s1, minlength=q)
    g = np.bincount(cell_pair, minlength=q).astype(float)
    k_params = np.where(has_slope, 2.0, 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = g / (g - 1) * (n - 1) / (n - k_params)
        # Bread = H^-1 (2x2, or 1x1 for intercept-only pairs); sandwich V = B M B * corr.
        det = h00 * h11 - h01 ** 2
        b00, b01, b11 = h11 / det, -h01 / det, h00 / det
        v00_full = (b00 * b00 * m00 + 2 * b00 * b01 * m01 + b01 * b01 * m11) * corr
        v11_full = (b01 * b01 * m00 + 2 * b01 * b11 * m01 + b11 * b11 * m11) * corr
        v00 = np.where(has_slope, v00_full, m00 / h00 ** 2 * corr)
        v11 = np.where(has_slope, v11_full, np.nan)
        se0, se1 = np.sqrt(v00), np.sqrt(v11)
        tcrit = stats.t.ppf(0.5 + confidence / 2, df=np.maximum(g - 1, 1))
    tcrit = np.where(g >= 2, tcrit, np.nan)
    lc = _sigmoid(beta[:, 0])
    lo, hi = _sigmoid(beta[:, 0] - tcrit * se0), _sigmoid(beta[:, 0] + tcrit * se0)
    # A pair whose length ratio never varies but is not 1 (e.g. one fixed sample per policy each
    # longer than the other's) cannot tell length from policy: no length-controlled estimate.
    unidentified = ~has_slope & (np.abs(xbar) > 1e-9)
    lc, lo, hi = (np.where(unidentified, np.nan, v) for v in (lc, lo, hi))
    raw = psum(y) / n
    slope = np.where(has_slope, beta[:, 1], np.nan)
    a_ids, b_ids = pair_codes[:, 0], pair_codes[:, 1]
    half = pd.DataFrame({"policy": a_ids, "opponent": b_ids, "n": n, "win_rate": raw, "lc_win_rate": lc,
                         "ci_low": lo, "ci_high": hi, "length_coef": slope, "length_coef_se": se1,
                         "mean_log_ratio": xbar})
    mirror = pd.DataFrame({"policy": b_ids, "opponent": a_ids, "n": n, "win_rate": 1 - raw,
                           "lc_win_rate": 1 - lc, "ci_low": 1 - hi, "ci_high": 1 - lo,
                           "length_coef": slope, "length_coef_se": se1, "mean_log_ratio": -xbar})
    out = pd.concat([half, mirror], ignore_index=True)
    names = names or {}
    out["policy_name"] = [names.get(_py(i), f"policy {_py(i)}") for i in out["policy"]]
    out["opponent_name"] = [names.get(_py(i), f"policy {_py(i)}") for i in out["opponent"]]
    return out[cols].sort_values(["policy", "opponent"], ignore_index=True)


# ---------------------------------------------------------------------------------------------
# Progress and the whole report
# ---------------------------------------------------------------------------------------------

def annotator_counts(rankings):
    """Per annotator: rankings submitted, items, responses marked harmful, first/last submission."""
    cols = ["annotator_id", "rankings", "items", "judgments", "harmful", "first_at", "last_at"]
    if rankings is None or len(rankings) == 0:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in cols})
    df = rankings.assign(_harmful=(rankings["harmless"] == False) if "harmless" in rankings else False)  # noqa: E712
    g = df.groupby("annotator_id", sort=True)
    out = pd.DataFrame({
        "rankings": g["ranking_id"].nunique(),
        "items": g["item_id"].nunique(),
        "judgments": g.size(),
        "harmful": g["_harmful"].sum().astype(int),
        "first_at": g["created_at"].min() if "created_at" in df else pd.NaT,
        "last_at": g["created_at"].max() if "created_at" in df else pd.NaT,
    }).reset_index()
    return out[cols].sort_values("rankings", ascending=False, ignore_index=True)


def round_report(rankings, labels=None, n_boot=1000, n_boot_bt=100, confidence=0.95, seed=0):
    """Every table of an evaluation round's report from its ranking frame (and AI labels).

    Returns a dict of DataFrames / dicts keyed by table name; the report pages and the
    benchmark both call this.
    """
    names = _policy_names(rankings)
    outcomes = pairwise_outcomes(rankings)
    cells = _PairCells(outcomes) if len(outcomes) else None   # shared by win rates and ratings
    ratings, predicted = bradley_terry(outcomes, n_boot=n_boot_bt, confidence=confidence, seed=seed + 1,
                                       names=names, cells=cells)
    w_summary, w_items = kendalls_w(rankings)
    report = {
        "outcomes_n": int(len(outcomes)),
        "win_rates": win_rate_matrix(outcomes, n_boot=n_boot, confidence=confidence, seed=seed, names=names,
                                     cells=cells),
        "bt_ratings": ratings,
        "bt_predicted": predicted,
        "harmless": harmless_rates(rankings, confidence=confidence, names=names),
        "length": length_table(rankings, names=names),
        "length_controlled": length_controlled_win_rates(outcomes, confidence=confidence, names=names),
        "kendalls_w": w_summary,
        "kendalls_w_items": w_items,
        "harmless_alpha": harmless_alpha(rankings),
        "pairwise_agreement": pairwise_agreement(outcomes),
        "annotators": annotator_counts(rankings),
    }
    if labels is not None:
        report["alignment"] = alignment_by_config(labels, confidence=confidence)
    return report
