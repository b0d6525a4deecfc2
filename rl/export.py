"""Model folders that other tools load: reward models as sequence classifiers, and model cards.

A reward model here *is* a ``*ForSequenceClassification`` with one label (rl.reward_model
loads it with ``AutoModelForSequenceClassification.from_pretrained(folder, num_labels=1)``),
so its folder is already what TRL, OpenRLHF and RewardBench load. Two things make
transformers' own forward give the app's reward for the same tokens:

* the app reads the head at the last real token (from the attention mask); transformers reads
  it at the rightmost token whose id is not ``config.pad_token_id``. The two agree when the
  config's pad id is the id the tokenizer pads with and the scored text does not end in that
  token (responses are decoded without special tokens, so they do not);
* the head has no bias in decoder models (``score``, bias=False) and the app adds nothing to
  it: no normalisation, offset or capping.

So the export sets ``pad_token_id`` to the tokenizer's, names the single label ``reward`` and
marks the problem as a regression (``pipeline("text-classification")`` then returns the raw
reward instead of its sigmoid), and writes a README.md model card. Plain Python, no Django.
"""
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

from rl.modeling import _has_head_weights, replace_dir, save_hf_folder

REWARD_LABEL = "reward"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
ARMS = {
    "sft": "SFT (supervised fine-tuning)",
    "rlhf": "RLHF (RL on a reward model trained on human preferences)",
    "rlaif_distilled": "distilled RLAIF (RL on a reward model trained on AI soft labels)",
    "rlaif_direct": "direct RLAIF (RL with an AI labeler scoring each response)",
}
LABEL_SOURCES = {"ai": "AI soft labels (distilled RLAIF)", "human": "human preferences (RLHF)"}


# --- reward models -----------------------------------------------------------------------
def reward_model_config_fields(pad_token_id):
    """What config.json needs so transformers scores like the app (see the module docstring)."""
    if pad_token_id is None:
        raise ValueError("the tokenizer has no pad token: set one (the app uses EOS) before exporting")
    return {"pad_token_id": int(pad_token_id), "id2label": {"0": REWARD_LABEL}, "label2id": {REWARD_LABEL: 0},
            "problem_type": "regression"}


def save_reward_model(model, tokenizer, dest, card):
    """Write a trained reward model (a ``*ForSequenceClassification``) with its card, atomically."""
    fields = reward_model_config_fields(tokenizer.pad_token_id)
    model.config.pad_token_id = fields["pad_token_id"]
    model.config.id2label, model.config.label2id = {0: REWARD_LABEL}, dict(fields["label2id"])
    model.config.problem_type = fields["problem_type"]
    return save_hf_folder(model, tokenizer, dest, extra_files={"README.md": card})


def export_reward_model(folder, card, dest=None):
    """Make a saved reward model folder loadable elsewhere, in place or as a copy at ``dest``.

    In place, config.json and README.md are each replaced atomically (readers such as a running
    RL job never see half a file); a copy is built next to ``dest`` and renamed into place.
    Returns the folder written.
    """
    from transformers import AutoTokenizer

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise ValueError(f"{folder} is not a model folder (no config.json)")
    config = json.loads((folder / "config.json").read_text())
    if not any(a.endswith("ForSequenceClassification") for a in config.get("architectures") or []) \
            or not _has_head_weights(folder):
        raise ValueError(f"{folder} holds no trained reward head (architectures "
                         f"{config.get('architectures')}); train a reward model first")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    pad = tokenizer.pad_token_id
    tokenizer_needs_pad = pad is None
    if tokenizer_needs_pad:  # what the app pads with (rl.reward_model.load_reward_model)
        tokenizer.pad_token = tokenizer.eos_token
        pad = tokenizer.pad_token_id
    config.update(reward_model_config_fields(pad))
    config_text = json.dumps(config, indent=2, sort_keys=True) + "\n"

    if dest is None or Path(dest).resolve() == folder.resolve():
        if tokenizer_needs_pad:
            _save_tokenizer_atomically(tokenizer, folder)
        write_text_atomic(folder / "config.json", config_text)
        write_text_atomic(folder / "README.md", card)
        return folder
    dest = Path(dest)
    if dest.exists() and not (dest / "config.json").is_file():
        raise ValueError(f"{dest} exists and is not a model folder; choose a new path")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(folder, tmp, ignore=shutil.ignore_patterns("*.partial", "*.old"))
    if tokenizer_needs_pad:
        tokenizer.save_pretrained(tmp)
    (tmp / "config.json").write_text(config_text)
    (tmp / "README.md").write_text(card)
    return replace_dir(tmp, dest)


