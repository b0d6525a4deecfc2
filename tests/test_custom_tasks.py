"""Custom tasks: a task loaded from YAML is used by the importer, the AI labeler, the reward model,
policy prompts and the rating page; bad task files are refused with a clear message and write nothing."""
import json

import pytest
import torch
from django.core.management import CommandError, call_command
from django.urls import reverse

from evalsite.jobs import runtime as jobs
from evalsite.builtin_tasks import BUILTIN_TASKS
from evalsite.humaneval import rounds as R
from evalsite.humaneval.models import Assignment, EvalRound
from evalsite.models import Comparison, Dataset, Policy, Prompt, Sample, Task
from evalsite.jobs.models import Job
from evalsite.jobs.models import Job
from evalsite.tasktext import cut_at_turn_markers, policy_prompt
from labeling import runs
from labeling.models import AILabel, LabelerConfig
from labeling.prompts import PromptBuilder
from tests.humaneval_demo import make_annotators

torch.set_num_threads(1)

LONGFORM_QA = """\
slug: longform-qa
name: Long-form QA
input_name: Question
response_name: answer
preamble_base: >-
  Below is a QUOKKA question and two answers to it. Decide which answer is better. Answer with 1 or 2.
preamble_detailed: >-
  Below is a QUOKKA question and two answers. A good answer is correct, complete and clear.
  Decide which answer is better. Answer with 1 or 2.
ending: "Better {noun}="
direct_rubric: Rate the answer from 1 to 10. Answer with a single number.
policy_template: "Question: {input}\\nAnswer:"
rater_instructions: Read the NARWHAL question, then rank the answers from best to worst.
turn_markers: ["\\nQuestion:"]
"""


