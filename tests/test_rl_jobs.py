"""Training jobs: parameter validation, idempotent sampling, and the SFT -> sample -> RM -> RL
chain on real Celery workers, including a worker killed mid-RL that resumes from its checkpoint."""
import pytest
import torch
from django.core.exceptions import ValidationError

from evalsite.jobs import runtime as jobs
from evalsite.models import Comparison, Dataset, Policy, Prompt, Sample, Task
from evalsite.jobs.models import Job, JobMetric
from rl.models import RewardModel
from tests.helpers import wait_for


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


@pytest.fixture
def toy(db, tiny_model_dir):
    task = Task.objects.get(slug="summarization")
    dataset = Dataset.objects.create(name="toy", split="train", task=task)
    prompts = [Prompt.objects.create(dataset=dataset, external_id=f"p{i}", context=f"say {i} the quick brown fox",
                                     reference=f" the answer is {i}") for i in range(8)]
    empty = Dataset.objects.create(name="empty", split="train", task=task)
    base = Policy.objects.create(name="tiny base", checkpoint_dir=str(tiny_model_dir), base_model=str(tiny_model_dir))
    return {"dataset": dataset, "prompts": prompts, "empty": empty, "base": base}


def messages_of(excinfo):
    return excinfo.value.message_dict


def test_validation_errors_are_clear_and_create_nothing(toy):
    ds, base = toy["dataset"], toy["base"]
    reference = Policy.objects.create(name="human reference", kind=Policy.Kind.REFERENCE)
    cases = [
        ("sample", {"policy_id": 999, "dataset_id": ds.pk}, "policy_id", "Unknown policy 999"),
        ("sample", {"policy_id": reference.pk, "dataset_id": ds.pk}, "policy_id", "has no checkpoint"),
        ("sample", {"policy_id": base.pk, "dataset_id": toy["empty"].pk}, "dataset_id", "prompt set is empty"),
        ("sample", {"policy_id": base.pk}, "prompt_ids", "prompt set is empty"),
        ("sample", {"policy_id": base.pk, "prompt_ids": [toy["prompts"][0].pk, 10**9]}, "prompt_ids",
         "Unknown prompt ids"),
        ("sample", {"policy_id": base.pk, "dataset_id": ds.pk, "temperature": "hot"}, "temperature", "must be a number"),
        ("sample", {"policy_id": base.pk, "dataset_id": ds.pk, "top_p": 1.5}, "top_p", "at most 1"),
        ("sample", {"policy_id": base.pk, "dataset_id": ds.pk, "make_pairs": True, "n": 1}, "n", "at least 2 samples"),
        ("sft", {"policy_id": base.pk, "dataset_id": ds.pk, "name": "s", "batch_size": 9}, "batch_size",
         "larger than the data (8 prompts with a reference)"),
        ("sft", {"policy_id": base.pk, "dataset_id": ds.pk, "name": "tiny base"}, "name", "already exists"),
        ("sft", {"policy_id": base.pk, "dataset_id": ds.pk, "name": "s", "learning_rate": -1}, "learning_rate",
         "greater than 0"),
        ("sft", {"policy_id": base.pk, "dataset_id": ds.pk, "name": "s", "epochs": 1.5}, "epochs", "whole number"),
        ("rl", {"policy_id": base.pk, "dataset_id": ds.pk, "name": "r", "reward_model_id": 5}, "reward_model_id",
         "Unknown reward model 5"),
        ("rl", {"policy_id": base.pk, "dataset_id": ds.pk, "name": "r", "reward": "vibes"}, "reward", "reward must be"),
        ("rl", {"policy_id": base.pk, "dataset_id": ds.pk, "name": "r", "reward": "direct", "labeler_model": "/nope"},
         "labeler_model", "not found"),
        ("rl", {"policy_id": base.pk, "dataset_id": ds.pk, "name": "r", "beta": 2}, "beta", "at most 1"),
        ("rl", {"policy_id": base.pk, "dataset_id": ds.pk, "name": "r", "batch_size": 64}, "batch_size",
         "batch size 64 is larger than the data (8 prompts)"),
        ("reward_model", {"policy_id": base.pk, "name": "rm"}, "labels", "No labelled comparisons"),
        ("reward_model", {"policy_id": base.pk, "name": "rm", "labels": "ai"}, "label_config_ids",
         "Choose the AI labeler"),
    ]
    for kind, params, field, text in cases:
        with pytest.raises(ValidationError) as e:
            jobs.submit(kind, params, send=False)
        errors = messages_of(e)
        assert field in errors, (kind, params, errors)
        assert any(text in m for m in errors[field]), (kind, params, errors)
    assert Job.objects.count() == 0


