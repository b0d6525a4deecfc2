"""Models that other tools load: a trained reward model scores the same under plain
transformers (AutoModelForSequenceClassification, pipeline) as in the app, and policy folders
carry a model card and load with AutoModelForCausalLM. Jobs run synchronously on the tiny model."""
import json
import shutil

import pytest
import torch
from django.core.management import CommandError, call_command

from evalsite.jobs import runtime as jobs
from evalsite.models import Comparison, Dataset, Policy, Prompt, Task
from evalsite.jobs.models import Job, JobMetric
from rl.export import export_reward_model
from rl.models import RewardModel
from rl.reward_model import RewardScorer

# float32 on the CPU: the two code paths run the same kernels on the same tokens
TOLERANCE = 1e-4

PAIRS = [  # (prompt, response): lengths from 1 to ~40 tokens, so a batch pads most rows
    ("say 1 the quick brown fox\nTL;DR:", " the answer is 1"),
    ("say 2 the quick brown fox jumps over the lazy dog again and again\nTL;DR:", " a fox"),
    ("hi", " x"),
    ("say 3\nTL;DR:", " the quick brown fox jumps over the lazy dog, the quick brown fox jumps over the dog"),
    ("", "just a response"),
    ("a prompt with <|endoftext|> inside it\nTL;DR:", " still scored at its last token"),
]


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


@pytest.fixture
def toy(db, tiny_model_dir):
    task = Task.objects.get(slug="summarization")
    dataset = Dataset.objects.create(name="toy", split="train", task=task, source="someone/toy-tldr")
    prompts = [Prompt.objects.create(dataset=dataset, external_id=f"p{i}", context=f"say {i} the quick brown fox",
                                     reference=f" the answer is {i}") for i in range(8)]
    for i, pr in enumerate(prompts):  # people prefer the longer response
        Comparison.objects.create(prompt=pr, response_a=f" the answer is {i} and more", response_b=f" {i}",
                                  human_preference="first" if i % 3 else "second", human_source="dataset")
    base = Policy.objects.create(name="tiny base", checkpoint_dir=str(tiny_model_dir), base_model=str(tiny_model_dir))
    return {"dataset": dataset, "prompts": prompts, "base": base}


def run_job(kind, params):
    job = jobs.submit(kind, params, send=False)
    assert jobs.execute(job.pk) == "succeeded", Job.objects.get(pk=job.pk).error
    job.refresh_from_db()
    return job


@pytest.fixture
def reward_model(toy):
    job = run_job("reward_model", {"policy_id": toy["base"].pk, "name": "tiny RM", "labels": "human",
                                   "eval_fraction": 0.3, "batch_size": 2, "epochs": 2, "learning_rate": 1e-2,
                                   "optimizer": "adamw"})
    return RewardModel.objects.get(pk=job.result["reward_model_id"])


