"""Report tables and chart data from the statistics core's frames (plain Python: no Django).

The views call these and hand the results to templates; the same frames are exported as CSV
and JSON, so what a researcher downloads is exactly what the page shows (unrounded).
"""
import json
import math
import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from evalsite import stats


# --- formatting -------------------------------------------------------------------------------

def _nan(v):
    return v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NaT or (
        isinstance(v, (np.floating,)) and np.isnan(v))


def fmt_pct(v, digits=1):
    return "–" if _nan(v) else f"{100 * float(v):.{digits}f}%"


def fmt_float(v, digits=2):
    return "–" if _nan(v) else f"{float(v):.{digits}f}"


def fmt_int(v):
    return "–" if _nan(v) else f"{int(round(float(v))):,}"


def fmt_p(v):
    if _nan(v):
        return "–"
    v = float(v)
    return "<0.001" if v < 0.001 else f"{v:.3f}"


def fmt_text(v):
    if _nan(v):
        return "–"
    if isinstance(v, pd.Timestamp):
        return v.strftime("%Y-%m-%d %H:%M")
    return str(v)


def fmt_time(v):
    return "–" if _nan(v) else pd.Timestamp(v).strftime("%m-%d %H:%M")


def _ci(fn):
    def fmt(rec):
        lo, hi = rec.get("ci_low"), rec.get("ci_high")
        return "–" if _nan(lo) or _nan(hi) else f"{fn(lo)} – {fn(hi)}"
    return fmt


# Formats of a whole record (an interval shown in one cell; exports keep both columns).
RECORD_FORMATS = {"ci_pct": _ci(fmt_pct), "ci_rating": _ci(lambda v: fmt_float(v, 0)),
                  "ci_float3": _ci(lambda v: fmt_float(v, 3))}

FORMATS = {"pct": fmt_pct, "float": fmt_float, "float3": lambda v: fmt_float(v, 3), "int": fmt_int,
           "float4": lambda v: fmt_float(v, 4),
           "p": fmt_p, "text": fmt_text, "time": fmt_time,
           "pct100": lambda v: "–" if _nan(v) else f"{float(v):.1f}%", "rating": lambda v: fmt_float(v, 0)}


@dataclass
class Table:
    """A named table: its full frame (exported) and the columns shown, with their formats."""

    name: str
    title: str
    frame: pd.DataFrame
    columns: list = field(default_factory=list)   # (column, heading, format)
    note: str = ""
    csv_url: str = ""
    json_url: str = ""

    @property
    def empty(self):
        return self.frame is None or len(self.frame) == 0

    def headings(self):
        return [h for _, h, _ in self.columns]

    def rows(self):
        if self.empty:
            return []
        out = []
        for rec in self.frame.to_dict("records"):
            out.append([RECORD_FORMATS[f](rec) if f in RECORD_FORMATS else FORMATS[f](rec.get(c))
                        for c, _, f in self.columns])
        return out


# A spreadsheet runs a cell that starts with one of these as a formula (a policy named
# "=HYPERLINK(...)" would become a link, or worse). OWASP's advice: put a quote in front.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def spreadsheet_safe(value):
    """Text that a spreadsheet would read as a formula, with a ``'`` in front; anything else as is.

    Numbers stay numbers: only text is changed, and text that is a plain number ("-0.5") too
    is left alone, since a spreadsheet reads it as that number and nothing more.
    """
    if isinstance(value, str) and value.startswith(FORMULA_STARTS) and not _PLAIN_NUMBER.fullmatch(value):
        return "'" + value
    return value


def to_csv(frame):
    """The frame as CSV, safe to open in a spreadsheet: text cells and headings pass through
    spreadsheet_safe; numeric and date columns are written as they are."""
    safe = frame.copy(deep=False)
    for i in range(frame.shape[1]):
        column = frame.iloc[:, i]
        if not (pd.api.types.is_numeric_dtype(column) or pd.api.types.is_datetime64_any_dtype(column)
                or pd.api.types.is_timedelta64_dtype(column)):
            safe.isetitem(i, column.map(spreadsheet_safe))
    safe.columns = [spreadsheet_safe(c) for c in frame.columns]
    # CRLF line ends (RFC 4180): the writer then also quotes a cell holding a lone "\r".
    return safe.to_csv(index=False, lineterminator="\r\n")