def write(tmp_path, text, name="task.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def load(path):
    call_command("load_task", str(path))


@pytest.fixture
def longform_qa(db, tmp_path):
    load(write(tmp_path, LONGFORM_QA))
    return Task.objects.get(slug="longform-qa")


def test_builtin_rows_hold_the_paper_texts_and_reproduce_todays_prompts(db):
    for slug, text in BUILTIN_TASKS.items():
        task = Task.objects.get(slug=slug)
        assert task.builtin and task.text() == text
    assert policy_prompt(Task.objects.get(slug="summarization").text(), "A post. ") == "A post.\n\nTL;DR:"
    assert policy_prompt(Task.objects.get(slug="helpful").text(), "\n\nHuman: hi") == "\n\nHuman: hi\n\nAssistant:"
    assert policy_prompt("harmless", "\n\nHuman: hi") == "\n\nHuman: hi\n\nAssistant:"  # a slug still works


def test_load_task_creates_then_updates_by_slug(longform_qa, tmp_path):
    t = longform_qa.text()
    assert (t.name, t.input_name, t.noun, t.ending, t.turn_markers) == (
        "Long-form QA", "Question", "Answer", "Better {noun}=", ("\nQuestion:",))
    assert not longform_qa.builtin and not t.conversational
    assert policy_prompt(t, "Why is the sky blue? ") == "Question: Why is the sky blue?\nAnswer:"
    assert cut_at_turn_markers(" Rayleigh scattering.\nQuestion: And the sea?", t) == " Rayleigh scattering."
    load(write(tmp_path, LONGFORM_QA.replace("name: Long-form QA", "name: Long-form questions")))
    assert Task.objects.filter(slug="longform-qa").values_list("name", flat=True).get() == "Long-form questions"
    assert Task.objects.count() == 4


@pytest.mark.parametrize("change, message", [
    (("name: Long-form QA", "name: Helpful dialogue"), "Task with this Name already exists"),
    (("slug: longform-qa", "slug: longform-qa\nrubric: score it"), "unknown field(s) rubric"),
    (('policy_template: "Question: {input}\\nAnswer:"', 'policy_template: "Question: {question}"'),
     "must hold {input}"),
    (('ending: "Better {noun}="', 'ending: "Better {answer}="'), "Unknown placeholder(s) {answer}"),
    (("input_name: Question\n", ""), "missing field(s) input_name"),
    (('turn_markers: ["\\nQuestion:"]', "turn_markers: [1, 2]"), "list of non-empty strings"),
    (("slug: longform-qa", "slug: long form qa"), "slug: Enter a valid"),
])
def test_bad_task_files_are_refused_with_a_clear_message_and_write_nothing(db, tmp_path, change, message):
    before = list(Task.objects.order_by("pk").values())
    with pytest.raises(CommandError) as e:
        load(write(tmp_path, LONGFORM_QA.replace(*change)))
    assert message in str(e.value)
    assert list(Task.objects.order_by("pk").values()) == before


def test_a_failed_update_leaves_the_task_as_it_was(longform_qa, tmp_path):
    before = list(Task.objects.order_by("pk").values())
    with pytest.raises(CommandError, match="Task with this Name already exists"):
        load(write(tmp_path, LONGFORM_QA.replace("name: Long-form QA", "name: Summarization")))
    with pytest.raises(CommandError, match="not valid YAML"):
        load(write(tmp_path, "slug: [unclosed"))
    with pytest.raises(CommandError, match="cannot read"):
        load(tmp_path / "missing.yaml")
    assert list(Task.objects.order_by("pk").values()) == before


def test_admin_lists_adds_and_protects_builtin_tasks(client, researcher, longform_qa):
    client.force_login(researcher)
    listing = client.get(reverse("admin:evalsite_task_changelist")).content.decode()
    assert "Long-form QA" in listing and "Harmless dialogue" in listing
    summarization = Task.objects.get(slug="summarization")
    page = client.get(reverse("admin:evalsite_task_change", args=[summarization.pk])).content.decode()
    assert 'name="slug"' not in page and "Delete" not in page  # the slug is read-only, no delete link
    assert client.get(reverse("admin:evalsite_task_delete", args=[summarization.pk])).status_code == 403
    page = client.get(reverse("admin:evalsite_task_change", args=[longform_qa.pk])).content.decode()
    assert 'name="slug"' in page
    form = {"slug": "recipes", "name": "Recipes", "input_name": "Dish", "response_noun": "recipe",
            "preamble_base": "Which recipe is better? Answer with 1 or 2.", "preamble_detailed": "",
            "ending": "Preferred {noun}=", "cot_instruction": "", "direct_rubric": "Rate 1-10.",
            "policy_template": "Dish: {input}\nRecipe:", "turn_markers": "[]", "instructions": "Rank them."}
    r = client.post(reverse("admin:evalsite_task_add"), {**form, "policy_template": "Dish:"})
    assert r.status_code == 200 and "must hold {input}" in r.content.decode()
    assert not Task.objects.filter(slug="recipes").exists()
    r = client.post(reverse("admin:evalsite_task_add"), form)
    assert r.status_code == 302 and Task.objects.get(slug="recipes").text().noun == "Recipe"


def test_a_builtin_task_keeps_its_slug_and_a_custom_one_may_change_it(longform_qa):
    from django.core.exceptions import ValidationError

    helpful = Task.objects.get(slug="helpful")
    helpful.slug = "assistant"
    with pytest.raises(ValidationError, match="built-in task: its slug stays 'helpful'"):
        helpful.full_clean()
    longform_qa.slug = "qa"
    longform_qa.full_clean()


PAIRS = [
    {"prompt_id": f"q{i}", "context": f"Why does thing {i} happen?",
     "response_a": f"Because of reason {i}, explained in detail.", "response_b": f"Dunno {i}.",
     "preference": ["first", "second", "tie", "first"][i % 4]}
    for i in range(8)
]


def test_custom_task_end_to_end(longform_qa, tmp_path, tiny_model_dir, client, monkeypatch):
    # import: the generic pairs format takes --task for any task
    data = tmp_path / "longform.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    call_command("import_dataset", str(data), format="pairs-jsonl", task="longform-qa", name="longform")
    ds = Dataset.objects.get(name="longform")
    assert ds.task == longform_qa and ds.prompts.count() == 8
    assert Comparison.objects.filter(prompt__dataset=ds).count() == 8

    # AI labels: the labeler's prompts are the custom task's
    seen = []
    label_prompt = PromptBuilder.label_prompt

    def spy(self, *args, **kwargs):
        prompt = label_prompt(self, *args, **kwargs)
        seen.append(prompt.plain())
        return prompt

    monkeypatch.setattr(PromptBuilder, "label_prompt", spy)
    config = LabelerConfig.objects.create(name="qa labeler", task=longform_qa, model_path=str(tiny_model_dir),
                                          batch_size=4, threads=1)
    run = jobs.submit("label", {"config_id": config.pk, "dataset_id": ds.pk}, send=False)
    assert jobs.execute(run.pk) == "running"  # its chunks do the work
    for child in Job.objects.filter(parent=run).order_by("pk"):
        if child.status == "queued":
            assert jobs.execute(child.pk) == "succeeded"
    assert AILabel.objects.filter(config=config).count() == 8
    first = Comparison.objects.filter(prompt__dataset=ds).select_related("prompt").order_by("pk").first()
    expected = (f"{longform_qa.preamble_base}\n\nQuestion - {first.prompt.context}\n"
                f"Answer 1 - {first.response_a}\nAnswer 2 - {first.response_b}\n\nBetter Answer=")
    assert expected in seen  # both orders are asked; this is the first
    assert all("QUOKKA" in p and "Summary" not in p and "Conversation" not in p for p in seen)

    # reward model on the AI labels; its pairs read what the policy reads
    from rl.data import policy_input
    from rl.models import RewardModel

    assert policy_input(first.prompt) == f"Question: {first.prompt.context}\nAnswer:"
    base = Policy.objects.create(name="tiny base", checkpoint_dir=str(tiny_model_dir), base_model=str(tiny_model_dir))
    rm_job = jobs.submit("reward_model", {"policy_id": base.pk, "name": "qa RM", "labels": "ai",
                                         "label_config_ids": [config.pk], "eval_fraction": 0.25, "batch_size": 2,
                                         "epochs": 1, "learning_rate": 1e-3, "optimizer": "adamw"}, send=False)
    assert jobs.execute(rm_job.pk) == "succeeded", Job.objects.get(pk=rm_job.pk).error
    rm = RewardModel.objects.get(pk=Job.objects.get(pk=rm_job.pk).result["reward_model_id"])
    assert rm.task == longform_qa and rm.n_train_pairs + rm.n_eval_pairs == 8

    # a round on the task's prompts: the rating page shows its names and instructions
    policies = [Policy.objects.create(name=f"qa policy {x}", kind=Policy.Kind.OTHER) for x in "ab"]
    prompts = list(Prompt.objects.filter(dataset=ds).order_by("pk")[:2])
    for p in prompts:
        c = p.comparisons.get()
        for pol, text in zip(policies, (c.response_a, c.response_b)):
            Sample.objects.create(policy=pol, prompt=p, text=text)
    rnd = EvalRound.objects.create(name="qa round", title="Which answer is best?", task=longform_qa, overlap=1)
    rnd.policies.set(policies)
    R.set_prompts(rnd, [p.pk for p in prompts])
    rnd = R.open_round(rnd)
    annotator = make_annotators(1, password="pw")[0]
    client.force_login(annotator)
    assert client.get(reverse("humaneval:next", args=[rnd.pk])).status_code == 200
    a = Assignment.objects.get(annotator=annotator)
    html = client.get(reverse("humaneval:item", args=[a.token])).content.decode()
    assert "Long-form QA" in html and "Read the NARWHAL question" in html
    assert '<h2 id="he-input-title" class="he-section-title">Question</h2>' in html
    assert "2 answers" in html and "Answer A" in html
    assert "Conversation" not in html and "Summary" not in html