def test_sample_job_is_idempotent_and_makes_pairs(toy):
    ds, base = toy["dataset"], toy["base"]
    params = {"policy_id": base.pk, "dataset_id": ds.pk, "n": 2, "max_new_tokens": 5, "make_pairs": True, "seed": 1}
    job = jobs.submit("sample", params, send=False)
    assert jobs.execute(job.pk) == "succeeded", Job.objects.get(pk=job.pk).error
    job.refresh_from_db()
    assert job.result["samples_created"] == 16
    samples = Sample.objects.filter(policy=base)
    assert samples.count() == 16
    assert set(samples.values_list("index", flat=True)) == {0, 1}
    assert all(0 < s.token_count <= 5 and s.generation["temperature"] == 0.9 for s in samples)
    pairs = Comparison.objects.filter(prompt__dataset=ds)
    assert pairs.count() == job.result["pairs_created"] == 8 - sum(
        samples.get(prompt=p, index=0).text == samples.get(prompt=p, index=1).text for p in toy["prompts"]) * 0
    pair = pairs.first()
    assert pair.sample_a.index == 0 and pair.sample_b.index == 1 and pair.response_a == pair.sample_a.text

    # Asking again for n = 3: only the missing third sample per prompt is made; pairs are not repeated.
    texts_before = dict(samples.values_list("pk", "text"))
    again = jobs.submit("sample", {**params, "n": 3}, send=False)
    assert jobs.execute(again.pk) == "succeeded"
    again.refresh_from_db()
    assert again.result == {"samples_created": 8, "samples_existing": 16, "pairs_created": 0}
    assert dict(Sample.objects.filter(pk__in=texts_before).values_list("pk", "text")) == texts_before
    assert Comparison.objects.filter(prompt__dataset=ds).count() == 8


def _wait_done(job, worker, timeout=180):
    wait_for(lambda: Job.objects.get(pk=job.pk).status in Job.FINISHED, timeout=timeout,
             message=f"{job.kind} job to finish")
    job.refresh_from_db()
    assert job.status == "succeeded", (job.error, job.log[-3000:], worker.read_log()[-3000:])
    return job


def test_a_reward_model_job_is_a_function_of_its_seed(toy):
    """Two runs of the same reward-model job give the same weights, whatever random numbers the worker
    drew before (the fresh head is drawn from the job's seed, as the launched processes draw it)."""
    from rl.reward_model import RewardScorer

    for i, pr in enumerate(toy["prompts"]):
        Comparison.objects.create(prompt=pr, response_a=" yes" * (1 + i % 3), response_b=" no",
                                  human_preference="first" if i % 3 else "second", human_source="dataset")
    heads = []
    for run, disturbance in enumerate((1, 2)):
        torch.manual_seed(disturbance)  # what the worker's earlier jobs left in the global generator
        torch.rand(100)
        job = jobs.submit("reward_model", {"policy_id": toy["base"].pk, "name": f"RM {run}", "labels": "human",
                                           "eval_fraction": 0.0, "batch_size": 4, "epochs": 1, "learning_rate": 1e-3,
                                           "optimizer": "adamw"}, send=False)
        jobs.run_here(job.pk)
        job.refresh_from_db()
        assert job.status == "succeeded", (job.error, job.log[-2000:])
        folder = RewardModel.objects.get(pk=job.result["reward_model_id"]).checkpoint_dir
        heads.append({k: v.clone() for k, v in RewardScorer.from_folder(folder, "cpu").model.state_dict().items()})
    assert heads[0].keys() == heads[1].keys()
    for name in heads[0]:
        assert torch.equal(heads[0][name], heads[1][name]), name