def transformers_rewards(folder, pairs):
    """Rewards as the model card says to compute them: plain transformers, one right-padded batch."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=1).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    rows = [tok(p, add_special_tokens=False)["input_ids"] + tok(r, add_special_tokens=False)["input_ids"]
            for p, r in pairs]
    batch = tok.pad({"input_ids": rows}, padding=True, return_tensors="pt")
    assert tok.padding_side == "right" and (batch["attention_mask"] == 0).any()  # the batch really is padded
    with torch.no_grad():
        return model(**batch).logits[:, 0], model


def app_rewards(folder, pairs):
    scorer = RewardScorer.from_folder(folder, device="cpu", batch_size=len(pairs))
    return scorer.score([p for p, _ in pairs], [r for _, r in pairs])


def test_trained_reward_model_scores_the_same_in_plain_transformers(reward_model):
    folder = reward_model.checkpoint_dir
    ours = app_rewards(folder, PAIRS)
    theirs, model = transformers_rewards(folder, PAIRS)
    assert ours.std() > 1e-3  # a trained head, not a constant
    assert torch.allclose(theirs, ours, atol=TOLERANCE, rtol=0), (theirs, ours)

    with open(folder + "/config.json") as f:
        config = json.load(f)
    assert config["architectures"] == ["GPT2ForSequenceClassification"]
    assert config["pad_token_id"] == model.config.pad_token_id != model.config.eos_token_id
    assert config["id2label"] == {"0": "reward"} and config["problem_type"] == "regression"
    state = model.state_dict()
    assert "score.weight" in state and "score.bias" not in state  # nothing to fold into the head

    # pipeline("text-classification") gives the raw reward (no sigmoid) for the whole text
    from transformers import AutoTokenizer, pipeline

    tok = AutoTokenizer.from_pretrained(folder)
    prompt, response = PAIRS[0]
    assert tok(prompt + response)["input_ids"] == tok(prompt)["input_ids"] + tok(response)["input_ids"]
    score = pipeline("text-classification", model=folder, device="cpu")([prompt + response])[0]
    assert score["label"] == "reward"
    assert score["score"] == pytest.approx(float(ours[0]), abs=TOLERANCE)


def test_reward_model_card(reward_model):
    card = open(reward_model.checkpoint_dir + "/README.md").read()
    front, body = card.split("---\n")[1], card.split("---\n", 2)[2]
    assert "library_name: transformers" in front and "- rlaif" in front and "- reward-model" in front
    assert "datasets:\n- someone/toy-tldr" in front
    assert "base_model:" not in front  # a local folder is no Hub id
    assert "# tiny RM (reward model)" in body
    assert "**Labels:** human preferences (RLHF)" in body
    held = reward_model.metrics["held_out"]
    assert f"| held-out pairwise accuracy (vs. its training labels) | {held['accuracy']:.4f} |" in body
    assert f"{reward_model.n_train_pairs} for training, {reward_model.n_eval_pairs} held out" in body
    assert "**no EOS appended**" in body and "`<|pad|>`" in body
    assert "AutoModelForSequenceClassification.from_pretrained(folder, num_labels=1)" in body


def test_pad_token_equal_to_eos_still_matches(reward_model, tmp_path):
    """SmolLM2-Instruct pads with its EOS: transformers then skips trailing EOS ids, which the app's
    texts do not end in; an EOS inside the prompt is read as a token like any other."""
    from transformers import AutoTokenizer

    folder = tmp_path / "eos-pad"
    shutil.copytree(reward_model.checkpoint_dir, folder)
    tok = AutoTokenizer.from_pretrained(folder)
    tok.pad_token = tok.eos_token
    tok.save_pretrained(folder)
    export_reward_model(folder, "card")  # in place: config.json now says pad = EOS
    assert json.loads((folder / "config.json").read_text())["pad_token_id"] == tok.eos_token_id
    ours = app_rewards(folder, PAIRS)
    theirs, _ = transformers_rewards(folder, PAIRS)
    assert torch.allclose(theirs, ours, atol=TOLERANCE, rtol=0), (theirs, ours)
    assert torch.allclose(ours, app_rewards(reward_model.checkpoint_dir, PAIRS), atol=TOLERANCE, rtol=0)


def test_export_command_copies_and_refuses_untrained_folders(reward_model, tiny_model_dir, tmp_path):
    dest = tmp_path / "exported"
    call_command("export_reward_model", reward_model.pk, to=str(dest))
    assert (dest / "README.md").read_text() == open(reward_model.checkpoint_dir + "/README.md").read()
    theirs, _ = transformers_rewards(dest, PAIRS)
    assert torch.allclose(theirs, app_rewards(reward_model.checkpoint_dir, PAIRS), atol=TOLERANCE, rtol=0)
    assert not list(tmp_path.glob("*.partial"))

    # a model trained before: no card, no label name; exported in place
    folder = tmp_path / "old-rm"
    shutil.copytree(reward_model.checkpoint_dir, folder)
    (folder / "README.md").unlink()
    config = json.loads((folder / "config.json").read_text())
    for key in ("id2label", "label2id", "problem_type"):
        config.pop(key)
    (folder / "config.json").write_text(json.dumps(config))
    old = RewardModel.objects.create(name="old RM", labels="ai", checkpoint_dir=str(folder))
    call_command("export_reward_model", old.pk)
    assert json.loads((folder / "config.json").read_text())["problem_type"] == "regression"
    assert "**Labels:** AI soft labels (distilled RLAIF)" in (folder / "README.md").read_text()
    assert not [p.name for p in folder.iterdir() if "partial" in p.name]

    untrained = RewardModel.objects.create(name="untrained RM", labels="ai", checkpoint_dir=str(tiny_model_dir))
    with pytest.raises(CommandError, match="holds no trained reward head"):
        call_command("export_reward_model", untrained.pk, to=str(tmp_path / "nothing"))
    assert not (tmp_path / "nothing").exists() and not (tmp_path / "nothing.partial").exists()
    assert not (tiny_model_dir / "README.md").exists()
    with pytest.raises(CommandError, match="Unknown reward model 999999"):
        call_command("export_reward_model", 999999)


def front_matter(folder):
    text = open(f"{folder}/README.md").read()
    assert text.startswith("---\n")
    return text.split("---\n")[1], text.split("---\n", 2)[2]


def generates(folder):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    ids = tok("say 1 the quick brown fox", return_tensors="pt", add_special_tokens=False)
    out = model.generate(**ids, max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
    return out.shape[1] - ids["input_ids"].shape[1]


def test_policy_folders_have_cards_and_load_with_auto_model_for_causal_lm(toy, reward_model):
    ds, base = toy["dataset"], toy["base"]
    sft_job = run_job("sft", {"policy_id": base.pk, "dataset_id": ds.pk, "name": "tiny SFT", "epochs": 1,
                              "batch_size": 4, "learning_rate": 3e-3})
    sft = Policy.objects.get(pk=sft_job.result["policy_id"])
    front, body = front_matter(sft.checkpoint_dir)
    assert "library_name: transformers" in front and "- rlaif\n- sft" in front and "- someone/toy-tldr" in front
    assert "**Arm:** SFT (supervised fine-tuning)" in body and "**Steps:** 2" in body
    assert f"**Final training loss:** {sft_job.result['final_loss']:.4f}" in body
    assert generates(sft.checkpoint_dir) > 0

    rl_job = run_job("rl", {"policy_id": sft.pk, "dataset_id": ds.pk, "name": "tiny RLHF",
                            "reward_model_id": reward_model.pk, "batch_size": 4, "epochs": 1, "beta": 0.1,
                            "max_response_tokens": 4, "save_every": 1, "learning_rate": 1e-3})
    policy = Policy.objects.get(pk=rl_job.result["policy_id"])
    last = JobMetric.objects.filter(job=rl_job).order_by("-step").first()
    assert last.step == 1
    front, body = front_matter(policy.checkpoint_dir)
    assert "- rlaif\n- rlhf\n- reinforce" in front
    assert "**Arm:** RLHF (RL on a reward model trained on human preferences)" in body
    assert f"**Reward source:** reward model #{reward_model.pk} “tiny RM” (human labels)" in body
    assert "**β (KL weight):** 0.1000" in body and "**Steps:** 2" in body
    assert f"**Final reward (mean over the last step's samples):** {last.values['reward_mean']:.4f}" in body
    assert f"**Final KL to the SFT policy (mean over the last step's samples):** {last.values['kl']:.4f}" in body
    assert "**Started from:** tiny SFT" in body
    assert generates(policy.checkpoint_dir) > 0
