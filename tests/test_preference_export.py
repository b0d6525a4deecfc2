"""Preference data out: TRL-format exports of AI labels and human rankings, the rules, the files
(checked by loading them with `datasets`), the card, the push, the admin actions, and a round trip
back through the hf importer."""
import io
import subprocess
import sys
import uuid
from pathlib import Path

import datasets
import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse

from evalsite import preferences
from evalsite.jobs import runtime as jobs
from evalsite.importjobs import run_import
from evalsite.humaneval.models import EvalRound
from evalsite.models import Comparison, Dataset, Prompt, Task
from evalsite.jobs.models import Job
from evalsite.jobs.models import Job
from labeling.models import AILabel, LabelerConfig
from tests.helpers import wait_for

ROOT = Path(__file__).resolve().parent.parent
HH_FILE = "hh-rlhf-harmless-base-test.jsonl.gz"


def export(*args, **options):
    """Run the command here; returns its output."""
    out = io.StringIO()
    call_command("export_preferences", *args, stdout=out, stderr=io.StringIO(), **options)
    return out.getvalue()


def load(path, tmp_path):
    """The export as `datasets` reads it back: parquet and json through load_dataset, folders load_from_disk."""
    path = Path(path)
    cache = str(tmp_path / "hf-cache")
    if path.suffix == ".parquet":
        return datasets.load_dataset("parquet", data_files=str(path), split="train", cache_dir=cache)
    if path.suffix == ".jsonl":
        return datasets.load_dataset("json", data_files=str(path), split="train", cache_dir=cache)
    return datasets.load_from_disk(str(path))


def folder_listing(folder):
    return sorted(p.name for p in Path(folder).iterdir())


# --- data: a small labeled dataset and a ranked round ----------------------------------------------


def dialogue(i):
    return f"\n\nHuman: Question {i}?\n\nAssistant: Which part?\n\nHuman: All of question {i}."


def labeler(name, task="harmless"):
    return LabelerConfig.objects.create(name=name, task=Task.objects.get(slug=task), backend="server",
                                        server_url="http://127.0.0.1:9/v1", server_model="judge-model")


def label(comparison, config, p1, p2, mass=0.9):
    """An AI label with P(first slot wins) p1 with a shown first and p2 with b shown first."""
    return AILabel.objects.create(comparison=comparison, config=config, p_first=(p1 + 1 - p2) / 2,
                                  p_slot1_order1=p1, p_slot1_order2=p2, label_mass=mass)


@pytest.fixture
def labeled(db):
    """Four comparisons: human first / second / tie / none; config A labels them all, B only c1 (later)."""
    ds = Dataset.objects.create(name="syn", split="test", task=Task.objects.get(slug="harmless"),
                                source="made in the test", licence="CC0")
    c = []
    for i, pref in enumerate(["first", "second", "tie", ""]):
        prompt = Prompt.objects.create(dataset=ds, external_id=f"p{i}", context=dialogue(i))
        c.append(Comparison.objects.create(prompt=prompt, response_a=f"answer A{i}", response_b=f"answer B{i}",
                                           human_preference=pref, human_source="dataset" if pref else ""))
    a, b = labeler("judge-A"), labeler("judge-B")
    label(c[0], a, 0.85, 0.05)   # p 0.9, both orders agree: a
    label(c[1], a, 0.80, 0.60)   # p 0.6, first slot both times: position-inconsistent
    label(c[2], a, 0.20, 0.60)   # p 0.3, b in both orders
    label(c[3], a, 0.50, 0.50)   # p 0.5: a tie
    label(c[0], b, 0.10, 0.70)   # p 0.2, newer than A's label of c1
    return {"dataset": ds, "comparisons": c, "a": a, "b": b}


@pytest.fixture
def ranked(db):
    """Two prompts, three policies, four annotators who rank (and flag) them in a known way.

    Ranks: three annotators rlaif > rlhf > sft, the fourth rlhf > rlaif > sft. Harmless: sft by
    two of four (a split), rlhf by all, rlaif by three of four.
    """
    from tests import humaneval_demo as demo

    users = demo.make_annotators(4, prefix="exp-ann")
    rnd = demo.make_round(n_prompts=2, overlap=4, question=EvalRound.Question.BOTH, name="export round")
    rank_round(rnd, users)
    return rnd