@pytest.mark.worker
def test_sft_sample_reward_model_rl_chain_on_a_real_worker(toy, start_worker, django_capture_on_commit_callbacks):
    worker = start_worker(extra_env={"OMP_NUM_THREADS": "1"})
    ds, base = toy["dataset"], toy["base"]

    with django_capture_on_commit_callbacks(execute=True):
        sft_job = jobs.submit("sft", {"policy_id": base.pk, "dataset_id": ds.pk, "name": "tiny SFT", "epochs": 3,
                                     "batch_size": 4, "learning_rate": 3e-3})
    _wait_done(sft_job, worker)
    sft = Policy.objects.get(pk=sft_job.result["policy_id"])
    assert (sft.kind, sft.parent, sft.job_id) == ("sft", base, sft_job.pk)
    losses = list(JobMetric.objects.filter(job=sft_job).order_by("step").values_list("values__loss", flat=True))
    assert len(losses) == 6 and losses[-1] < losses[0]

    with django_capture_on_commit_callbacks(execute=True):
        sample_job = jobs.submit("sample", {"policy_id": sft.pk, "dataset_id": ds.pk, "n": 2, "max_new_tokens": 6,
                                           "make_pairs": True})
    _wait_done(sample_job, worker)
    pairs = list(Comparison.objects.filter(sample_a__policy=sft))
    assert len(pairs) == 8
    for c in pairs:  # people prefer the longer response
        c.human_preference = "first" if len(c.response_a) >= len(c.response_b) else "second"
        c.human_source = "dataset"
        c.save()

    with django_capture_on_commit_callbacks(execute=True):
        rm_job = jobs.submit("reward_model", {"policy_id": sft.pk, "name": "tiny RM", "labels": "human",
                                             "eval_fraction": 0.3, "batch_size": 2, "epochs": 2,
                                             "learning_rate": 1e-3, "optimizer": "adamw"})
    _wait_done(rm_job, worker)
    rm = RewardModel.objects.get(pk=rm_job.result["reward_model_id"])
    assert rm.labels == "human" and rm.base_policy == sft and rm.job_id == rm_job.pk
    assert rm.n_train_pairs + rm.n_eval_pairs == 8 and rm.n_eval_pairs > 0
    assert 0 <= rm.metrics["held_out"]["accuracy"] <= 1 and "ece" in rm.metrics["held_out"]

    with django_capture_on_commit_callbacks(execute=True):
        rl_job = jobs.submit("rl", {"policy_id": sft.pk, "dataset_id": ds.pk, "name": "tiny RLHF",
                                   "reward_model_id": rm.pk, "batch_size": 4, "epochs": 2,
                                   "max_response_tokens": 6, "save_every": 2, "learning_rate": 1e-3})
    _wait_done(rl_job, worker)
    policy = Policy.objects.get(pk=rl_job.result["policy_id"])
    assert (policy.kind, policy.parent, policy.job_id) == ("rlhf", sft, rl_job.pk)
    assert "tiny RM" in policy.reward_source
    metrics = list(JobMetric.objects.filter(job=rl_job).order_by("step"))
    assert [m.step for m in metrics] == [0, 1, 2, 3]
    assert metrics[0].values["kl"] == pytest.approx(0.0, abs=1e-5)
    for key in ("reward_mean", "reward_std", "kl", "policy_loss", "value_loss", "entropy", "response_length",
                "seconds_per_step"):
        assert isinstance(metrics[-1].values[key], float)
    from rl.modeling import load_causal_lm

    assert load_causal_lm(policy.checkpoint_dir, "cpu") is not None


@pytest.mark.worker
def test_rl_job_resumes_after_its_worker_is_killed(toy, tiny_model_dir, start_worker,
                                                   django_capture_on_commit_callbacks):
    rm = RewardModel.objects.create(name="untrained RM", labels="ai", checkpoint_dir=str(tiny_model_dir))
    worker = start_worker(extra_env={"OMP_NUM_THREADS": "1"})
    with django_capture_on_commit_callbacks(execute=True):
        job = jobs.submit("rl", {"policy_id": toy["base"].pk, "dataset_id": toy["dataset"].pk, "name": "tiny RLAIF",
                                "reward_model_id": rm.pk, "batch_size": 4, "epochs": 60, "max_response_tokens": 4,
                                "save_every": 3})
    total = 120
    wait_for(lambda: JobMetric.objects.filter(job=job, step__gte=7).exists(), timeout=180,
             message="RL to pass step 7")
    worker.kill()
    assert Job.objects.get(pk=job.pk).status == "running"
    steps_before = JobMetric.objects.filter(job=job).count()
    assert steps_before < total
    worker = start_worker(name=worker.name, extra_env={"OMP_NUM_THREADS": "1"})
    job = _wait_done(job, worker, timeout=300)
    assert job.attempts == 2
    assert "resuming at step" in job.log and "resuming at step 0/" not in job.log
    steps = list(JobMetric.objects.filter(job=job).order_by("step").values_list("step", flat=True))
    assert steps == list(range(total))
    policy = Policy.objects.get(job=job)
    assert policy.kind == "rlaif_distilled" and policy.metadata["steps"] == total


def test_admin_forms_start_jobs_and_show_validation_errors(toy, client, researcher):
    client.force_login(researcher)
    ds, base = toy["dataset"], toy["base"]
    page = client.get("/rl/")
    assert page.status_code == 200 and b"Train a reward model" in page.content
    form = client.get("/rl/start/rl/")
    assert form.status_code == 200 and b"0.05" in form.content  # the paper's beta as the default

    from rl.params import RL_DEFAULTS, SFT_DEFAULTS

    bad = client.post("/rl/start/rl/", {**RL_DEFAULTS,
                                        "name": "x", "policy": base.pk, "dataset": ds.pk, "reward": "reward_model",
                                        "batch_size": 64})
    assert bad.status_code == 200
    text = bad.content.decode()
    assert "batch size 64 is larger than the data (8 prompts)" in text
    assert "Choose the reward model" in text
    assert Job.objects.count() == 0



    ok = client.post("/rl/start/sft/", {**SFT_DEFAULTS, "name": "my SFT", "policy": base.pk, "dataset": ds.pk,
                                        "batch_size": 4})
    job = Job.objects.get()
    assert ok.status_code == 302 and ok["Location"] == f"/admin/jobs/job/{job.pk}/change/"
    assert job.kind == "sft" and job.params["name"] == "my SFT" and job.params["batch_size"] == 4
    assert job.params["policy_id"] == base.pk and job.created_by == researcher
    assert client.get("/admin/rl/rewardmodel/").status_code == 200