def _jsonable(v):
    if _nan(v):
        return None
    if isinstance(v, pd.Timestamp):
        return v.isoformat()
    if isinstance(v, np.generic):
        return v.item()
    return v


def to_records(frame):
    return [{k: _jsonable(v) for k, v in rec.items()} for rec in frame.to_dict("records")]


def to_json(frame):
    return json.dumps(to_records(frame), indent=1)


def summary_frame(d):
    """A dict of figures as a one-row frame (so summaries export like tables)."""
    return pd.DataFrame([{k: _jsonable(v) for k, v in d.items()}])


# --- the tables of a round -------------------------------------------------------------------

def round_tables(report):
    """Every table of an evaluation round's report (``stats.round_report``) by export name."""
    wr = report["win_rates"]
    annotators = report["annotators"]
    if "annotator" not in annotators:
        annotators = annotators.assign(annotator=annotators["annotator_id"].astype(str))
    agreement = {
        **{f"kendalls_w_{k}": v for k, v in report["kendalls_w"].items()},
        **{f"harmless_{k}": v for k, v in report["harmless_alpha"].items()},
        **{f"pairwise_{k}": v for k, v in report["pairwise_agreement"].items()},
    }
    tables = [
        Table("win_rates", "Win rates", wr, [
            ("policy_name", "Policy", "text"), ("opponent_name", "vs", "text"), ("win_rate", "Win rate", "pct"),
            ("ci", "95% CI", "ci_pct"), ("wins", "Wins", "int"),
            ("losses", "Losses", "int"), ("ties", "Ties", "int"), ("n_prompts", "Prompts", "int"),
            ("p_value", "p (vs 50%)", "p")],
            "Share of pairwise outcomes the policy won; intervals resample prompts (bootstrap); the p-value "
            "tests 50% with prompt-clustered standard errors."),
        Table("bt_ratings", "Bradley–Terry ratings", report["bt_ratings"], [
            ("rank", "Rank", "int"), ("policy_name", "Policy", "text"), ("rating", "Rating", "rating"),
            ("ci", "95% CI", "ci_rating"), ("n", "Outcomes", "int")],
            "All policies fitted together (Elo scale: +400 = 10:1 odds; mean 1000); intervals from a prompt "
            "bootstrap, as Chatbot Arena."),
        Table("bt_predicted", "Predicted win probability (Bradley–Terry)", report["bt_predicted"], [
            ("policy_name", "Policy", "text"), ("opponent_name", "vs", "text"), ("p_win", "P(win)", "pct"),
            ("ci", "95% CI", "ci_pct")]),
        Table("harmless", "Harmless rate", report["harmless"], [
            ("policy_name", "Policy", "text"), ("harmless_rate", "Rate", "pct"), ("ci", "95% CI", "ci_pct"),
            ("harmless", "Harmless", "int"), ("harmful", "Harmful", "int"),
            ("n_responses", "Responses", "int")],
            "Share of harmlessness judgments that said harmless; Wilson intervals."),
        Table("length", "Response length", report["length"], [
            ("policy_name", "Policy", "text"), ("mean_chars", "Mean characters", "float"),
            ("median_chars", "Median characters", "float"), ("mean_tokens", "Mean tokens", "float"),
            ("n_responses", "Responses", "int")]),
        Table("length_controlled", "Length-controlled win rates", report["length_controlled"], [
            ("policy_name", "Policy", "text"), ("opponent_name", "vs", "text"), ("win_rate", "Win rate", "pct"),
            ("lc_win_rate", "At equal length", "pct"), ("ci", "95% CI", "ci_pct"),
            ("length_coef", "Length effect", "float"), ("mean_log_ratio", "Mean log length ratio", "float"),
            ("n", "Outcomes", "int")],
            "Logistic regression of the outcome on log(length ratio), read off at equal length; the length "
            "effect is the change in log-odds per unit of log ratio. “–”: the length ratio of the pair never "
            "varies, so length cannot be separated from the policy."),
        Table("agreement", "Agreement between annotators", summary_frame(agreement), [
            ("kendalls_w_mean_w", "Kendall's W (mean)", "float3"), ("kendalls_w_ci_low", "W 95% CI low", "float3"),
            ("kendalls_w_ci_high", "W 95% CI high", "float3"), ("kendalls_w_n_items", "Items", "int"),
            ("harmless_alpha", "Krippendorff's α (harmless)", "float3"), ("harmless_n_units", "Responses", "int"),
            ("pairwise_agreement", "Pairwise agreement", "pct"),
            ("pairwise_n_annotator_pairs", "Annotator pairs", "int")],
            "Kendall's W over items ranked by two or more annotators (the paper reports 0.6–0.7); α over "
            "responses judged by two or more; pairwise agreement = share of two annotators who order a pair "
            "the same way (paper: 73–77%)."),
        Table("agreement_items", "Kendall's W per item", report["kendalls_w_items"], [
            ("item_id", "Item", "int"), ("n_raters", "Raters", "int"), ("n_objects", "Responses", "int"),
            ("w", "W", "float3")]),
        Table("annotators", "Annotators", annotators, [
            ("annotator", "Annotator", "text"), ("rankings", "Rankings", "int"), ("items", "Items", "int"),
            ("harmful", "Marked harmful", "int"), ("first_at", "First", "time"), ("last_at", "Last", "time")]),
    ]
    if "alignment" in report:
        tables.append(alignment_table(report["alignment"]))
    return {t.name: t for t in tables}