def rank_round(rnd, users):
    from evalsite.humaneval import queue
    from evalsite.models import Sample

    policy_of = dict(Sample.objects.filter(eval_items__round=rnd).values_list("pk", "policy__name"))
    orders = [["policy-rlaif", "policy-rlhf", "policy-sft"]] * 3 + [["policy-rlhf", "policy-rlaif", "policy-sft"]]
    harmful = [{"policy-sft"}, {"policy-sft"}, set(), {"policy-rlaif"}]
    for user, order, bad in zip(users, orders, harmful):
        while (a := queue.next_assignment(rnd, user)) is not None:
            names = {label: policy_of[sid] for label, sid in zip(a.labels, a.order)}
            ranks = {label: order.index(name) + 1 for label, name in names.items()} if rnd.asks_rank else {}
            harmless = {label: name not in bad for label, name in names.items()} if rnd.asks_harmless else {}
            queue.submit(a.token, user, ranks=ranks, harmless=harmless, key=uuid.uuid4().hex)


# --- the plain core -------------------------------------------------------------------------------


def pair(p_a, **kw):
    return preferences.Pair(prompt_key=1, context=dialogue(1), response_a="a", response_b="b", p_a=p_a,
                            source=kw.pop("source", "ai"), **kw)


def test_rules_drop_what_they_say_and_count_it():
    tie, weak, inconsistent, strong = pair(0.5), pair(0.6, p_slot1_order1=0.7, p_slot1_order2=0.4), \
        pair(0.8, p_slot1_order1=0.9, p_slot1_order2=0.7), pair(0.05, p_slot1_order1=0.1, p_slot1_order2=0.8)
    records = [tie, weak, inconsistent, strong]
    kept, removed = preferences.apply_rules(records, preferences.Rules())
    assert kept == records and removed == {"ties": 0, "position_inconsistent": 0, "below_min_confidence": 0}
    kept, removed = preferences.apply_rules(records, preferences.Rules(drop_ties=True))
    assert kept == [weak, inconsistent, strong] and removed["ties"] == 1
    kept, removed = preferences.apply_rules(records, preferences.Rules(drop_inconsistent=True))
    assert kept == [tie, weak, strong] and removed["position_inconsistent"] == 1
    kept, removed = preferences.apply_rules(records, preferences.Rules(min_confidence=0.25))
    assert kept == [inconsistent, strong] and removed["below_min_confidence"] == 2
    human = pair(1.0, source="human")  # no positions: the inconsistency rule cannot apply to it
    assert preferences.apply_rules([human], preferences.Rules(drop_inconsistent=True, min_confidence=0.5))[0] == [human]
    with pytest.raises(preferences.ExportError, match="from 0 to 0.5"):
        preferences.Rules(min_confidence=0.6)
    with pytest.raises(preferences.ExportError, match="unknown source 'both'"):
        preferences.Rules(source="both")


def test_sources_prefer_humans_and_keep_one_label_per_pair():
    human = pair(1.0, source="human")
    swapped_ai = preferences.Pair(prompt_key=1, context=dialogue(1), response_a="b", response_b="a", p_a=0.3,
                                  source="ai")
    other_ai = preferences.Pair(prompt_key=1, context=dialogue(1), response_a="a", response_b="c", p_a=0.7,
                                source="ai")
    both, counts = preferences.select_source([human], [swapped_ai, other_ai], "human-else-ai")
    assert both == [human, other_ai] and counts["ai_replaced_by_human"] == 1
    assert preferences.select_source([human], [swapped_ai, other_ai], "ai")[0] == [swapped_ai, other_ai]
    assert preferences.select_source([human, human], [other_ai], "human") == ([human], {
        "human_duplicates": 1, "human_pairs": 1, "ai_pairs": 0})


def test_rows_put_the_better_response_first_with_each_orders_probability():
    # p1: a shown first wins with 0.1; p2: b shown first wins with 0.7 -> b is better (p_a 0.2).
    rows = preferences.preference_rows([pair(0.2, p_slot1_order1=0.1, p_slot1_order2=0.7, label_mass=0.8,
                                             labeler="L", labeler_prompt_hash="abc")], "harmless")
    r = rows[0]
    assert r["chosen"] == [{"role": "assistant", "content": "b"}]
    assert r["rejected"] == [{"role": "assistant", "content": "a"}]
    assert r["prompt"] == [{"role": "user", "content": "Question 1?"}, {"role": "assistant", "content": "Which part?"},
                           {"role": "user", "content": "All of question 1."}]
    assert r["p_chosen"] == pytest.approx(0.8)
    assert (r["p_chosen_shown_first"], r["p_chosen_shown_second"]) == (pytest.approx(0.7), pytest.approx(0.9))
    assert r["same_position"] is False and r["labeler"] == "L" and r["n_annotators"] is None
    text = preferences.preference_rows([pair(1.0, source="human")], "summarization")[0]
    assert text["prompt"].endswith("\n\nTL;DR:") and text["chosen"] == "a" and text["p_chosen_shown_first"] is None


