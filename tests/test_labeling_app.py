"""The labeling app: configs, chunked runs (synchronous and with two real workers), cancel,
bad configs, admin pages, label_frame, and the real SmolLM2 labeler on HH harmless pairs (slow)."""
import gzip
import json

import pytest
import torch
from django.core.exceptions import ValidationError

from evalsite.jobs import runtime as jobs
from evalsite.models import Comparison, Dataset, Prompt, Task
from evalsite.jobs.models import Job
from labeling import runs
from labeling.data import LABEL_COLUMNS, alignment_summary, label_frame
from labeling.forms import StartLabelingForm
from labeling.models import AILabel, LabelerConfig
from labeling.serve import CompletionServer
from tests.helpers import wait_for

torch.set_num_threads(1)


def make_comparisons(n, task="harmless", name="hh-test"):
    ds = Dataset.objects.create(name=name, split="test", task=Task.objects.get(slug=task))
    out = []
    for i in range(n):
        p = Prompt.objects.create(dataset=ds, external_id=str(i), context=f"Human: question {i}?")
        out.append(Comparison.objects.create(
            prompt=p, response_a=f"A safe answer {i}.", response_b=f"A rude answer {i}!",
            human_preference=["first", "second", "tie"][i % 3], human_source="dataset",
            judge_preference="first" if i % 2 else "", judge_name="judge" if i % 2 else ""))
    return ds, out


def make_config(model_dir, task="harmless", **kw):
    return LabelerConfig.objects.create(name=kw.pop("name", "tiny"), task=Task.objects.get(slug=task),
                                        model_path=str(model_dir), batch_size=2, threads=1, **kw)


def run_synchronously(run):
    assert jobs.run_here(run.pk) in Job.FINISHED
    run.refresh_from_db()
    return run


@pytest.mark.django_db
def test_run_is_split_into_chunks_and_never_duplicates(tiny_model_dir):
    ds, comps = make_comparisons(7)
    config = make_config(tiny_model_dir)
    run = jobs.submit("label", {"config_id": config.pk, "dataset_id": ds.pk, "chunk_size": 3}, send=False)
    run = run_synchronously(run)
    assert run.status == "succeeded" and run.progress == 1.0
    assert run.result["dispatched"] == 3 and run.result["labeled"] == 7
    assert sorted(len(c.params["comparison_ids"]) for c in run.children.all()) == [1, 3, 3]
    assert AILabel.objects.filter(config=config).count() == 7
    lab = AILabel.objects.get(comparison=comps[0], config=config)
    assert lab.p_first == pytest.approx((lab.p_slot1_order1 + 1 - lab.p_slot1_order2) / 2)
    assert 0 < lab.label_mass < 1 and lab.prompt_tokens > 0 and lab.latency_ms > 0 and lab.job.parent_id == run.pk

    again = run_synchronously(jobs.submit("label", {"config_id": config.pk, "dataset_id": ds.pk}, send=False))
    assert again.result["dispatched"] == 0 and "nothing to label" in again.message
    # a retried chunk of the first run changes nothing either
    chunk = run.children.first()
    Job.objects.filter(pk=chunk.pk).update(status="failed")
    chunk.refresh_from_db()
    jobs.resume(chunk)
    assert jobs.execute(chunk.pk) == "succeeded"
    assert AILabel.objects.filter(config=config).count() == 7
    chunk.refresh_from_db()
    assert chunk.result["labeled"] == 0 and chunk.result["skipped"] == len(chunk.params["comparison_ids"])

    df = label_frame([config.pk])
    assert list(df.columns) == LABEL_COLUMNS and len(df) == 7
    assert df["policy_a_id"].isna().all() and set(df["human_preference"]) == {"first", "second", "tie"}
    s = alignment_summary(df)
    assert s["human"]["n"] == 5 and s["human"]["ties_excluded"] == 2
    assert s["judge"]["n"] == 3 and s["position"]["n"] == 7


@pytest.mark.django_db
def test_relabel_updates_in_place(tiny_model_dir):
    ds, comps = make_comparisons(2)
    config = make_config(tiny_model_dir)
    run_synchronously(jobs.submit("label", {"config_id": config.pk, "comparison_ids": [comps[0].pk]}, send=False))
    first = AILabel.objects.get(config=config)
    run = run_synchronously(jobs.submit("label", {"config_id": config.pk, "dataset_id": ds.pk, "relabel": True},
                                       send=False))
    assert run.result["labeled"] == 2 and AILabel.objects.filter(config=config).count() == 2
    assert AILabel.objects.get(pk=first.pk).job.parent_id == run.pk


