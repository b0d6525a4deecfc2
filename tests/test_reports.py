"""Report pages: view helpers on frames, then the pages through the real models and database."""
import csv
import io
import json
import re
import uuid

import numpy as np
import pandas as pd
import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse

from evalsite import stats
from evalsite.jobs.models import Job, JobMetric
from evalsite.reports import tables as T
from evalsite.reports import views as V
from tests.test_stats import label_rows, simulated


# --- helpers on frames (no database) -----------------------------------------------------------

def test_round_tables_show_the_report_numbers_and_export_them_unrounded():
    report = stats.round_report(simulated(n_prompts=30), n_boot=50, n_boot_bt=10)
    tables = T.round_tables(report)
    assert {"win_rates", "bt_ratings", "bt_predicted", "harmless", "length", "length_controlled", "agreement",
            "agreement_items", "annotators"} <= set(tables)
    wr = tables["win_rates"]
    first = wr.frame.iloc[0]
    row = wr.rows()[0]
    assert row[0] == first["policy_name"] and row[2] == f"{100 * first['win_rate']:.1f}%"
    parsed = list(csv.DictReader(io.StringIO(T.to_csv(wr.frame))))
    assert len(parsed) == len(wr.frame) == 12
    assert float(parsed[0]["win_rate"]) == pytest.approx(first["win_rate"], rel=1e-12)
    records = json.loads(T.to_json(tables["agreement"].frame))
    assert records[0]["kendalls_w_mean_w"] == pytest.approx(report["kendalls_w"]["mean_w"])
    assert records[0]["kendalls_w_n_items"] == 30
    ratings = json.loads(T.to_json(tables["bt_ratings"].frame))
    assert [r["rank"] for r in ratings] == [1, 2, 3, 4]


def test_heatmap_cells_colour_by_win_rate_and_mark_significance():
    outcomes = pd.DataFrame({"prompt_id": np.arange(60), "policy_a": 1, "policy_b": 2,
                             "a_wins": (np.arange(60) < 45).astype(float)})
    wr = stats.win_rate_matrix(outcomes, n_boot=100, names={1: "RLAIF", 2: "SFT"})
    hm = T.heatmap(wr)
    assert hm["names"] == ["RLAIF", "SFT"]
    rlaif = hm["rows"][0]["cells"]
    assert rlaif[0]["diagonal"] and rlaif[1]["text"] == "75%" and rlaif[1]["significant"]
    assert "hsl(220" in rlaif[1]["style"]                       # blue: row policy preferred
    assert "hsl(0," in hm["rows"][1]["cells"][0]["style"]       # red below 50%
    assert "45" not in rlaif[1]["ci"] and re.match(r"\d+%–\d+%", rlaif[1]["ci"])
    assert T.heat_colour(0.5) == "hsl(0, 70%, 97%)" and T.heat_colour(float("nan")) == "#f3f4f7"
    assert T.heatmap(wr.iloc[:0]) is None


def test_chart_specs_carry_estimates_and_intervals():
    report = stats.round_report(simulated(n_prompts=20), n_boot=30, n_boot_bt=10)
    charts = {c["id"]: c for c in T.round_charts(report)}
    bt = charts["chart-bt"]
    assert bt["labels"] == list(report["bt_ratings"]["policy_name"])
    assert bt["estimate"][0] == pytest.approx(report["bt_ratings"]["rating"].iloc[0], abs=1e-3)
    assert all(lo <= est <= hi for lo, est, hi in zip(bt["low"], bt["estimate"], bt["high"]))
    harmless = charts["chart-harmless"]
    assert harmless["unit"] == "%" and harmless["estimate"][0] == pytest.approx(
        100 * report["harmless"]["harmless_rate"].iloc[0], abs=1e-3)
    assert len(charts["chart-lc"]["raw"]) == 6
    json.dumps(list(charts.values()))   # what the page embeds must be valid JSON