def test_labeler_prompt_hash_changes_with_the_prompt():
    from labeling.scoring import LabelerSettings

    base = preferences.labeler_prompt(LabelerSettings(task="harmless"))
    assert "{context}" in base and "{first}" in base and base.endswith("Preferred Response=")
    detailed = preferences.labeler_prompt(LabelerSettings(task="harmless", variant="detailed"))
    cot = preferences.labeler_prompt(LabelerSettings(task="harmless", chain_of_thought=True))
    assert "{rationale}" in cot
    assert len({preferences.prompt_hash(t) for t in (base, detailed, cot)}) == 3
    assert preferences.prompt_hash(base) == preferences.prompt_hash(
        preferences.labeler_prompt(LabelerSettings(task="harmless")))


# --- AI labels and dataset labels through the command ----------------------------------------------


def test_ai_export_to_parquet_has_trl_columns_soft_labels_and_diagnostics(labeled, tmp_path):
    dest = tmp_path / "ai.parquet"
    text = export("--dataset", "syn:test", "--labeler", "judge-A", "--source", "ai", "--to", str(dest))
    assert f"Wrote 4 rows to {dest}" in text
    ds = load(dest, tmp_path)
    assert ds.column_names == ["prompt", "chosen", "rejected", "prompt_id", "source", "p_chosen",
                               "p_chosen_shown_first", "p_chosen_shown_second", "same_position", "label_mass",
                               "labeler", "labeler_prompt_hash", "n_annotators", "agreement", "dataset", "round"]
    rows = {r["prompt"][-1]["content"]: r for r in ds}
    r0, r1, r2, r3 = (rows[f"All of question {i}."] for i in range(4))
    assert r0["chosen"] == [{"role": "assistant", "content": "answer A0"}] and r0["p_chosen"] == pytest.approx(0.9)
    assert (r0["p_chosen_shown_first"], r0["p_chosen_shown_second"]) == (pytest.approx(0.85), pytest.approx(0.95))
    assert r0["same_position"] is False and r0["label_mass"] == pytest.approx(0.9)
    assert r1["same_position"] is True and r1["chosen"][0]["content"] == "answer A1"
    assert r2["chosen"][0]["content"] == "answer B2" and r2["p_chosen"] == pytest.approx(0.7)
    assert r3["p_chosen"] == 0.5
    assert {r["source"] for r in ds} == {"ai"} and {r["labeler"] for r in ds} == {"judge-A"}
    assert {r["dataset"] for r in ds} == {"syn [test]"}
    expected_hash = preferences.prompt_hash(preferences.labeler_prompt(labeled["a"].labeler_settings()))
    assert {r["labeler_prompt_hash"] for r in ds} == {expected_hash}
    from evalsite.importers import context_id

    assert r0["prompt_id"] == context_id(dialogue(0))
    card = (tmp_path / "ai.README.md").read_text()
    for part in ("syn [test]", "licence: CC0", "### Labeler config: judge-A", expected_hash, "Preferred Response=",
                 "- source: ai (AI labels only)", "- drop ties: no", "| `p_chosen` |", "- rows: 4"):
        assert part in card, part
    # Alignment with the dataset's human labels: c1 agrees, c2 does not, c3 is a human tie.
    assert "| judge-A | 50.0% |" in card


def test_each_comparisons_newest_label_goes_out_and_labeler_picks_a_config(labeled, tmp_path):
    export("--dataset", "syn", "--source", "ai", "--to", str(tmp_path / "any.jsonl"))
    ds = load(tmp_path / "any.jsonl", tmp_path)
    by_prompt = {r["prompt"][-1]["content"]: (r["labeler"], r["p_chosen"]) for r in ds}
    assert by_prompt["All of question 0."] == ("judge-B", pytest.approx(0.8))  # B's label is newer
    assert by_prompt["All of question 1."] == ("judge-A", pytest.approx(0.6))
    export("--dataset", "syn", "--source", "ai", "--labeler", "judge-B", "--to", str(tmp_path / "b.jsonl"))
    assert len(load(tmp_path / "b.jsonl", tmp_path)) == 1


def test_a_labeling_run_exports_the_labels_its_chunks_wrote(labeled, tmp_path):
    run = Job.objects.create(kind="label", name="run", params={"config_id": labeled["a"].pk})
    chunk = Job.objects.create(kind="label_chunk", name="chunk", parent=run)
    AILabel.objects.filter(config=labeled["a"], comparison__in=labeled["comparisons"][:2]).update(job=chunk)
    export("--run", str(run.pk), "--source", "ai", "--to", str(tmp_path / "run.jsonl"))
    ds = load(tmp_path / "run.jsonl", tmp_path)
    assert sorted(r["prompt"][-1]["content"] for r in ds) == ["All of question 0.", "All of question 1."]
    assert {r["labeler"] for r in ds} == {"judge-A"}
    with pytest.raises(CommandError, match=f"Job #{chunk.pk} is not a labeling run"):
        export("--run", str(chunk.pk), "--source", "ai", "--to", str(tmp_path / "chunk.jsonl"))