def _save_tokenizer_atomically(tokenizer, folder):
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        for name in tokenizer.save_pretrained(tmp):
            os.replace(name, Path(folder) / Path(name).name)


def write_text_atomic(path, text):
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --- model cards ---------------------------------------------------------------------------
def _front_matter(base_model, tags, datasets, extra=()):
    lines = ["---"]
    if base_model and HUB_ID.match(base_model) and not Path(base_model).exists():
        lines.append(f"base_model: {base_model}")  # the Hub only accepts Hub ids here
    lines.append("library_name: transformers")
    lines.append("tags:")
    lines += [f"- {t}" for t in tags]
    hub_datasets = sorted({d for d in datasets if HUB_ID.match(d or "")})
    if hub_datasets:
        lines.append("datasets:")
        lines += [f"- {d}" for d in hub_datasets]
    lines += list(extra)
    lines.append("---")
    return "\n".join(lines)


def _number(value, digits=4):
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if value == value else "n/a"
    return str(value)


def _data_lines(datasets):
    """``datasets``: [{"name", "split", "source"}] -> markdown bullet lines."""
    if not datasets:
        return ["- (not recorded)"]
    return [f"- {d['name']} [{d['split']}]" + (f", from {d['source']}" if d.get("source") else "") for d in datasets]


def reward_model_card(info):
    """README.md of a reward model folder.

    ``info``: name, labels ("ai"/"human"), base_model, task (slug or None), datasets
    ([{"name", "split", "source"}]), label_configs (names of the AI labeler configurations),
    n_train_pairs, n_eval_pairs, metrics (the RewardModel's), config (training settings),
    max_length, pad_token (text), job_id, causal (bool: decoder model read at its last token).
    """
    held = (info.get("metrics") or {}).get("held_out") or {}
    vs_human = (info.get("metrics") or {}).get("held_out_vs_human") or {}
    labels = info.get("labels") or "?"
    config = info.get("config") or {}
    tags = ["rlaif", "reward-model", "text-classification", "ai-feedback" if labels == "ai" else "human-feedback"]
    front = _front_matter(info.get("base_model"), tags, [d.get("source") for d in info.get("datasets") or []],
                          extra=["pipeline_tag: text-classification"])
    max_length = info.get("max_length") or config.get("max_length") or 1152
    if info.get("causal", True):
        format_text = f"""The reward is read at the **last token of prompt + response**. The app tokenizes the prompt
and the response separately, without special tokens (no BOS, **no EOS appended**), joins the
two id lists, cuts the prompt from the left so that at most {max_length} tokens remain, and pads
on the right with `{info.get('pad_token')}` (config `pad_token_id`). transformers reads the score at
the rightmost token that is not the pad token, so scores match the app's as long as the text
does not end in that token. A tool that appends EOS (or a chat template's end-of-turn) scores
a different position; keep the format the reward model was trained on.

The prompt is the policy's input exactly as the workbench built it (`evalsite.tasktext.policy_prompt`:
the task's instruction around the post or dialogue), and the response continues it directly."""
        score_code = """```python
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

folder = "path/to/this/folder"
model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=1).eval()
tok = AutoTokenizer.from_pretrained(folder)

def rewards(prompts, responses):
    rows = [tok(p, add_special_tokens=False)["input_ids"] + tok(r, add_special_tokens=False)["input_ids"]
            for p, r in zip(prompts, responses)]
    batch = tok.pad({"input_ids": rows}, padding=True, return_tensors="pt")  # right padding
    with torch.no_grad():
        return model(**batch).logits[:, 0].tolist()
```

With a pipeline (it tokenizes `prompt + response` as one string, which can split the tokens at
the seam differently from the two-part encoding above, so scores may differ slightly):

```python
from transformers import pipeline

score = pipeline("text-classification", model=folder)  # problem_type=regression: raw rewards
score([prompt + response])[0]["score"]
```"""
    else:
        format_text = f"""An encoder model: the prompt and the response are a text pair (prompt first, cut to leave at
most {max_length} tokens), read by the model's own pooler and classifier."""
        score_code = """```python
from transformers import pipeline

score = pipeline("text-classification", model="path/to/this/folder")
score({"text": prompt, "text_pair": response})["score"]
```"""
    label_configs = info.get("label_configs") or []
    metric_rows = [
        ("held-out pairwise accuracy (vs. its training labels)", held.get("accuracy")),
        ("held-out pairs with a clear label", held.get("n")),
        ("held-out expected calibration error", held.get("ece")),
        ("held-out log loss", held.get("log_loss")),
        ("held-out accuracy vs. human labels", vs_human.get("accuracy")),
    ]
    settings = ", ".join(f"{k}={v}" for k, v in sorted(config.items())) or "(not recorded)"
    return f"""{front}

# {info.get('name')} (reward model)

A reward model from the RLAIF workbench (Lee et al. 2023, *RLAIF: Scaling Reinforcement Learning
from Human Feedback with AI Feedback*): a scalar head on a language model, trained on pairs
with the soft-label loss `-p log σ(r_a - r_b) - (1 - p) log σ(r_b - r_a)`. Only differences of
rewards for the same prompt carry meaning.

- **Base model:** {info.get('base_model') or 'n/a'}
- **Labels:** {LABEL_SOURCES.get(labels, labels)}{(' from labeler configurations ' + ', '.join(label_configs)) if label_configs else ''}
- **Task:** {info.get('task') or 'mixed / not recorded'}
- **Pairs:** {info.get('n_train_pairs', 0)} for training, {info.get('n_eval_pairs', 0)} held out (split by prompt)
- **Training:** {settings}
- **Job:** {info.get('job_id') or 'n/a'}

Data:
{chr(10).join(_data_lines(info.get('datasets')))}

## Held-out quality

| metric | value |
|---|---|
{chr(10).join(f'| {name} | {_number(value)} |' for name, value in metric_rows)}

## Input format

{format_text}

## Loading and scoring

{score_code}

TRL's `RewardTrainer` takes this folder as its model
(`AutoModelForSequenceClassification.from_pretrained(folder, num_labels=1)`) to train further;
TRL's PPO/RLOO trainers, OpenRLHF (value head prefix `score`) and RewardBench load it as a
sequence-classification reward model.
"""