def test_job_curves_group_numeric_metrics_by_key_and_job():
    rows = [(1, 0, {"loss": 2.0, "note": "x"}), (1, 1, {"loss": 1.5, "reward": 0.1}), (2, 0, {"loss": 3.0}),
            (2, 1, {"loss": float("nan"), "ok": True})]
    charts = T.job_curves(rows, {1: "#1 rl", 2: "#2 rl"})
    assert [c["title"] for c in charts] == ["loss", "reward"]
    loss = {s["label"]: s["points"] for s in charts[0]["series"]}
    assert loss == {"#1 rl": [{"x": 0, "y": 2.0}, {"x": 1, "y": 1.5}], "#2 rl": [{"x": 0, "y": 3.0}]}
    frame = T.metrics_frame(rows)
    assert list(frame.columns[:2]) == ["job_id", "step"] and frame["loss"].iloc[1] == 1.5


def test_labeler_report_fills_human_majority_and_computes_ai_judge_per_config():
    labels = label_rows().assign(sample_a_id=[1.0, 3, 5, 7, 1, 3, 5, 7], sample_b_id=[2.0, 4, 6, 8, 2, 4, 6, 8],
                                 policy_a_id=[10.0, 10, 11, 11, 10, 10, 11, 11],
                                 policy_b_id=[11.0, 11, 10, 10, 11, 11, 10, 10])
    labels.loc[labels["config_id"] == 2, "human_preference"] = ""
    prefs = pd.DataFrame({"sample_a_id": [1, 1, 3], "sample_b_id": [2, 2, 4], "preference": ["first", "first", "second"]})
    out = T.labeler_report(labels, prefs, n_boot=50, policy_names={10: "SFT", 11: "RLAIF"})
    cot = out["alignment"].set_index("config_name").loc["cot"]
    # cot: pairs (1,2) and (3,4) get the annotators' majority (first, second); p = 0.8, 0.7.
    assert cot["n"] == 2 and cot["accuracy"] == pytest.approx(0.5)
    judge = out["ai_judge"]
    assert set(judge["config_name"]) == {"base", "cot"}
    base = judge[(judge["config_name"] == "base") & (judge["policy_name"] == "SFT")].iloc[0]
    # base labels, oriented to SFT: 0.9, 0.2, 1 - 0.6, 1 - 0.5.
    assert base["win_rate"] == pytest.approx((0.9 + 0.2 + 0.4 + 0.5) / 4)


# --- pages through the real database ---------------------------------------------------------------

URLS = ["reports:index", "reports:labelers", "reports:jobs"]


@pytest.fixture
def annotator(db):
    return get_user_model().objects.create_user("ann-reports", password="pw-ann")


def rank_round(rnd, users, strengths, harmful=(), seed=0):
    """Annotators work through a round with the real queue: better policies tend to rank higher."""
    from evalsite.humaneval import queue
    from evalsite.models import Sample

    rng = np.random.default_rng(seed)
    policy_of = dict(Sample.objects.filter(eval_items__round=rnd).values_list("pk", "policy__name"))
    n = 0
    for user in users:
        while True:
            a = queue.next_assignment(rnd, user)
            if a is None:
                break
            score = {label: strengths[policy_of[sid]] + rng.gumbel() for label, sid in zip(a.labels, a.order)}
            order = sorted(score, key=lambda lab: -score[lab])
            ranks = {lab: i + 1 for i, lab in enumerate(order)} if rnd.asks_rank else {}
            harmless = {lab: policy_of[sid] not in harmful for lab, sid in zip(a.labels, a.order)} \
                if rnd.asks_harmless else {}
            queue.submit(a.token, user, ranks=ranks, harmless=harmless, key=uuid.uuid4().hex)
            n += 1
    return n