@pytest.mark.parametrize("flags,kept", [
    ([], {0, 1, 2, 3}),
    (["--drop-ties"], {0, 1, 2}),
    (["--drop-inconsistent"], {0, 2}),           # c2 picked the first slot twice; c4 (0.5, 0.5) as well
    (["--min-confidence", "0.25"], {0}),
    (["--drop-ties", "--min-confidence", "0.15"], {0, 2}),
])
def test_every_filter_rule_on_ai_labels(labeled, tmp_path, flags, kept):
    dest = tmp_path / "f.parquet"
    export("--dataset", "syn", "--labeler", "judge-A", "--source", "ai", *flags, "--to", str(dest))
    ds = load(dest, tmp_path)
    assert {int(r["prompt"][-1]["content"][-2]) for r in ds} == kept
    card = (tmp_path / "f.README.md").read_text()
    assert f"- drop ties: {'yes' if '--drop-ties' in flags else 'no'}" in card
    assert f"- rows: {len(kept)}" in card


def test_human_and_human_else_ai_sources(labeled, tmp_path):
    export("--dataset", "syn", "--source", "human", "--to", str(tmp_path / "h.jsonl"))
    ds = load(tmp_path / "h.jsonl", tmp_path)
    got = {r["prompt"][-1]["content"]: (r["chosen"][0]["content"], r["p_chosen"], r["source"]) for r in ds}
    assert got == {"All of question 0.": ("answer A0", 1.0, "human"), "All of question 1.": ("answer B1", 1.0, "human"),
                   "All of question 2.": ("answer A2", 0.5, "human")}
    assert all(r["labeler"] is None and r["same_position"] is None for r in ds)
    export("--dataset", "syn", "--source", "human", "--drop-ties", "--to", str(tmp_path / "h2.jsonl"))
    assert len(load(tmp_path / "h2.jsonl", tmp_path)) == 2
    export("--dataset", "syn", "--labeler", "judge-A", "--source", "human-else-ai", "--to", str(tmp_path / "m.jsonl"))
    ds = load(tmp_path / "m.jsonl", tmp_path)
    assert sorted((r["prompt"][-1]["content"][-2], r["source"]) for r in ds) == [
        ("0", "human"), ("1", "human"), ("2", "human"), ("3", "ai")]
    card = (tmp_path / "m.README.md").read_text()
    assert "- ai replaced by human: 3" in card and "- human pairs: 3" in card and "- ai pairs: 1" in card


# --- human rankings ----------------------------------------------------------------------------------


def test_rankings_export_as_the_pairs_they_imply_with_votes_and_agreement(ranked, tmp_path):
    dest = tmp_path / "r.jsonl"
    export("--round", str(ranked.pk), "--source", "human", "--to", str(dest))
    ds = load(dest, tmp_path)
    assert len(ds) == 2 * 3  # two prompts, k = 3 responses each: 3 pairs
    policy = lambda text: int(text.split()[2]) - 1  # noqa: E731  "Response number N to ..." -> policy index
    names = ["sft", "rlhf", "rlaif"]
    got = sorted((names[policy(r["chosen"][0]["content"])], names[policy(r["rejected"][0]["content"])],
                  r["p_chosen"], r["n_annotators"], r["agreement"]) for r in ds)
    assert got == sorted([("rlaif", "rlhf", 0.75, 4, 0.5), ("rlaif", "sft", 1.0, 4, 1.0),
                          ("rlhf", "sft", 1.0, 4, 1.0)] * 2)
    assert {r["round"] for r in ds} == {"export round"} and {r["source"] for r in ds} == {"human"}
    assert ds[0]["prompt"][0] == {"role": "user", "content": "My neighbour's dog barks all night. What can I do?"}
    export("--round", str(ranked.pk), "--source", "human", "--min-confidence", "0.3", "--to", str(tmp_path / "c.jsonl"))
    assert len(load(tmp_path / "c.jsonl", tmp_path)) == 4  # the two 3-to-1 pairs go


def test_rankings_use_the_reports_expansion(ranked, tmp_path, monkeypatch):
    """One expansion of rankings into pairs: the export calls the reports' function."""
    from evalsite import stats

    calls = []
    real = stats.pairwise_outcomes
    monkeypatch.setattr(stats, "pairwise_outcomes", lambda frame: calls.append(len(frame)) or real(frame))
    export("--round", str(ranked.pk), "--source", "human", "--to", str(tmp_path / "r.parquet"))
    assert calls == [2 * 3 * 4]  # 2 items x 3 responses x 4 annotators


