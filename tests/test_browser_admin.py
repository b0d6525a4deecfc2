"""The researcher's view of jobs in a real browser: live progress bars, job page with curves."""
import pytest

from evalsite.jobs.models import Job, JobMetric
from evalsite.jobs import runtime as jobs
from tests.helpers import wait_for

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]
SHOTS = "var/screenshots"


def login(page, live_server, username, password):
    page.goto(live_server.url + "/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("button[type=submit]")
    page.wait_for_url(live_server.url + "/")


def test_job_list_progress_refreshes_and_job_page_draws_curves(browser, live_server, researcher):
    job = jobs.submit("noop", {"steps": 10}, name="Import TL;DR", send=False)
    Job.objects.filter(pk=job.pk).update(status="running", progress=0.1, message="step 1/10")
    done = jobs.submit("noop", {}, name="Finished job", send=False)
    Job.objects.filter(pk=done.pk).update(status="succeeded", progress=1.0, message="done")

    page = browser.new_page(viewport={"width": 1280, "height": 800})
    login(page, live_server, "researcher", "pw-researcher")
    assert "Workbench" in page.text_content("h1")
    page.screenshot(path=f"{SHOTS}/home-researcher.png", full_page=True)

    page.goto(live_server.url + "/admin/jobs/job/")
    cell = page.locator(f'.job-progress[data-job-id="{job.pk}"]')
    assert cell.locator(".job-pct").text_content() == "10%"
    # The worker moves on; the list picks it up without a reload.
    Job.objects.filter(pk=job.pk).update(progress=0.6, message="step 6/10")
    page.wait_for_function(
        f"document.querySelector('.job-progress[data-job-id=\"{job.pk}\"] .job-pct').textContent === '60%'",
        timeout=10_000)
    Job.objects.filter(pk=job.pk).update(progress=1.0, status="succeeded", message="done")
    page.wait_for_function(
        f"document.querySelector('.job-progress[data-job-id=\"{job.pk}\"]').dataset.status === 'succeeded'",
        timeout=10_000)
    row_text = page.locator(f'.job-progress[data-job-id="{job.pk}"]').locator("xpath=ancestor::tr").inner_text()
    assert "Succeeded" in row_text and "done" in row_text
    page.screenshot(path=f"{SHOTS}/admin-jobs.png", full_page=True)

    # A running job with metrics: one chart per metric, growing as steps arrive.
    rl = jobs.submit("noop", {}, name="RL (demo)", send=False)
    Job.objects.filter(pk=rl.pk).update(status="running", progress=0.3, message="step 3/10", log="step 1\nstep 2\n")
    for step in range(3):
        JobMetric.objects.create(job=rl, step=step, values={"reward_mean": 0.1 * step, "kl": 0.01 * step})
    page.goto(live_server.url + f"/admin/jobs/job/{rl.pk}/change/")
    page.wait_for_selector("#job-charts figure canvas")
    assert page.locator("#job-charts figure").count() == 2
    assert "step 2" in page.text_content("#job-log")
    JobMetric.objects.create(job=rl, step=3, values={"reward_mean": 0.5, "kl": 0.04})
    Job.objects.filter(pk=rl.pk).update(progress=0.4, message="step 4/10")
    page.wait_for_function("document.getElementById('job-pct').textContent === '40%'", timeout=10_000)
    n_points = page.evaluate("Chart.getChart(document.querySelector('#job-charts canvas')).data.labels.length")
    assert n_points == 4
    page.screenshot(path=f"{SHOTS}/admin-job-detail.png", full_page=True)
    page.close()