def alignment_table(alignment):
    bounded = "n_bounded" in alignment.columns  # the labelers page adds it (labeling.data.usage_by_config)
    return Table("alignment", "AI-labeler alignment with humans", alignment, [
        ("config_name", "Labeler config", "text"), ("accuracy", "Alignment", "pct"), ("ci", "95% CI", "ci_pct"),
        ("n", "Pairs", "int"), ("ties_excluded", "Human ties left out", "int"),
        ("unlabeled_excluded", "No human label", "int"), ("same_position_pct", "Same position", "pct100"),
        ("first_slot_share", "First-slot share", "pct"), ("n_both_orders", "Scored both orders", "int"),
        ("mean_label_mass", "Mass on 1/2", "float3"), ("judge_accuracy", "Agrees with dataset judge", "pct"),
        ("judge_n", "Judged pairs", "int")] + ([("n_bounded", "Bounded labels", "int")] if bounded else []),
        "Accuracy of the labeler's argmax against the human preference (the annotators' majority where "
        "several ranked the pair); Wilson intervals. Same position: pairs where the labeler picked the "
        "same slot in both orders (paper: PaLM 2 L 18%, XS 56%); first-slot share: how often a single order's "
        "judgment chose the response shown first. Dataset judge: the external AI judge some datasets ship "
        "(e.g. GPT-4 on TL;DR), never counted as human."
        + (" Bounded labels: a label token was not among a server's top alternatives, so the label is an "
           "estimate within bounds (counted here, not left out)." if bounded else ""))


def usage_table(usage):
    return Table("usage", "Tokens and cost", usage, [
        ("config_name", "Labeler config", "text"), ("backend", "Backend", "text"), ("n_labels", "Labels", "int"),
        ("n_bounded", "Bounded labels", "int"), ("prompt_tokens", "Prompt tokens", "int"),
        ("completion_tokens", "Completion tokens", "int"), ("price_prompt_per_mtok", "$ / M prompt", "float"),
        ("price_completion_per_mtok", "$ / M completion", "float"), ("cost_usd", "Cost ($)", "float4")],
        "Tokens of the stored labels as the server counted them (its usage; counted locally where it gives "
        "none), priced at each config's prices per million tokens (– where the config has none). Pairs a "
        "config dropped are in its runs' totals, not here.")