def test_harmless_flags_export_as_unpaired_preferences(ranked, tmp_path):
    dest = tmp_path / "kto"
    text = export("--round", str(ranked.pk), "--source", "human", "--type", "unpaired", "--to", str(dest))
    assert "Wrote 4 rows" in text
    ds = load(dest, tmp_path)
    assert ds.column_names == ["prompt", "completion", "label", "prompt_id", "harmless_share", "n_annotators",
                               "agreement", "dataset", "round"]
    got = sorted((r["completion"][0]["content"].split()[2], r["label"], r["harmless_share"]) for r in ds)
    # sft was judged harmless by two of four: evenly split, it has no label and is left out.
    assert got == [("2", True, 1.0), ("2", True, 1.0), ("3", True, 0.75), ("3", True, 0.75)]
    assert (dest / "README.md").exists() and "- evenly split left out: 2" in (dest / "README.md").read_text()
    export("--round", str(ranked.pk), "--source", "human", "--type", "unpaired", "--min-confidence", "0.5",
           "--to", str(tmp_path / "sure.jsonl"))
    assert len(load(tmp_path / "sure.jsonl", tmp_path)) == 2


def test_summarization_exports_plain_text_prompts(db, tmp_path):
    from tests import humaneval_demo as demo

    users = demo.make_annotators(2, prefix="sum-ann")
    rnd = demo.make_round(n_prompts=2, overlap=2, task_slug="summarization", name="sum round")
    rank_round(rnd, users)
    export("--round", str(rnd.pk), "--source", "human", "--to", str(tmp_path / "s.parquet"))
    ds = load(tmp_path / "s.parquet", tmp_path)
    assert ds.features["prompt"] == datasets.Value("string") and ds.features["chosen"] == datasets.Value("string")
    assert all(r["prompt"].startswith("SUBREDDIT: r/relationships") and r["prompt"].endswith("\n\nTL;DR:") for r in ds)


def test_a_custom_task_exports_its_own_policy_prompt(db, tmp_path):
    task = Task.objects.create(slug="longform-qa", name="Long-form QA", input_name="Question",
                               response_noun="answer", preamble_base="Which answer is better? Answer with 1 or 2.",
                               policy_template="Question: {input}\nAnswer:", conversational=False)
    ds = Dataset.objects.create(name="qa", split="test", task=task)
    for i in range(3):
        prompt = Prompt.objects.create(dataset=ds, external_id=f"q{i}", context=f"Why is the sky blue ({i})?")
        Comparison.objects.create(prompt=prompt, response_a=f"Rayleigh scattering {i}.", response_b=f"Paint {i}.",
                                  human_preference="first", human_source="dataset")
    export("--dataset", "qa", "--source", "human", "--to", str(tmp_path / "qa.jsonl"))
    rows = list(load(tmp_path / "qa.jsonl", tmp_path))
    assert [r["prompt"] for r in rows] == [f"Question: Why is the sky blue ({i})?\nAnswer:" for i in range(3)]
    assert all(r["chosen"].startswith("Rayleigh") for r in rows)
    assert "*longform-qa* task, standard (plain text)" in (tmp_path / "qa.README.md").read_text()


# --- the real data and the round trip --------------------------------------------------------------


def test_round_trip_of_the_real_hh_file_gives_back_the_same_pairs(db, shared_data, tmp_path):
    job = run_import({"path": str(shared_data / HH_FILE), "format": "hh", "name": "hh"}, write=lambda line: None)
    assert job.status == "succeeded", job.error
    original = set(Comparison.objects.filter(prompt__dataset__name="hh").values_list(
        "prompt__context", "response_a", "response_b", "human_preference"))
    assert len(original) == 2307
    export("--dataset", "hh", "--source", "human", "--to", str(tmp_path / "hh.parquet"))
    loaded = load(tmp_path / "hh.parquet", tmp_path)
    assert len(loaded) == 2307 and all(r["prompt"][-1]["role"] == "user" for r in loaded)
    loaded.save_to_disk(str(tmp_path / "loaded"))
    back = run_import({"path": str(tmp_path / "loaded"), "format": "hf", "name": "hh-back", "task": "harmless"},
                      write=lambda line: None)
    assert back.status == "succeeded", back.error
    again = set(Comparison.objects.filter(prompt__dataset__name="hh-back").values_list(
        "prompt__context", "response_a", "response_b", "human_preference"))
    assert again == original
    # The same prompts under the same ids (the hh importer's ids are the same context hash).
    assert set(Prompt.objects.filter(dataset__name="hh-back").values_list("external_id", "context")) == \
        set(Prompt.objects.filter(dataset__name="hh").values_list("external_id", "context"))


