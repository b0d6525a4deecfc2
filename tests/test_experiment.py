"""The whole experiment on the tiny random model: stages, artifacts, reuse, retry, real workers."""
import pytest
from django.core.exceptions import ValidationError
from django.core.management import call_command

from evalsite.experiments import pipeline
from evalsite.experiments.presets import merged_config
from evalsite.humaneval.models import EvalRound
from evalsite.models import Comparison, Dataset, Policy, Prompt, Sample, Task
from evalsite.experiments.models import Experiment
from evalsite.jobs.models import Job
from evalsite.experiments.models import Experiment
from evalsite.jobs.models import Job
from evalsite.jobs import runtime as jobs
from tests.helpers import wait_for

WORDS = "the cat sat on a mat and then a dog ran over the hill to see the sun".split()

TINY = {
    "sft_prompts": 6, "pair_prompts": 6, "rl_prompts": 4, "eval_prompts": 3, "alignment_comparisons": 6,
    "sft": {"batch_size": 2, "max_prompt_tokens": 64, "max_response_tokens": 12},
    "pairs": {"max_new_tokens": 8, "batch_size": 4, "max_prompt_tokens": 64},
    "labeler": {"batch_size": 4, "max_prompt_tokens": 400},
    "reward_model": {"batch_size": 2, "max_length": 96, "epochs": 1, "eval_fraction": 0.3},
    "rl": {"batch_size": 2, "epochs": 1, "max_prompt_tokens": 64, "max_response_tokens": 6, "save_every": 1},
    "eval": {"max_new_tokens": 8, "batch_size": 4, "max_prompt_tokens": 64},
    "round": {"overlap": 1},
}


def make_data(tiny_model_dir, n_prompts=20):
    task = Task.objects.get(slug="summarization")
    ds = Dataset.objects.create(name="tiny-posts", split="test", task=task)
    for i in range(n_prompts):
        words = [WORDS[(i * 3 + j) % len(WORDS)] for j in range(12)]
        Prompt.objects.create(dataset=ds, external_id=f"p{i}", context=" ".join(words),
                              reference=" ".join(words[:4]))
    prefs = Dataset.objects.create(name="tiny-prefs", split="test", task=task)
    for i in range(12):
        p = Prompt.objects.create(dataset=prefs, external_id=f"q{i}", context=" ".join(WORDS[i:i + 8]))
        Comparison.objects.create(prompt=p, response_a=" ".join(WORDS[i:i + 3]), response_b="the the the",
                                  human_preference="first" if i % 3 else "second", human_source="dataset")
    base = Policy.objects.create(name="tiny base", kind=Policy.Kind.SFT, checkpoint_dir=str(tiny_model_dir))
    return ds, prefs, base


def make_experiment(ds, prefs, base, arms, **overrides):
    return Experiment.objects.create(
        name="tiny experiment", task=ds.task, dataset=ds, preference_dataset=prefs, base_policy=base,
        preset="demo", arms=arms, config=merged_config("demo", {**TINY, **overrides}),
    )


@pytest.mark.django_db
def test_prepare_refuses_bad_setups_with_clear_messages(tiny_model_dir):
    ds, prefs, base = make_data(tiny_model_dir)
    empty = Dataset.objects.create(name="no-prefs", split="x", task=ds.task)
    exp = make_experiment(ds, empty, base, ["sft", "rlhf", "bogus"])
    with pytest.raises(ValidationError) as e:
        pipeline.prepare(exp)
    text = " ".join(e.value.messages)
    assert "Unknown arms: bogus" in text
    assert "RLHF needs comparisons with human preferences in no-prefs" in text


@pytest.mark.django_db
def test_splits_are_disjoint_and_stages_follow_the_arms(tiny_model_dir):
    ds, prefs, base = make_data(tiny_model_dir)
    exp = pipeline.prepare(make_experiment(ds, prefs, base, ["sft", "rlaif_direct"]))
    s = exp.artifacts["splits"]
    assert len(s["sft"]) == 6 and len(s["pairs"]) == 6 and len(s["rl"]) == 4 and len(s["eval"]) == 3
    assert not set(s["sft"]) & set(s["pairs"]) and not set(s["pairs"]) & set(s["rl"]) and not set(s["rl"]) & set(s["eval"])
    names = [n for level in pipeline.levels(exp) for n in level]
    assert names == ["sft", "label_alignment", "pairs", "rl_rlaif_direct", "eval_sft", "eval_rlaif_direct",
                     "judge_pairs", "judge_label", "round"]