@pytest.fixture
def ranked_round(db):
    from tests import humaneval_demo as demo
    from evalsite.humaneval.models import EvalRound

    users = demo.make_annotators(3, prefix="rep-ann")
    rnd = demo.make_round(n_prompts=12, overlap=3, question=EvalRound.Question.BOTH, name="report round")
    n = rank_round(rnd, users, {"policy-sft": 0.0, "policy-rlhf": 0.8, "policy-rlaif": 1.0}, harmful={"policy-sft"})
    assert n == 36
    return rnd


def test_reports_are_for_researchers_only(client, annotator, researcher, ranked_round):
    job = Job.objects.create(kind="rl", name="rl run")
    urls = [reverse(u) for u in URLS] + [
        reverse("reports:round", args=[ranked_round.pk]),
        reverse("reports:round_export", args=[ranked_round.pk, "win_rates", "csv"]),
        reverse("reports:labelers_export", args=["alignment", "json"]),
        reverse("reports:job", args=[job.pk]), reverse("reports:job_export", args=[job.pk, "csv"]),
    ]
    for url in urls:
        response = client.get(url)
        assert response.status_code == 302 and "/login/" in response["Location"], url
    client.force_login(annotator)
    for url in urls:
        assert client.get(url).status_code == 403, url
    client.force_login(researcher)
    for url in urls[:5]:
        assert client.get(url).status_code == 200, url


def test_round_report_page_shows_the_numbers_of_the_real_rankings(client, researcher, ranked_round):
    from evalsite.humaneval.data import ranking_frame

    client.force_login(researcher)
    response = client.get(reverse("reports:round", args=[ranked_round.pk]) + "?boot=200")
    assert response.status_code == 200
    html = response.content.decode()
    frame = ranking_frame([ranked_round.pk])
    outcomes = stats.pairwise_outcomes(frame)
    assert len(outcomes) == 36 * 3
    wr = stats.win_rate_matrix(outcomes, n_boot=200, names=stats._policy_names(frame))
    row = wr[(wr["policy_name"] == "policy-rlaif") & (wr["opponent_name"] == "policy-sft")].iloc[0]
    assert f'<span class="rate">{100 * row["win_rate"]:.0f}%</span>' in html
    assert f"{100 * row['ci_low']:.0f}%–{100 * row['ci_high']:.0f}%" in html
    assert "36</strong> / 36 rankings" in html
    assert "Harmless rate" in html and "Kendall" in html and "rep-ann0" in html
    # SFT's responses were all marked harmful; the others all harmless.
    harmless = stats.harmless_rates(frame).set_index("policy_name")["harmless_rate"]
    assert harmless["policy-sft"] == 0.0 and harmless["policy-rlaif"] == 1.0
    charts = json.loads(re.search(r'<script id="report-charts" type="application/json">(.*?)</script>', html,
                                  re.S).group(1))
    assert {c["id"] for c in charts} >= {"chart-bt", "chart-harmless", "chart-progress"}
    # The demo gives each policy one fixed response length: length cannot be told from policy.
    assert "chart-lc" not in {c["id"] for c in charts} and "never varies" in html
    assert client.get(reverse("home")).content.decode().count(reverse("reports:index")) >= 1