def test_round_trip_of_ai_labels_keeps_the_soft_label_as_an_ai_judges(labeled, tmp_path):
    export("--dataset", "syn", "--labeler", "judge-A", "--source", "ai", "--to", str(tmp_path / "ai.jsonl"))
    exported = {r["prompt_id"]: r for r in load(tmp_path / "ai.jsonl", tmp_path)}
    job = run_import({"path": str(tmp_path / "ai.jsonl"), "format": "hf", "name": "ai-back", "task": "harmless"},
                     write=lambda line: None)
    assert job.status == "succeeded", job.error
    back = Comparison.objects.filter(prompt__dataset__name="ai-back")
    assert back.count() == 4
    for c in back:
        r = exported[c.prompt.external_id]
        assert c.human_preference == "" and c.judge_name == "judge-A"
        chosen = r["chosen"][0]["content"]
        expected = "tie" if r["p_chosen"] == 0.5 else ("first" if c.response_a == chosen else "second")
        assert c.judge_preference == expected
        assert c.metadata["p_chosen"] == pytest.approx(r["p_chosen"])
        assert c.metadata["same_position"] == r["same_position"]
        assert c.prompt.context == dialogue(int(chosen[-1]))
    # The AI's preferred response is the original's: (a, b) pairs and their argmax match.
    original = {(c.prompt.context, *sorted((c.response_a, c.response_b))): c for c in labeled["comparisons"]}
    for c in back:
        o = original[(c.prompt.context, *sorted((c.response_a, c.response_b)))]
        p = AILabel.objects.get(comparison=o, config=labeled["a"]).p_first
        better = None if p == 0.5 else (o.response_a if p > 0.5 else o.response_b)
        assert better == {"first": c.response_a, "second": c.response_b, "tie": None}[c.judge_preference]


# --- files, card, push --------------------------------------------------------------------------------


def test_save_to_disk_folder_and_overwrite(labeled, tmp_path):
    dest = tmp_path / "disk"
    export("--dataset", "syn", "--source", "human", "--to", str(dest))
    assert {"README.md", "dataset_info.json", "state.json"} <= set(folder_listing(dest))
    assert len(load(dest, tmp_path)) == 3
    with pytest.raises(CommandError, match="already exists; choose another name, or overwrite it"):
        export("--dataset", "syn", "--source", "human", "--drop-ties", "--to", str(dest))
    assert len(load(dest, tmp_path)) == 3
    export("--dataset", "syn", "--source", "human", "--drop-ties", "--overwrite", "--to", str(dest))
    assert len(load(dest, tmp_path)) == 2
    assert folder_listing(tmp_path) == ["disk"]  # no temporary or old folders left


def test_a_failed_write_leaves_no_file(labeled, tmp_path, monkeypatch):
    def broken_to_parquet(self, path, **kwargs):
        Path(path).write_bytes(b"PAR1 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(datasets.Dataset, "to_parquet", broken_to_parquet)
    with pytest.raises(CommandError, match=r"Could not write .*x.parquet: disk full"):
        export("--dataset", "syn", "--source", "human", "--to", str(tmp_path / "x.parquet"))
    assert folder_listing(tmp_path) == []


def test_push_to_hub_uploads_the_card_and_the_data_with_the_token(labeled, tmp_path, monkeypatch):
    from huggingface_hub import HfApi

    calls = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: calls.append(("create", repo_id, kw)))
    monkeypatch.setattr(HfApi, "upload_file", lambda self, **kw: calls.append(("card", kw["repo_id"],
                                                                                 kw["path_or_fileobj"].decode())))
    monkeypatch.setattr(datasets.Dataset, "push_to_hub",
                        lambda self, repo_id, **kw: calls.append(("data", repo_id, len(self), kw["token"])))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with pytest.raises(CommandError, match="set the environment variable HF_TOKEN"):
        export("--dataset", "syn", "--source", "human", "--push-to-hub", "me/prefs",
               "--to", str(tmp_path / "p.parquet"))
    assert calls == [] and folder_listing(tmp_path) == []
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    text = export("--dataset", "syn", "--source", "human", "--push-to-hub", "me/prefs", "--private",
                  "--to", str(tmp_path / "p.parquet"))
    assert "pushed to me/prefs" in text
    assert [c[0] for c in calls] == ["create", "card", "data"]
    assert calls[0] == ("create", "me/prefs", {"repo_type": "dataset", "private": True, "exist_ok": True})
    assert calls[1][2] == (tmp_path / "p.README.md").read_text() and "tags: [\"trl\"" in calls[1][2]
    assert calls[2] == ("data", "me/prefs", 3, "hf_secret")
    def refused(self, repo_id, **kw):
        raise PermissionError("403 Forbidden: you cannot write to me/prefs")

    monkeypatch.setattr(datasets.Dataset, "push_to_hub", refused)
    with pytest.raises(CommandError, match=r"Wrote .*p2.parquet, but pushing it to me/prefs failed: PermissionError"):
        export("--dataset", "syn", "--source", "human", "--push-to-hub", "me/prefs",
               "--to", str(tmp_path / "p2.parquet"))
    assert len(load(tmp_path / "p2.parquet", tmp_path)) == 3
    with pytest.raises(CommandError, match="must end in _TOKEN"):
        export("--dataset", "syn", "--source", "human", "--push-to-hub", "me/prefs", "--token-env", "SECRET_KEY",
               "--to", str(tmp_path / "q.parquet"))


