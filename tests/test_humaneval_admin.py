"""Researchers set up rounds in the admin: prompts, the missing-samples check, sampling, open/close, progress."""
import pytest
from django.urls import reverse

from evalsite.humaneval import queue
from evalsite.humaneval import rounds as R
from evalsite.humaneval.models import EvalRound
from evalsite.models import Dataset, Policy, Prompt, Sample, Task
from evalsite.jobs.models import Job
from tests.humaneval_demo import make_annotators, make_round
from evalsite.jobs.models import Job

pytestmark = pytest.mark.django_db


@pytest.fixture
def setup():
    task = Task.objects.get(slug="summarization")
    ds = Dataset.objects.create(name="tldr-mini", split="test", task=task)
    prompts = [Prompt.objects.create(dataset=ds, external_id=f"post{i}", context=f"POST {i}") for i in range(5)]
    sft = Policy.objects.create(name="sft-1", kind=Policy.Kind.SFT, checkpoint_dir="/models/sft-1")
    ref = Policy.objects.create(name="human-ref", kind=Policy.Kind.REFERENCE)
    for p in prompts:
        Sample.objects.create(policy=sft, prompt=p, text=f"summary of {p.external_id}")
    for p in prompts[:2]:
        Sample.objects.create(policy=ref, prompt=p, text=f"reference for {p.external_id}")
    return task, ds, prompts, sft, ref


def add_round(client, task, ds, policies, **extra):
    data = {
        "name": "sft vs ref", "title": "Summaries, round 1", "task": task.pk, "question": "rank",
        "policies": [p.pk for p in policies], "overlap": 3, "instructions": "", "deadline": "",
        "lease_minutes": 30, "sample_index": 0, "dataset": ds.pk, "n_prompts": "", "seed": 0,
        "prompt_external_ids": "", **extra,
    }
    return client.post(reverse("admin:humaneval_evalround_add"), data, follow=True)


def test_creating_a_round_names_exactly_what_is_missing_and_refuses_to_open(client, researcher, setup):
    task, ds, prompts, sft, ref = setup
    client.force_login(researcher)
    r = add_round(client, task, ds, [sft, ref])
    html = r.content.decode()
    rnd = EvalRound.objects.get()
    assert rnd.items.count() == 5 and rnd.status == "draft" and rnd.created_by == researcher
    expected_ids = ", ".join(str(p.pk) for p in prompts[2:])
    assert f"Policy “human-ref” has no sample #0 for 3 of 5 prompts (prompt ids {expected_ids})" in html
    assert "sft-1" not in R.describe_missing(rnd, R.missing_samples(rnd))[0]
    r = client.post(reverse("admin:humaneval_evalround_open", args=[rnd.pk]), follow=True)
    assert "cannot open while samples are missing" in r.content.decode()
    rnd.refresh_from_db()
    assert rnd.status == "draft"
    # Once the samples exist, it opens and every item holds one sample per policy.
    for p in prompts[2:]:
        Sample.objects.create(policy=ref, prompt=p, text=f"reference for {p.external_id}")
    r = client.post(reverse("admin:humaneval_evalround_open", args=[rnd.pk]), follow=True)
    rnd.refresh_from_db()
    assert rnd.status == "open"
    assert all(item.samples.count() == 2 for item in rnd.items.all())


def test_sampling_button_starts_jobs_or_says_sampling_is_unavailable(client, researcher, setup, tmp_path):
    task, ds, prompts, sft, ref = setup
    client.force_login(researcher)
    # A folder that exists: the sample job refuses a policy whose folder is missing.
    sft2 = Policy.objects.create(name="sft-2", kind=Policy.Kind.SFT, checkpoint_dir=str(tmp_path))
    add_round(client, task, ds, [sft, sft2])
    rnd = EvalRound.objects.get()
    page = client.get(reverse("admin:humaneval_evalround_change", args=[rnd.pk])).content.decode()
    r = client.post(reverse("admin:humaneval_evalround_sample", args=[rnd.pk]), follow=True)
    html = r.content.decode()
    if R.sampling_available():
        job = Job.objects.get(kind="sample")
        assert job.params["policy_id"] == sft2.pk and job.params["prompt_ids"] == sorted(p.pk for p in prompts)
        assert "Started 1 sampling job" in html
    else:
        assert "Sampling is not available" in page
        assert "Sampling is not available in this installation yet" in html
        assert Job.objects.count() == 0


def test_reference_policy_cannot_be_sampled(setup):
    task, ds, prompts, sft, ref = setup
    rnd = EvalRound.objects.create(name="r", task=task)
    rnd.policies.set([sft, ref])
    R.set_prompts(rnd, [p.pk for p in prompts])
    from django.core.exceptions import ValidationError

    with pytest.raises(ValidationError) as e:
        R.start_sampling(rnd)
    msg = " ".join(e.value.messages)
    assert ("human-ref" in msg and "no checkpoint" in msg) or "not available" in msg


def test_choosing_prompts_by_external_id_and_unknown_ids(client, researcher, setup):
    task, ds, prompts, sft, ref = setup
    client.force_login(researcher)
    r = add_round(client, task, ds, [sft, ref], prompt_external_ids="post1, post0 nope")
    assert "1 id(s) are not in tldr-mini [test]: nope" in r.content.decode()
    assert EvalRound.objects.count() == 0
    add_round(client, task, ds, [sft, ref], prompt_external_ids="post1, post0")
    rnd = EvalRound.objects.get()
    assert sorted(rnd.items.values_list("prompt__external_id", flat=True)) == ["post0", "post1"]
    assert R.missing_samples(rnd) == {}


def test_dataset_of_another_task_is_refused(client, researcher, setup):
    task, ds, prompts, sft, ref = setup
    client.force_login(researcher)
    r = add_round(client, Task.objects.get(slug="helpful"), ds, [sft, ref])
    assert "This dataset is for the task" in r.content.decode()
    assert EvalRound.objects.count() == 0


def test_change_page_shows_progress_and_per_annotator_counts_and_close_stops_work(client, researcher):
    u1, u2 = make_annotators(2)
    rnd = make_round(n_prompts=3, overlap=2)
    for u in (u1, u2):
        a = queue.next_assignment(rnd, u)
        queue.submit(a.token, u, ranks={"A": 1, "B": 2, "C": 3}, harmless={}, time_on_page_ms=4000, key=f"k{u.pk}")
    queue.next_assignment(rnd, u1)
    client.force_login(researcher)
    html = client.get(reverse("admin:humaneval_evalround_change", args=[rnd.pk])).content.decode()
    assert "<strong>2 / 6</strong> answers" in html and "1 in progress" in html
    assert "<td>annotator0</td><td>1</td><td>0</td><td>1</td><td>4.0</td>" in html
    assert "<td>annotator1</td><td>1</td><td>0</td><td>0</td><td>4.0</td>" in html
    assert client.get(reverse("admin:humaneval_evalround_changelist")).status_code == 200
    client.post(reverse("admin:humaneval_evalround_close", args=[rnd.pk]))
    rnd.refresh_from_db()
    assert rnd.status == "closed"
    with pytest.raises(queue.Refused, match="closed"):
        queue.next_assignment(rnd, u2)