def policy_card(info):
    """README.md of a policy folder.

    ``info``: name, arm (Policy.Kind value), base_model, parent (name of the starting policy),
    datasets ([{"name", "split", "source"}]), reward_source (text), beta, steps, final_reward,
    final_kl, final_loss, config (training settings), job_id.
    """
    arm = info.get("arm") or "other"
    tags = ["rlaif", arm.replace("_", "-")]
    if arm != "sft":
        tags.append("reinforce")
    front = _front_matter(info.get("base_model"), tags, [d.get("source") for d in info.get("datasets") or []])
    config = info.get("config") or {}
    settings = ", ".join(f"{k}={v}" for k, v in sorted(config.items())) or "(not recorded)"
    lines = [
        f"- **Arm:** {ARMS.get(arm, arm)}",
        f"- **Base model:** {info.get('base_model') or 'n/a'}",
        f"- **Started from:** {info.get('parent') or info.get('base_model') or 'n/a'}",
    ]
    if arm == "sft":
        lines += [f"- **Steps:** {_number(info.get('steps'))}",
                  f"- **Final training loss:** {_number(info.get('final_loss'))}"]
    else:
        lines += [f"- **Reward source:** {info.get('reward_source') or 'n/a'}",
                  f"- **β (KL weight):** {_number(info.get('beta'))}",
                  f"- **Steps:** {_number(info.get('steps'))}",
                  f"- **Final reward (mean over the last step's samples):** {_number(info.get('final_reward'))}",
                  f"- **Final KL to the SFT policy (mean over the last step's samples):** "
                  f"{_number(info.get('final_kl'))}"]
    lines += [f"- **Training:** {settings}", f"- **Job:** {info.get('job_id') or 'n/a'}"]
    method = ("Fine-tuned on the prompts' reference responses (loss on response tokens only)." if arm == "sft" else
              "Trained with REINFORCE and a learned value baseline (docs/method.md §3): the return is "
              "`(1 - β) r(x, y) - β KL`, KL being the sum over the response of log π - log π_SFT.")
    return f"""{front}

# {info.get('name')}

A policy from the RLAIF workbench (Lee et al. 2023, *RLAIF*). {method}

{chr(10).join(lines)}

Data:
{chr(10).join(_data_lines(info.get('datasets')))}

## Loading

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("path/to/this/folder")
tok = AutoTokenizer.from_pretrained("path/to/this/folder")
ids = tok(prompt, return_tensors="pt", add_special_tokens=False)
out = model.generate(**ids, max_new_tokens=64, do_sample=True, temperature=0.9)
print(tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True))
```

Prompts are the task's policy input (`evalsite.tasktext.policy_prompt`), as in training.
"""