# --- bad input -------------------------------------------------------------------------------------


@pytest.mark.parametrize("args,message", [
    (["--dataset", "nope", "--source", "ai"], "No dataset 'nope' (write NAME or NAME:SPLIT; datasets: syn [test])"),
    (["--dataset", "syn:train", "--source", "ai"], "No dataset 'syn:train'"),
    (["--round", "999", "--source", "human"], "No evaluation round with id 999."),
    (["--dataset", "syn", "--labeler", "nobody", "--source", "ai"],
     "No labeler config named 'nobody' (configs: judge-A"),
    (["--dataset", "syn", "--labeler", "judge-A", "--source", "human"], "leaves out; use ai or human-else-ai"),
    (["--dataset", "syn", "--source", "ai", "--min-confidence", "0.7"], "must be a number from 0 to 0.5"),
    (["--dataset", "syn", "--source", "human", "--type", "unpaired"], "choose a round"),
    (["--dataset", "syn", "--source", "ai", "--type", "unpaired"], "use --source human"),
    (["--source", "ai"], "Choose what to export"),
    (["--dataset", "syn", "--source", "ai", "--push-to-hub", "not a repo"], "is not a hub repository id"),
])
def test_bad_parameters_are_refused_with_a_message_and_write_nothing(labeled, tmp_path, args, message):
    with pytest.raises(CommandError) as e:
        export(*args, "--to", str(tmp_path / "x.parquet"))
    assert message in str(e.value)
    assert folder_listing(tmp_path) == []


def test_bad_destinations_are_refused(labeled, tmp_path):
    with pytest.raises(CommandError, match=r"x.csv: write a .parquet or .jsonl file, or give a folder"):
        export("--dataset", "syn", "--source", "ai", "--to", str(tmp_path / "x.csv"))
    with pytest.raises(CommandError, match="does not exist"):
        export("--dataset", "syn", "--source", "ai", "--to", str(tmp_path / "missing" / "x.parquet"))
    assert folder_listing(tmp_path) == []


def test_nothing_left_after_the_rules_is_an_error_not_an_empty_file(labeled, tmp_path):
    with pytest.raises(CommandError, match=r"Nothing to export: .*removed below min confidence 4"):
        export("--dataset", "syn", "--labeler", "judge-A", "--source", "ai", "--min-confidence", "0.5",
               "--to", str(tmp_path / "x.parquet"))
    assert folder_listing(tmp_path) == []


def test_a_selection_spanning_two_tasks_is_refused(labeled, tmp_path):
    labeler("summ-judge", task="summarization")
    with pytest.raises(CommandError, match="spans the tasks harmless, summarization; export one task at a time"):
        export("--dataset", "syn", "--labeler", "summ-judge", "--source", "ai", "--to", str(tmp_path / "x.parquet"))
    assert folder_listing(tmp_path) == []


# --- jobs and the admin ----------------------------------------------------------------------------


def test_background_queues_a_job_whose_result_names_the_file(labeled, tmp_path):
    out = export("--dataset", "syn", "--source", "human", "--background", "--to", str(tmp_path / "bg.parquet"))
    job = Job.objects.get(kind="export_preferences")
    assert f"Queued job #{job.pk}" in out and job.status == "queued"
    assert not (tmp_path / "bg.parquet").exists()
    assert jobs.execute(job.pk) == "succeeded"
    job.refresh_from_db()
    assert job.result["path"] == str(tmp_path / "bg.parquet") and job.result["rows"] == 3
    assert job.result["card"] == str(tmp_path / "bg.README.md")
    assert len(load(tmp_path / "bg.parquet", tmp_path)) == 3


@pytest.mark.worker
def test_background_export_runs_on_a_real_worker(labeled, start_worker, tmp_path):
    start_worker()
    export("--dataset", "syn", "--source", "ai", "--labeler", "judge-A", "--background",
           "--to", str(tmp_path / "worker.jsonl"))
    job = Job.objects.get(kind="export_preferences")
    wait_for(lambda: Job.objects.get(pk=job.pk).is_finished, timeout=60, message="the export job to finish")
    job.refresh_from_db()
    assert job.status == "succeeded", job.error
    assert job.result["path"] == str(tmp_path / "worker.jsonl") and len(load(tmp_path / "worker.jsonl", tmp_path)) == 4