@pytest.mark.django_db(transaction=True)
@pytest.mark.worker
def test_all_arms_on_real_workers_reuse_and_retry(tiny_model_dir, start_worker, django_capture_on_commit_callbacks):
    import torch

    torch.set_num_threads(1)
    ds, prefs, base = make_data(tiny_model_dir)
    arms = ["sft", "rlhf", "rlaif_distilled", "rlaif_direct", "same_size"]
    # Forced failure: an RL batch larger than the RL prompts is refused when the stage starts.
    exp = make_experiment(ds, prefs, base, arms, rl={**TINY["rl"], "batch_size": 50})
    start_worker(concurrency=2)
    with django_capture_on_commit_callbacks(execute=True):
        pipeline.launch(exp)
    wait_for(lambda: Experiment.objects.get(pk=exp.pk).status in ("failed", "succeeded"), timeout=400, interval=1,
             message="the experiment to stop at the failing RL stage")
    exp.refresh_from_db()
    assert exp.status == "failed", exp.message
    assert "batch size 50 is larger than the data" in exp.message
    finished = {name: job_id for name, job_id in exp.stages.items()
                if Job.objects.get(pk=job_id).status == "succeeded"}
    assert {"sft", "pairs", "label_alignment", "rm_human", "rm_ai"} <= set(finished)

    # Fix the setting and relaunch: finished stages are reused, the rest runs to the end.
    Experiment.objects.filter(pk=exp.pk).update(config=merged_config("demo", TINY))
    exp.refresh_from_db()
    with django_capture_on_commit_callbacks(execute=True):
        pipeline.launch(exp)
    wait_for(lambda: Experiment.objects.get(pk=exp.pk).status in ("failed", "succeeded"), timeout=500, interval=1,
             message="the relaunched experiment to finish")
    exp.refresh_from_db()
    assert exp.status == "succeeded", exp.message
    for name, job_id in finished.items():
        assert exp.stages[name] == job_id, f"stage {name} was redone"
        assert Job.objects.get(pk=job_id).attempts == 1

    # Every artifact is there and linked.
    a = exp.artifacts
    sft = Policy.objects.get(pk=a["sft_policy_id"])
    assert sft.kind == "sft" and sft.parent_id == base.pk
    for arm, kind in [("rlhf", "rlhf"), ("rlaif_distilled", "rlaif_distilled"), ("rlaif_direct", "rlaif_direct"),
                      ("same_size", "rlaif_distilled")]:
        policy = Policy.objects.get(pk=a[f"{arm}_policy_id"])
        assert policy.kind == kind and policy.parent_id == sft.pk and policy.job_id == exp.stages[f"rl_{arm}"]
        assert Sample.objects.filter(policy=policy, prompt_id__in=a["splits"]["eval"]).count() == 3
    assert {"rm_human_id", "rm_ai_id", "rm_same_size_id"} <= set(a)
    assert len(a["judge_comparison_ids"]) == 3 * 10  # 3 prompts x C(5 arms, 2)
    rnd = EvalRound.objects.get(pk=a["round_id"])
    assert rnd.status == "open" and rnd.items.count() == 3 and rnd.policies.count() == 5

    # Figures for the page: alignment, RM accuracy, RL curves, AI-judge win rates vs SFT.
    from evalsite.experiments.figures import all_figures

    f = all_figures(exp)
    assert f["labeler"]["alignment"]["human"]["n"] == 6
    assert 0 <= f["labeler"]["alignment"]["position"]["same_position_pct"] <= 100
    assert f["reward_models"]["rm_human_id"]["n_train"] > 0
    assert set(f["rl"]) == {"rlhf", "rlaif_distilled", "rlaif_direct", "same_size"}
    assert f["rl"]["rlhf"]["kl_start"] == pytest.approx(0.0, abs=1e-6)
    vs_sft = [r for r in f["judge"] if r["vs_sft"]]
    assert len(vs_sft) == 4, f["judge"]
    assert all(0 <= r["win_rate"] <= 1 and r["ci_low"] <= r["ci_high"] for r in vs_sft)

    # Relaunching a finished experiment redoes nothing.
    jobs_before = Job.objects.count()
    pipeline.run_inline(exp)
    assert Job.objects.count() == jobs_before