@pytest.mark.django_db
def test_cancel_then_resume_a_run(tiny_model_dir):
    ds, _ = make_comparisons(4)
    config = make_config(tiny_model_dir)
    run = jobs.submit("label", {"config_id": config.pk, "dataset_id": ds.pk, "chunk_size": 2}, send=False)
    assert jobs.execute(run.pk) == "running"  # its chunks do the work
    assert jobs.sync_parent(run.pk) == "running"
    run.refresh_from_db()
    assert run.status == "running" and run.progress == 0 and "0/2 chunks done" in run.message
    assert jobs.cancel(run) == "cancelled"
    assert set(run.children.values_list("status", flat=True)) == {"cancelled"}
    assert AILabel.objects.count() == 0
    assert jobs.resume(run)
    run = run_synchronously(run)
    assert run.status == "succeeded" and run.children.count() == 2  # resumed, not duplicated
    assert AILabel.objects.filter(config=config).count() == 4


@pytest.mark.django_db
def test_a_failed_chunk_fails_the_run_with_a_clear_message(tiny_model_dir, tmp_path):
    ds, _ = make_comparisons(2)
    config = make_config(tiny_model_dir)
    run = jobs.submit("label", {"config_id": config.pk, "dataset_id": ds.pk}, send=False)
    LabelerConfig.objects.filter(pk=config.pk).update(model_path=str(tmp_path / "gone"))
    run = run_synchronously(run)
    assert run.status == "failed" and "does not exist" in run.error and "resume this job" in run.error


@pytest.mark.django_db
def test_bad_configs_and_selections_are_refused(tiny_model_dir, tmp_path):
    ds, comps = make_comparisons(2)
    missing = make_config(tmp_path / "no-model", name="missing")
    with pytest.raises(ValidationError, match="does not exist"):
        jobs.submit("label", {"config_id": missing.pk, "dataset_id": ds.pk}, send=False)
    good = make_config(tiny_model_dir)
    empty = Dataset.objects.create(name="empty", task=Task.objects.get(slug="harmless"))
    with pytest.raises(ValidationError, match="No comparisons match"):
        jobs.submit("label", {"config_id": good.pk, "dataset_id": empty.pk}, send=False)
    with pytest.raises(ValidationError, match="Say which comparisons"):
        jobs.submit("label", {"config_id": good.pk}, send=False)
    with pytest.raises(ValidationError, match="There is no labeler config"):
        jobs.submit("label", {"config_id": 9999, "dataset_id": ds.pk}, send=False)
    summ = make_config(tiny_model_dir, task="summarization", name="summ")
    with pytest.raises(ValidationError, match="belong to another task"):
        jobs.submit("label", {"config_id": summ.pk, "dataset_id": ds.pk}, send=False)
    bad_template = make_config(tiny_model_dir, name="bad", template_overrides={"ending": "{nope}"})
    with pytest.raises(ValidationError, match="unknown placeholder"):
        jobs.submit("label", {"config_id": bad_template.pk, "dataset_id": ds.pk}, send=False)
    assert Job.objects.count() == 0


@pytest.mark.django_db
def test_start_form_refuses_a_server_without_logprobs(tiny_model_dir):
    from labeling.backends import LocalBackend, LocalBackendConfig

    ds, _ = make_comparisons(2)
    srv = CompletionServer(LocalBackend(LocalBackendConfig(str(tiny_model_dir))), logprobs=False).start()
    try:
        config = LabelerConfig.objects.create(name="srv", task=Task.objects.get(slug="harmless"), backend="server",
                                              server_url=srv.url)
        form = StartLabelingForm({"dataset": ds.pk, "chunk_size": 10}, config=config)
        assert not form.is_valid()
        assert "returned no token log-probabilities" in str(form.errors)
        empty = StartLabelingForm({"chunk_size": 10}, config=make_config(tiny_model_dir))
        assert not empty.is_valid() and "Say which comparisons" in str(empty.errors)
    finally:
        srv.stop()