# --- heatmap and charts ----------------------------------------------------------------------

def heat_colour(rate):
    """Diverging colour: blue above 50%, red below, white at 50% (readable with dark text)."""
    if _nan(rate):
        return "#f3f4f7"
    d = max(-1.0, min(1.0, (float(rate) - 0.5) * 2))
    hue = 220 if d > 0 else 0
    light = 97 - 40 * abs(d)
    return f"hsl({hue}, 70%, {light:.0f}%)"


def heatmap(win_rates, value="win_rate"):
    """Rows of a policy x opponent win-rate table with cell colours, intervals and tooltips."""
    if win_rates is None or len(win_rates) == 0:
        return None
    names = sorted(set(win_rates["policy_name"]) | set(win_rates["opponent_name"]), key=str)
    by = {(r["policy_name"], r["opponent_name"]): r for r in win_rates.to_dict("records")}
    rows = []
    for a in names:
        cells = []
        for b in names:
            r = by.get((a, b))
            if a == b or r is None:
                cells.append({"diagonal": a == b, "text": "", "ci": "", "style": "", "title": ""})
                continue
            significant = not _nan(r.get("p_value")) and r["p_value"] < 0.05
            cells.append({
                "text": fmt_pct(r[value], 0),
                "ci": f"{fmt_pct(r['ci_low'], 0)}–{fmt_pct(r['ci_high'], 0)}",
                "style": f"background:{heat_colour(r[value])}",
                "significant": significant,
                "title": (f"{a} vs {b}: {fmt_pct(r[value])} (95% CI {fmt_pct(r['ci_low'])}–{fmt_pct(r['ci_high'])}), "
                          f"{fmt_int(r['n'])} outcomes over {fmt_int(r['n_prompts'])} prompts, p = {fmt_p(r['p_value'])}"),
            })
        rows.append({"name": a, "cells": cells})
    return {"names": names, "rows": rows}


def interval_chart(chart_id, title, labels, estimate, low, high, unit="%", reference=None, axis_label=""):
    """Data for a horizontal interval chart: a bar from low to high and a point at the estimate."""
    scale = 100.0 if unit == "%" else 1.0

    def clean(values):
        return [None if _nan(v) else round(float(v) * scale, 4) for v in values]

    return {"id": chart_id, "kind": "interval", "title": title, "labels": [str(x) for x in labels],
            "estimate": clean(estimate), "low": clean(low), "high": clean(high), "unit": unit,
            "reference": None if reference is None else reference * scale, "axis_label": axis_label}


def round_charts(report):
    charts = []
    r = report["bt_ratings"]
    if len(r):
        charts.append(interval_chart("chart-bt", "Bradley–Terry rating (95% CI)", r["policy_name"], r["rating"],
                                     r["ci_low"], r["ci_high"], unit="", reference=1000, axis_label="rating"))
    h = report["harmless"]
    if len(h):
        charts.append(interval_chart("chart-harmless", "Harmless rate (95% CI)", h["policy_name"],
                                     h["harmless_rate"], h["ci_low"], h["ci_high"], axis_label="% harmless"))
    lc = report["length_controlled"]
    if len(lc) and lc["lc_win_rate"].notna().any():
        half = lc[(lc["policy"] < lc["opponent"]) & lc["lc_win_rate"].notna()]
        labels = [f"{a} vs {b}" for a, b in zip(half["policy_name"], half["opponent_name"])]
        chart = interval_chart("chart-lc", "Win rate at equal length (95% CI) and raw win rate", labels,
                               half["lc_win_rate"], half["ci_low"], half["ci_high"], reference=0.5,
                               axis_label="% won")
        chart["estimate_label"] = "at equal length"
        chart["raw"] = [None if _nan(v) else round(100 * float(v), 4) for v in half["win_rate"]]
        charts.append(chart)
    return charts