@pytest.mark.django_db
def test_run_experiment_command_in_process(tiny_model_dir, tmp_path, capsys):
    import torch

    torch.set_num_threads(1)
    ds, prefs, base = make_data(tiny_model_dir)
    cfg = tmp_path / "exp.yaml"
    import yaml

    cfg.write_text(yaml.safe_dump({"name": "cli tiny", "task": "summarization", "dataset": "tiny-posts:test",
                                   "base_model": "tiny base", "preset": "demo", "arms": ["sft", "rlaif_direct"],
                                   "config": TINY}))
    call_command("run_experiment", str(cfg))
    exp = Experiment.objects.get(name="cli tiny")
    assert exp.status == "succeeded"
    out = capsys.readouterr().out
    assert '"status": "succeeded"' in out and "rlaif_direct_policy_id" in out
    import json

    def no_nan(constant):
        raise AssertionError(f"{constant} in the summary is not valid JSON")

    summary = json.loads(out[out.index('{'):out.rindex('}') + 1], parse_constant=no_nan)
    assert summary["status"] == "succeeded"
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ndataset: nope\n")
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="no dataset 'nope'"):
        call_command("run_experiment", str(bad))


@pytest.mark.django_db
def test_an_experiment_whose_worker_died_is_resumed_by_the_sweep_or_shown_failed(tiny_model_dir, settings):
    from datetime import timedelta

    from django.utils import timezone

    ds, prefs, base = make_data(tiny_model_dir)
    exp = pipeline.prepare(make_experiment(ds, prefs, base, ["sft"]))
    job = jobs.submit(pipeline.EXPERIMENT, {"experiment_id": exp.pk}, send=False)
    long_ago = timezone.now() - timedelta(hours=1)
    Job.objects.filter(pk=job.pk).update(status="running", attempts=1, started_at=long_ago, heartbeat_at=long_ago,
                                         worker="gone pid 1")
    Experiment.objects.filter(pk=exp.pk).update(status="running", job=job)
    settings.JOB_AUTO_RESUME_ATTEMPTS = 2
    assert jobs.sweep()["resumed"] == [job.pk]  # queued again: a worker continues from the finished stages
    job.refresh_from_db()
    assert job.status == "queued" and Experiment.objects.get(pk=exp.pk).status == "running"

    Job.objects.filter(pk=job.pk).update(status="running", attempts=2, heartbeat_at=long_ago)
    assert jobs.sweep()["failed"] == [job.pk]  # out of automatic attempts: the experiment says so
    exp.refresh_from_db()
    assert exp.status == "failed" and "stopped responding" in exp.message


@pytest.mark.django_db
def test_experiment_admin_form_and_page(client, researcher, django_user_model, tiny_model_dir):
    """The admin form refuses a dataset of another task; the page is for researchers only."""
    ds, prefs, base = make_data(tiny_model_dir)
    client.force_login(researcher)
    helpful = Task.objects.get(slug="helpful")
    form = {"name": "via admin", "task": helpful.pk, "dataset": ds.pk, "preference_dataset": prefs.pk,
            "base_policy": base.pk, "preset": "demo", "arms": ["sft", "rlhf"], "config": "{}"}
    r = client.post("/admin/experiments/experiment/add/", form)
    assert r.status_code == 200 and "This dataset is for" in r.content.decode()
    assert not Experiment.objects.filter(name="via admin").exists()
    form["task"] = ds.task_id
    form["config"] = '{"rl_prompts": 5}'
    r = client.post("/admin/experiments/experiment/add/", form)
    assert r.status_code == 302, r.content.decode()[:2000]
    exp = Experiment.objects.get(name="via admin")
    assert exp.config["rl_prompts"] == 5 and exp.config["sft"]["batch_size"] == 4  # preset + override
    page = client.get(f"/experiments/{exp.pk}/")
    assert page.status_code == 200 and "Not launched yet." in page.content.decode()
    assert client.get(f"/experiments/{exp.pk}.json").json()["status"] == "draft"
    annotator = django_user_model.objects.create_user("ann-x", password="pw")
    client.force_login(annotator)
    assert client.get(f"/experiments/{exp.pk}/").status_code == 403  # no view_experiment permission


@pytest.mark.django_db
def test_experiment_feed_carries_the_rl_curves(client, researcher, tiny_model_dir):
    from evalsite.jobs.models import JobMetric

    ds, prefs, base = make_data(tiny_model_dir)
    exp = make_experiment(ds, prefs, base, ["sft", "rlaif_direct"])
    job = jobs.submit("noop", {}, send=False)
    JobMetric.objects.create(job=job, step=0, values={"reward_mean": 0.25, "kl": 0.0})
    Experiment.objects.filter(pk=exp.pk).update(stages={"rl_rlaif_direct": job.pk})
    client.force_login(researcher)
    feed = client.get(f"/experiments/{exp.pk}.json").json()
    assert list(feed["figures"]) == ["rl"]
    assert feed["figures"]["rl"]["rlaif_direct"]["curve"] == [{"step": 0, "reward_mean": 0.25, "kl": 0.0}]