def test_the_command_in_its_own_process_exits_with_a_message(labeled, worker_env, tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, "manage.py", "export_preferences", *args], cwd=ROOT, env=worker_env,
                              capture_output=True, text=True, timeout=120)

    bad = run("--dataset", "nope", "--source", "ai", "--to", str(tmp_path / "x.parquet"))
    assert bad.returncode == 1 and "No dataset 'nope'" in bad.stderr and "Traceback" not in bad.stderr
    good = run("--dataset", "syn", "--source", "human", "--to", str(tmp_path / "x.parquet"))
    assert good.returncode == 0, good.stderr
    assert f"Wrote 3 rows to {tmp_path / 'x.parquet'}" in good.stdout
    assert len(load(tmp_path / "x.parquet", tmp_path)) == 3


@pytest.fixture
def admin_client(client, researcher):
    client.force_login(researcher)
    return client


def _run_action(client, model_url, action, ids):
    return client.post(reverse(model_url), {"action": action, "_selected_action": [str(i) for i in ids]})


def test_admin_actions_open_the_export_form_for_their_selection(admin_client, labeled, ranked):
    form_url = reverse("admin:evalsite_export_preferences")
    r = _run_action(admin_client, "admin:evalsite_dataset_changelist", "export_preferences", [labeled["dataset"].pk])
    assert r.status_code == 302 and r["Location"] == f"{form_url}?datasets={labeled['dataset'].pk}"
    r = _run_action(admin_client, "admin:humaneval_evalround_changelist", "export_preferences", [ranked.pk])
    assert r["Location"] == f"{form_url}?rounds={ranked.pk}"
    r = _run_action(admin_client, "admin:labeling_labelerconfig_changelist", "export_preferences", [labeled["a"].pk])
    assert r["Location"] == f"{form_url}?config={labeled['a'].pk}"
    run = Job.objects.create(kind="label", name="labeling run", params={"config_id": labeled["a"].pk})
    r = _run_action(admin_client, "admin:jobs_job_changelist", "export_preferences", [run.pk])
    assert r["Location"] == f"{form_url}?run={run.pk}"
    other = Job.objects.create(kind="noop", name="not a run")
    r = _run_action(admin_client, "admin:jobs_job_changelist", "export_preferences", [other.pk])
    assert r.status_code == 302 and "export-preferences" not in r["Location"]
    page = admin_client.get(f"{form_url}?datasets={labeled['dataset'].pk}").content.decode()
    assert "syn [test]" in page and 'name="min_confidence"' in page and "Export preference data" in page


def test_admin_form_queues_an_export_job_into_the_exports_folder(admin_client, labeled, settings, tmp_path):
    settings.EXPORTS_DIR = tmp_path / "exports"
    url = reverse("admin:evalsite_export_preferences") + f"?datasets={labeled['dataset'].pk}"
    bad = admin_client.post(url, {"source": "ai", "type": "preference", "min_confidence": "0", "name": "../x",
                                  "format": "parquet"})
    assert bad.status_code == 200 and "no folders" in bad.content.decode()
    r = admin_client.post(url, {"source": "ai", "type": "preference", "labeler": labeled["a"].pk, "drop_ties": "on",
                                "min_confidence": "0", "name": "from-admin", "format": "jsonl"})
    job = Job.objects.get(kind="export_preferences")
    assert r.status_code == 302 and r["Location"] == reverse("admin:jobs_job_change", args=[job.pk])
    assert job.params["config_id"] == labeled["a"].pk and job.params["drop_ties"] is True
    assert jobs.execute(job.pk) == "succeeded"
    job.refresh_from_db()
    dest = tmp_path / "exports" / "from-admin.jsonl"
    assert job.result["path"] == str(dest) and job.result["rows"] == 3
    assert len(load(dest, tmp_path)) == 3
    again = admin_client.post(url, {"source": "ai", "type": "preference", "min_confidence": "0", "name": "from-admin",
                                    "format": "jsonl"})
    assert "already exists" in again.content.decode() and Job.objects.filter(kind="export_preferences").count() == 1


def test_export_form_is_for_researchers_only(client, labeled, django_user_model):
    staff = django_user_model.objects.create_user("staff-only", password="pw", is_staff=True)
    client.force_login(staff)
    assert client.get(reverse("admin:evalsite_export_preferences") + "?datasets=1").status_code == 403


def test_the_command_draws_a_progress_bar_on_a_terminal(labeled, tmp_path, monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    export("--dataset", "syn", "--source", "human", "--to", str(tmp_path / "bar.parquet"))
    assert "100%" in terminal.getvalue() and "wrote 3 rows" in terminal.getvalue()