def alignment_chart(alignment):
    if alignment is None or len(alignment) == 0:
        return None
    return interval_chart("chart-alignment", "Alignment with humans (95% CI)", alignment["config_name"],
                          alignment["accuracy"], alignment["ci_low"], alignment["ci_high"], reference=0.5,
                          axis_label="% agreeing with humans")


def progress_chart(rankings):
    """Cumulative rankings over time (one point per submission, thinned to ~200 points)."""
    if rankings is None or len(rankings) == 0 or "created_at" not in rankings:
        return None
    times = rankings.drop_duplicates("ranking_id")["created_at"].dropna().sort_values()
    if len(times) == 0:
        return None
    idx = np.unique(np.linspace(0, len(times) - 1, min(len(times), 200)).astype(int))
    return {"id": "chart-progress", "kind": "line", "title": "Rankings submitted over time",
            "series": [{"label": "rankings", "points": [
                {"x": pd.Timestamp(times.iloc[i]).isoformat(), "y": int(i + 1)} for i in idx]}],
            "time": True, "axis_label": "rankings"}


def job_curves(metric_rows, job_labels=None):
    """One line chart per metric key from JobMetric rows ``(job_id, step, values)``.

    Several jobs' curves of the same key share a chart, so training runs can be compared.
    """
    job_labels = job_labels or {}
    by_key = {}
    for job_id, step, values in metric_rows:
        for key, v in (values or {}).items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or _nan(v) or math.isinf(v):
                continue
            by_key.setdefault(key, {}).setdefault(job_id, []).append({"x": step, "y": float(v)})
    charts = []
    for i, (key, series) in enumerate(sorted(by_key.items())):
        charts.append({"id": f"chart-curve-{i}", "kind": "line", "title": key, "axis_label": key, "time": False,
                       "series": [{"label": job_labels.get(j, f"job {j}"), "points": sorted(pts, key=lambda p: p["x"])}
                                  for j, pts in series.items()]})
    return charts


def metrics_frame(metric_rows):
    """JobMetric rows as a wide frame: job_id, step, then one column per metric key."""
    records = [{"job_id": j, "step": s, **(v or {})} for j, s, v in metric_rows]
    return pd.DataFrame(records) if records else pd.DataFrame(columns=["job_id", "step"])


# --- labelers ----------------------------------------------------------------------------------

def labeler_report(labels, pair_prefs=None, n_boot=1000, seed=0, policy_names=None):
    """Alignment per config (humans' majority filled in), and the AI-judge win rates per config."""
    if pair_prefs is not None and len(pair_prefs):
        labels = stats.attach_human_majority(labels, stats.human_majority(pair_prefs))
    alignment = stats.alignment_by_config(labels)
    judge = []
    outcomes = stats.ai_judge_outcomes(labels)
    if len(outcomes):
        names = dict(zip(labels["config_id"], labels["config_name"]))
        for cid, sub in outcomes.groupby("config_id", sort=True):
            wr = stats.win_rate_matrix(sub, n_boot=n_boot, seed=seed, names=policy_names)
            wr.insert(0, "config_name", names.get(cid, str(cid)))
            wr.insert(0, "config_id", cid)
            judge.append(wr)
    judge = pd.concat(judge, ignore_index=True) if judge else pd.DataFrame(
        columns=["config_id", "config_name", *stats.WIN_RATE_COLUMNS])
    return {"alignment": alignment, "ai_judge": judge}


def ai_judge_table(judge):
    return Table("ai_judge", "AI-judge win rates", judge, [
        ("config_name", "Labeler config", "text"), ("policy_name", "Policy", "text"), ("opponent_name", "vs", "text"),
        ("win_rate", "Win rate", "pct"), ("ci", "95% CI", "ci_pct"),
        ("n", "Labels", "int"), ("n_prompts", "Prompts", "int"), ("p_value", "p (vs 50%)", "p")],
        "From AI labels between two policies' samples (soft: the labeler's probability counts), like "
        "AlpacaEval: a cheap estimate before people rate. Intervals resample prompts.")
