"""Report pages in a real browser: charts drawn, heatmap readable, live view updates, print layout."""
import os
from pathlib import Path

import numpy as np
import pytest

from evalsite.humaneval.models import EvalRound
from evalsite.models import Sample
from evalsite.jobs.models import Job, JobMetric
from evalsite.jobs.models import Job, JobMetric
from evalsite.reports import views as V
from tests.helpers import wait_for
from tests.humaneval_demo import make_annotators, make_round
from tests.test_reports import rank_round
from tests.test_stats import label_rows

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")   # ORM calls beside Playwright's event loop

SCREENSHOTS = Path(__file__).resolve().parent.parent / "var" / "screenshots"
STRENGTHS = {"SFT": 0.0, "RLHF": 0.9, "RLAIF": 1.0, "RLAIF-direct": 1.2}


def vary_lengths(rnd, seed=0):
    """Responses of different lengths (the demo's are one fixed length per policy)."""
    rng = np.random.default_rng(seed)
    samples = list(Sample.objects.filter(eval_items__round=rnd))
    for s in samples:
        extra = int(rng.integers(0, 12))
        s.text = s.text + " More detail." * extra
        s.token_count = (s.token_count or 10) + 3 * extra
    Sample.objects.bulk_update(samples, ["text", "token_count"])


def login(page, live_server):
    page.goto(f"{live_server.url}/login/")
    page.fill("#id_username", "researcher")
    page.fill("#id_password", "pw-researcher")
    page.click("button[type=submit]")
    page.wait_for_url(f"{live_server.url}/")


def chart_points(page, chart_id):
    return page.evaluate(f"() => {{ const c = Chart.getChart('{chart_id}'); return c ? c.data.datasets[1].data : null; }}")


def test_round_report_in_the_browser(browser, live_server, researcher):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    users = make_annotators(3, prefix="br-ann")
    rnd = make_round(n_prompts=16, overlap=3, question=EvalRound.Question.BOTH, name="RLAIF vs RLHF vs SFT (helpful)",
                     policy_names=tuple(STRENGTHS), task_slug="helpful")
    vary_lengths(rnd)
    rank_round(rnd, users[:2], STRENGTHS, harmful={"SFT"}, seed=1)

    page = browser.new_page(viewport={"width": 1360, "height": 900})
    login(page, live_server)
    page.click("text=Reports: win rates, ratings, harmless rates")
    page.click(f"text={rnd.name}")
    page.wait_for_selector("canvas#chart-bt")
    wait_for(lambda: chart_points(page, "chart-bt"), timeout=10, message="Bradley-Terry chart drawn")
    assert len(chart_points(page, "chart-bt")) == 4
    assert len(chart_points(page, "chart-harmless")) == 4
    assert len(chart_points(page, "chart-lc")) == 6
    heat = page.locator("table.heatmap")
    assert heat.locator("tbody tr").count() == 4
    assert heat.locator("td.diag").count() == 4
    assert "32 / 48 rankings" in page.inner_text(".progress-line")
    page.screenshot(path=str(SCREENSHOTS / "report-round.png"), full_page=True)

    # Print: no navigation or export links, every table open, charts still drawn.
    page.emulate_media(media="print")
    assert not page.locator(".exports").first.is_visible()
    assert not page.locator(".site-header nav").is_visible()
    page.screenshot(path=str(SCREENSHOTS / "report-round-print.png"), full_page=True)
    page.pdf(path=str(SCREENSHOTS / "report-round.pdf"), format="A4")
    page.emulate_media(media="screen")

    # Live view: the third annotator's rankings appear without a reload.
    page.goto(f"{live_server.url}/reports/rounds/{rnd.pk}/?live=1&every=2")
    assert "32 / 48" in page.inner_text(".progress-line")
    rank_round(rnd, users[2:], STRENGTHS, harmful={"SFT"}, seed=2)
    wait_for(lambda: "48 / 48" in page.inner_text(".progress-line"), timeout=30, message="live view refreshed")
    wait_for(lambda: chart_points(page, "chart-bt"), timeout=10, message="charts redrawn after refresh")
    page.close()


def test_labelers_and_curves_pages_in_the_browser(browser, live_server, researcher, monkeypatch):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    labels = label_rows().assign(policy_a_id=[1.0, 1, 2, 2, 1, 1, 2, 2], policy_b_id=[2.0, 2, 1, 1, 2, 2, 1, 1])
    monkeypatch.setattr(V, "load_labels", lambda config_ids=None: labels)
    job = Job.objects.create(kind="rl", name="RLAIF run", status=Job.Status.SUCCEEDED)
    JobMetric.objects.bulk_create([JobMetric(job=job, step=s, values={"reward": 1 - 0.9 ** s, "kl": 0.02 * s})
                                   for s in range(40)])
    page = browser.new_page(viewport={"width": 1360, "height": 900})
    login(page, live_server)
    page.goto(f"{live_server.url}/reports/labelers/")
    wait_for(lambda: chart_points(page, "chart-alignment"), timeout=10, message="alignment chart drawn")
    assert chart_points(page, "chart-alignment") == [62.5, 100.0]
    page.screenshot(path=str(SCREENSHOTS / "report-labelers.png"), full_page=True)
    page.goto(f"{live_server.url}/reports/jobs/{job.pk}/")
    wait_for(lambda: page.evaluate("() => !!Chart.getChart('chart-curve-1')"), timeout=10, message="curves drawn")
    assert page.evaluate("() => Chart.getChart('chart-curve-1').data.datasets[0].data.length") == 40
    page.screenshot(path=str(SCREENSHOTS / "report-curves.png"), full_page=True)
    page.close()