def test_round_exports_match_the_page_tables(client, researcher, ranked_round):
    from evalsite.humaneval.data import ranking_frame

    client.force_login(researcher)
    base = [ranked_round.pk]
    response = client.get(reverse("reports:round_export", args=[*base, "win_rates", "csv"]) + "?boot=100")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    assert "attachment" in response["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    frame = ranking_frame(base)
    wr = stats.win_rate_matrix(stats.pairwise_outcomes(frame), n_boot=100, names=stats._policy_names(frame))
    assert len(rows) == len(wr) == 6
    for got, want in zip(rows, wr.to_dict("records")):
        assert got["policy_name"] == want["policy_name"]
        assert float(got["win_rate"]) == pytest.approx(want["win_rate"])
        assert float(got["ci_low"]) == pytest.approx(want["ci_low"])
    ratings = client.get(reverse("reports:round_export", args=[*base, "bt_ratings", "json"])).json()
    assert [r["policy_name"] for r in ratings][0] in ("policy-rlaif", "policy-rlhf")
    harmless = client.get(reverse("reports:round_export", args=[*base, "harmless", "json"])).json()
    assert {r["policy_name"]: r["harmless"] for r in harmless} == {"policy-sft": 0, "policy-rlhf": 36,
                                                                    "policy-rlaif": 36}
    progress = client.get(reverse("reports:round_export", args=[*base, "progress", "json"])).json()
    assert progress[0]["submitted"] == 36 and progress[0]["target"] == 36
    annotators = client.get(reverse("reports:round_export", args=[*base, "annotators", "csv"])).content.decode()
    assert "rep-ann1" in annotators
    assert client.get(reverse("reports:round_export", args=[*base, "nonsense", "csv"])).status_code == 404
    assert client.get(reverse("reports:round_export", args=[*base, "win_rates", "xml"])).status_code == 404


def test_round_without_rankings_says_no_data_yet(client, researcher, db):
    from tests import humaneval_demo as demo

    rnd = demo.make_round(n_prompts=3, overlap=2, name="empty round")
    client.force_login(researcher)
    html = client.get(reverse("reports:round", args=[rnd.pk]) + "?live=1").content.decode()
    assert "No data yet" in html and "0</strong> / 6 rankings" in html
    assert 'data-live="1"' in html
    index = client.get(reverse("reports:index")).content.decode()
    assert "empty round" in index and "live view" in index


def test_labelers_page_without_labels_says_no_data_yet(client, researcher, monkeypatch):
    client.force_login(researcher)
    monkeypatch.setattr(V, "load_labels", lambda config_ids=None: None)
    assert "AI feedback is not installed" in client.get(reverse("reports:labelers")).content.decode()
    monkeypatch.setattr(V, "load_labels", lambda config_ids=None: label_rows().iloc[:0])
    assert "No AI labels yet" in client.get(reverse("reports:labelers")).content.decode()


def test_labelers_page_shows_alignment_per_config_from_a_label_frame(client, researcher, monkeypatch):
    client.force_login(researcher)
    monkeypatch.setattr(V, "load_labels", lambda config_ids=None: label_rows())
    html = client.get(reverse("reports:labelers")).content.decode()
    assert "base" in html and "cot" in html and "62.5%" in html and "100.0%" in html
    data = client.get(reverse("reports:labelers_export", args=["alignment", "json"])).json()
    assert {r["config_name"]: r["accuracy"] for r in data} == {"base": 0.625, "cot": 1.0}
    assert {r["config_name"]: r["same_position_pct"] for r in data}["base"] == 50.0


def test_job_curves_page_and_export(client, researcher):
    job = Job.objects.create(kind="rl", name="rlaif run", status=Job.Status.SUCCEEDED)
    other = Job.objects.create(kind="rl", name="rlhf run", status=Job.Status.RUNNING)
    JobMetric.objects.bulk_create([JobMetric(job=job, step=s, values={"reward": 0.1 * s, "kl": 0.01 * s})
                                   for s in range(5)] + [JobMetric(job=other, step=0, values={"reward": -1.0})])
    client.force_login(researcher)
    html = client.get(reverse("reports:job", args=[job.pk])).content.decode()
    charts = json.loads(re.search(r'<script id="report-charts" type="application/json">(.*?)</script>', html,
                                  re.S).group(1))
    assert [c["title"] for c in charts] == ["kl", "reward"]
    assert charts[1]["series"][0]["points"][4] == {"x": 4, "y": pytest.approx(0.4)}
    compare = client.get(reverse("reports:jobs") + f"?ids={job.pk},{other.pk}").content.decode()
    assert "rlhf run" in compare and "update every 10 seconds" in compare
    rows = list(csv.DictReader(io.StringIO(client.get(reverse("reports:job_export", args=[job.pk, "csv"]))
                                           .content.decode())))
    assert len(rows) == 5 and float(rows[3]["reward"]) == pytest.approx(0.3)
    form = client.get(reverse("reports:jobs"), {"ids": [str(job.pk), str(other.pk)]}).content.decode()
    assert "rlaif run" in form and "rlhf run" in form and 'id="chart-curve-1"' in form
    listing = client.get(reverse("reports:jobs")).content.decode()
    assert "rlaif run" in listing and "rlhf run" in listing


def test_harmless_only_round_shows_harmless_rates_and_no_win_rates(client, researcher, db):
    from tests import humaneval_demo as demo
    from evalsite.humaneval.models import EvalRound

    users = demo.make_annotators(2, prefix="harm-ann")
    rnd = demo.make_round(n_prompts=5, overlap=2, question=EvalRound.Question.HARMLESS, name="harmless round")
    rank_round(rnd, users, {"policy-sft": 0, "policy-rlhf": 0, "policy-rlaif": 0}, harmful={"policy-sft"})
    client.force_login(researcher)
    html = client.get(reverse("reports:round", args=[rnd.pk])).content.decode()
    assert "Harmless rate" in html and 'id="chart-harmless"' in html
    assert "table class=\"heatmap\"" not in html and 'id="chart-bt"' not in html
    data = client.get(reverse("reports:round_export", args=[rnd.pk, "harmless", "json"])).json()
    assert {r["policy_name"]: (r["harmless"], r["n"]) for r in data} == {
        "policy-sft": (0, 10), "policy-rlhf": (10, 10), "policy-rlaif": (10, 10)}
    agreement = client.get(reverse("reports:round_export", args=[rnd.pk, "agreement", "json"])).json()[0]
    # Everyone agreed on every response, but with one category per policy alpha is still defined.
    assert agreement["harmless_alpha"] == pytest.approx(1.0) and agreement["harmless_n_units"] == 15


def test_labelers_page_takes_the_human_majority_from_real_rankings(client, researcher, ranked_round, monkeypatch):
    """AI labels on the round's samples, with no dataset preference: humans' majority decides."""
    from evalsite.humaneval.data import human_pair_preferences

    prefs = human_pair_preferences([ranked_round.pk])
    majority = stats.human_majority(prefs)
    decided = majority[majority["majority"] != "tie"].head(10)
    assert len(decided) == 10
    # A labeler that agrees with the majority on the first 7 pairs and disagrees on 3.
    p_first = [0.9 if (m == "first") == (i < 7) else 0.1 for i, m in enumerate(decided["majority"])]
    labels = pd.DataFrame({
        "comparison_id": range(10), "config_id": 1, "config_name": "base-0shot", "prompt_id": 1,
        "p_first": p_first, "p_slot1_order1": p_first, "p_slot1_order2": [1 - p for p in p_first],
        "label_mass": 1.0, "human_preference": "", "judge_preference": "",
        "sample_a_id": decided["sample_a_id"].astype(float).to_numpy(),
        "sample_b_id": decided["sample_b_id"].astype(float).to_numpy(), "policy_a_id": np.nan, "policy_b_id": np.nan,
    })
    monkeypatch.setattr(V, "load_labels", lambda config_ids=None: labels)
    client.force_login(researcher)
    data = client.get(reverse("reports:labelers_export", args=["alignment", "json"])).json()
    assert data[0]["accuracy"] == pytest.approx(0.7) and data[0]["n"] == 10
    assert data[0]["same_position_pct"] == 0.0
    html = client.get(reverse("reports:labelers")).content.decode()
    assert "70.0%" in html and "human pair judgments" in html


def test_round_page_shows_ai_judge_win_rates_for_its_policies(client, researcher, ranked_round, monkeypatch):
    ids = dict(ranked_round.policies.values_list("name", "pk"))
    sft, rlaif = ids["policy-sft"], ids["policy-rlaif"]
    labels = pd.DataFrame({
        "comparison_id": range(6), "config_id": 3, "config_name": "detailed-cot", "prompt_id": range(6),
        "p_first": [0.8, 0.7, 0.9, 0.6, 0.2, 0.75], "p_slot1_order1": np.nan, "p_slot1_order2": np.nan,
        "label_mass": 1.0, "human_preference": "", "judge_preference": "", "sample_a_id": np.nan,
        "sample_b_id": np.nan, "policy_a_id": float(rlaif), "policy_b_id": float(sft),
    })
    monkeypatch.setattr(V, "load_labels", lambda config_ids=None: labels)
    client.force_login(researcher)
    html = client.get(reverse("reports:round", args=[ranked_round.pk])).content.decode()
    assert "AI-judge win rates for these policies" in html and "detailed-cot" in html
    data = client.get(reverse("reports:round_export", args=[ranked_round.pk, "ai_judge", "json"])).json()
    row = next(r for r in data if r["policy_name"] == "policy-rlaif")
    assert row["win_rate"] == pytest.approx((0.8 + 0.7 + 0.9 + 0.6 + 0.2 + 0.75) / 6)
    assert row["opponent_name"] == "policy-sft" and row["n"] == 6


def test_labelers_page_through_the_real_label_models(client, researcher, ranked_round):
    """AILabel rows on comparisons of the round's samples: alignment against the annotators'
    majority (no dataset preference) and an AI-judge win-rate matrix, via labeling.data."""
    pytest.importorskip("labeling.data")
    from labeling.models import AILabel, LabelerConfig

    from evalsite.humaneval.data import human_pair_preferences
    from evalsite.models import Comparison, Sample

    majority = stats.human_majority(human_pair_preferences([ranked_round.pk]))
    decided = majority[majority["majority"] != "tie"].head(12)
    config = LabelerConfig.objects.create(name="smollm2-base", task=ranked_round.task)
    samples = Sample.objects.in_bulk(list(decided["sample_a_id"]) + list(decided["sample_b_id"]))
    labels = []
    for i, (sa, sb, m) in enumerate(zip(decided["sample_a_id"], decided["sample_b_id"], decided["majority"])):
        a, b = samples[sa], samples[sb]
        if i % 2:   # half the comparisons list the samples the other way round
            a, b, m = b, a, {"first": "second", "second": "first"}[m]
        c = Comparison.objects.create(prompt=a.prompt, response_a=a.text, response_b=b.text, sample_a=a, sample_b=b,
                                      judge_preference="first" if i < 4 else "",
                                      judge_name="GPT-4 (dataset)" if i < 4 else "")
        right = i < 9               # agrees with the humans on 9 of 12
        p = 0.8 if (m == "first") == right else 0.2
        labels.append(AILabel(comparison=c, config=config, p_first=p, p_slot1_order1=0.9, p_slot1_order2=0.9,
                              label_mass=0.95))
    AILabel.objects.bulk_create(labels)
    client.force_login(researcher)
    data = client.get(reverse("reports:labelers_export", args=["alignment", "json"])).json()
    assert len(data) == 1 and data[0]["config_name"] == "smollm2-base"
    assert data[0]["accuracy"] == pytest.approx(9 / 12) and data[0]["n"] == 12
    assert data[0]["same_position_pct"] == 100.0 and data[0]["first_slot_share"] == 1.0
    assert data[0]["judge_n"] == 4
    judge = client.get(reverse("reports:labelers_export", args=["ai_judge", "json"])).json()
    names = {r["policy_name"] for r in judge}
    assert names <= {"policy-sft", "policy-rlhf", "policy-rlaif"} and len(names) >= 2
    html = client.get(reverse("reports:labelers")).content.decode()
    assert "75.0%" in html and "table class=\"heatmap\"" in html
    round_html = client.get(reverse("reports:round", args=[ranked_round.pk])).content.decode()
    assert "AI-judge win rates for these policies" in round_html and "smollm2-base" in round_html