@pytest.mark.django_db
def test_admin_shows_diagnostics_and_starts_a_run(client, researcher, tiny_model_dir):
    ds, _ = make_comparisons(3)
    config = make_config(tiny_model_dir)
    run_synchronously(jobs.submit("label", {"config_id": config.pk, "dataset_id": ds.pk}, send=False))
    client.force_login(researcher)
    page = client.get(f"/admin/labeling/labelerconfig/{config.pk}/change/").content.decode()
    assert "Alignment with human preferences" in page and "Same position preferred" in page
    assert "AI judge agreement" in page and "1 ties" in page
    listing = client.get("/admin/labeling/labelerconfig/").content.decode()
    assert "(n=2)" in listing
    r = client.post(f"/admin/labeling/labelerconfig/{config.pk}/label/", {"chunk_size": 5})
    assert r.status_code == 200 and "Say which comparisons" in r.content.decode()
    r = client.post(f"/admin/labeling/labelerconfig/{config.pk}/label/",
                    {"dataset": ds.pk, "chunk_size": 5, "relabel": "on"})
    assert r.status_code == 302
    job = Job.objects.filter(kind="label").latest("pk")
    assert job.params["relabel"] is True and job.params["dataset_id"] == ds.pk and job.created_by == researcher
    assert client.get("/admin/labeling/ailabel/").status_code == 200


@pytest.mark.worker
def test_two_real_workers_share_the_chunks_without_duplicates(start_worker, tiny_model_dir,
                                                              django_capture_on_commit_callbacks):
    ds, comps = make_comparisons(12)
    config = make_config(tiny_model_dir)
    w1, w2 = start_worker(), start_worker()
    with django_capture_on_commit_callbacks(execute=True):
        run = jobs.submit("label", {"config_id": config.pk, "dataset_id": ds.pk, "chunk_size": 2})
    wait_for(lambda: Job.objects.get(pk=run.pk).status in ("succeeded", "failed"), timeout=120,
             message=f"the run to finish (logs: {w1.logfile}, {w2.logfile})")
    run.refresh_from_db()
    assert run.status == "succeeded", (run.error, run.message)
    assert run.progress == 1.0 and run.result["labeled"] == 12
    chunks = list(run.children.all())
    assert len(chunks) == 6 and all(c.status == "succeeded" for c in chunks)
    labels = list(AILabel.objects.filter(config=config).values_list("comparison_id", flat=True))
    assert sorted(labels) == sorted(c.pk for c in comps)
    used = {c.worker.split("@")[0] for c in chunks}
    assert used and used <= {w1.name, w2.name}  # every chunk ran on one of the two workers


@pytest.mark.slow
@pytest.mark.django_db
def test_smollm2_labels_hh_harmless_pairs(shared_data):
    """The real SmolLM2 labeler on HH harmless pairs: sane ranges only (it is near chance)."""
    from evalsite.modelzoo import convert_smollm2
    from evalsite.tasktext import split_dialogue
    from labeling.backends import LocalBackend, LocalBackendConfig
    from labeling.scoring import LabelerSettings, Pair, PreferenceLabeler
    from evalsite.stats import labeler_alignment, position_bias

    torch.set_num_threads(2)
    model = convert_smollm2("var/models/SmolLM2-135M-Instruct")
    pairs, human = [], []
    with gzip.open(shared_data / "hh-rlhf-harmless-base-test.jsonl.gz", "rt") as f:
        for line in f:
            row = json.loads(line)
            c, r = split_dialogue(row["chosen"]), split_dialogue(row["rejected"])
            if not (c and r) or c[0] != r[0] or len(c[0]) > 1200:
                continue
            # alternate which side the human-preferred response is on
            i = len(pairs)
            pairs.append(Pair(c[0], c[1], r[1]) if i % 2 == 0 else Pair(c[0], r[1], c[1]))
            human.append("first" if i % 2 == 0 else "second")
            if len(pairs) == 64:
                break
    labeler = PreferenceLabeler(LocalBackend(LocalBackendConfig(str(model), batch_size=8)),
                                LabelerSettings(task="harmless", variant="base"))
    res = labeler.label(pairs)
    al = labeler_alignment([r.p_first for r in res], human)
    pb = position_bias([r.p_slot1_order1 for r in res], [r.p_slot1_order2 for r in res])
    mass = sum(r.label_mass for r in res) / len(res)
    print(f"\nSmolLM2-135M-Instruct, HH harmless, Base 0-shot, {al['n']} pairs: alignment "
          f"{100 * al['accuracy']:.1f}% (95% CI {100 * al['ci_low']:.1f}-{100 * al['ci_high']:.1f}), "
          f"same position {pb['same_position_pct']:.1f}%, first-slot share {pb['first_slot_share']:.2f}, "
          f"mean label mass {mass:.3f}")
    assert al["n"] == 64 and 0.2 <= al["accuracy"] <= 0.8
    assert 0 <= pb["same_position_pct"] <= 100 and 0 < mass <= 1
    assert all(0 <= r.p_first <= 1 for r in res)
