"""Reward models trained on pairwise preferences with soft or hard targets (PAPER.md section 2).

A reward model maps (input, response) to a scalar r. For a pair (a, b) with target
distribution (p, 1 - p) -- an AI labeler's soft label (distilled RLAIF) or a human's hard
label (RLHF; a tie is (0.5, 0.5)) -- the loss is the cross-entropy between
softmax([r(x, a), r(x, b)]) and (p, 1 - p):

    loss = -p log sigmoid(r_a - r_b) - (1 - p) log sigmoid(r_b - r_a)

whose minimum over the margin is at sigmoid(r_a - r_b) = p, with value H(p). (TRL's
RewardTrainer only has p = 1.) The model is a scalar head on a causal LM, read at the last
real token (initialised from a policy, as the paper does from SFT), or an encoder's
sequence-classification head.
"""
import math
import random
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rl.modeling import autocast, make_optimizer, pick_device, scalar_head, seed_everything, trunk


@dataclass
class RewardModelConfig:
    learning_rate: float = 1e-5            # paper: Adafactor, lr 1e-5
    epochs: int = 2                        # paper: 2-3
    batch_size: int = 32                   # pairs per optimizer step (paper: 128 / 32)
    gradient_accumulation_steps: int = 1
    max_length: int = 1152                 # paper: max input 1152 tokens (input + response)
    optimizer: str = "adafactor"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    eval_every: int = 0                    # evaluate held-out pairs every N steps (0: only at the end)
    seed: int = 0


@dataclass
class Pair:
    prompt: str          # what the policy saw (e.g. tasktext.policy_prompt(...))
    response_a: str
    response_b: str
    p_first: float       # target P(a is better); 1/0 for hard labels, 0.5 for a tie


def soft_label_loss(r_a, r_b, p_first):
    """Mean cross-entropy between softmax([r_a, r_b]) and (p_first, 1 - p_first)."""
    margin = r_a - r_b
    return -(p_first * F.logsigmoid(margin) + (1 - p_first) * F.logsigmoid(-margin)).mean()


def pairwise_metrics(r_a, r_b, p_first, bins=10):
    """Held-out quality of a reward model on pairs.

    accuracy: share of pairs with a clear target (p != 0.5) whose predicted winner matches;
    calibration: expected calibration error of P(a) = sigmoid(r_a - r_b) over equal-width
    bins, Brier score and log loss against the targets, and the mean |P(a) - p| (soft labels).
    """
    r_a, r_b, p = (torch.as_tensor(x, dtype=torch.float64).flatten() for x in (r_a, r_b, p_first))
    pred = torch.sigmoid(r_a - r_b)
    decided = p != 0.5
    n = int(decided.sum())
    # a predicted tie on a decided pair gets half credit, as stats.labeler_alignment gives
    credit = torch.where(pred == 0.5, torch.full_like(pred, 0.5), ((pred > 0.5) == (p > 0.5)).double())
    correct = credit[decided]
    ece = 0.0
    edges = torch.linspace(0, 1, bins + 1, dtype=torch.float64)
    for i in range(bins):
        hi_ok = pred <= edges[i + 1] if i == bins - 1 else pred < edges[i + 1]
        in_bin = (pred >= edges[i]) & hi_ok
        if in_bin.any():
            ece += float(in_bin.double().mean() * (pred[in_bin].mean() - p[in_bin].mean()).abs())
    eps = 1e-12
    log_loss = -(p * torch.log(pred + eps) + (1 - p) * torch.log(1 - pred + eps)).mean()
    return {
        "accuracy": float(correct.sum() / n) if n else float("nan"),
        "n": n,
        "ties_excluded": int((~decided).sum()),
        "ece": ece,
        "brier": float(((pred - p) ** 2).mean()) if len(p) else float("nan"),
        "log_loss": float(log_loss) if len(p) else float("nan"),
        "mean_abs_error": float((pred - p).abs().mean()) if len(p) else float("nan"),
    }


def is_causal_lm(config):
    """Decoder-only models are read at their last token; encoders (BERT-like) by their own pooler."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    return config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and config.model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def load_reward_model(path, device=None):
    """A sequence-scoring model from an HF folder: a saved reward model, or a causal LM / encoder
    to initialise one from (a fresh scalar head is added)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    device = pick_device(device)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    model.eval()  # dropout off: a reward is a function of its input
    model.to(device)
    return model, tokenizer


class RewardScorer:
    """Scores (prompt, response) pairs with a reward model: ``scorer(prompts, responses) -> [float]``."""

    def __init__(self, model, tokenizer, *, max_length=1152, batch_size=16):
        self.model, self.tokenizer = model, tokenizer
        self.max_length, self.batch_size = max_length, batch_size
        self.causal = is_causal_lm(model.config)

    @classmethod
    def from_folder(cls, path, device=None, **kw):
        model, tokenizer = load_reward_model(path, device)
        model.requires_grad_(False)
        return cls(model, tokenizer, **kw)

    def encode(self, prompts, responses):
        """Right-padded batch. Causal LMs read prompt+response with the prompt cut from the left;
        encoders get (prompt, response) as a text pair."""
        tok = self.tokenizer
        if self.causal:
            rows = []
            for p, r in zip(prompts, responses):
                r_ids = tok(r, add_special_tokens=False)["input_ids"][: self.max_length]
                p_ids = tok(p, add_special_tokens=False)["input_ids"]
                keep = self.max_length - len(r_ids)
                rows.append((p_ids[-keep:] if keep > 0 else []) + r_ids)
            width = max(len(x) for x in rows)
            ids = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for i, x in enumerate(rows):
                ids[i, : len(x)] = torch.tensor(x, dtype=torch.long)
                mask[i, : len(x)] = 1
            return {"input_ids": ids, "attention_mask": mask}
        return tok(list(prompts), list(responses), truncation="only_first", max_length=self.max_length,
                   padding=True, return_tensors="pt")

    def forward(self, batch):
        """One scalar per row. For causal LMs, the head is read at the last real token (found from
        the attention mask, not the pad id, which may equal EOS)."""
        device = next(self.model.parameters()).device
        batch = {k: v.to(device) for k, v in batch.items()}
        with autocast(device):
            if self.causal:
                hidden = trunk(self.model)(input_ids=batch["input_ids"],
                                           attention_mask=batch["attention_mask"]).last_hidden_state
                last = batch["attention_mask"].sum(-1) - 1
                pooled = hidden[torch.arange(hidden.shape[0], device=device), last]
                return scalar_head(self.model)(pooled).float().squeeze(-1)
            return self.model(**batch).logits.float().squeeze(-1)

    def score(self, prompts, responses):
        out = []
        with torch.no_grad():
            for i in range(0, len(prompts), self.batch_size):
                out.append(self.forward(self.encode(prompts[i:i + self.batch_size], responses[i:i + self.batch_size])))
        return torch.cat(out) if out else torch.zeros(0)

    def __call__(self, prompts, responses):
        return self.score(prompts, responses).tolist()


def evaluate_pairs(scorer, pairs):
    r_a = scorer.score([p.prompt for p in pairs], [p.response_a for p in pairs])
    r_b = scorer.score([p.prompt for p in pairs], [p.response_b for p in pairs])
    return pairwise_metrics(r_a, r_b, [p.p_first for p in pairs])


def train_reward_model(scorer, pairs, config: RewardModelConfig, *, eval_pairs=None, on_step=None):
    """Train ``scorer.model`` in place on ``pairs``; returns the final held-out metrics (or {}).

    ``on_step(step, total_steps, metrics)`` after each optimizer step.
    """
    if config.batch_size > len(pairs):
        raise ValueError(f"batch size {config.batch_size} is larger than the {len(pairs)} training pairs")
    seed_everything(config.seed)
    model = scorer.model
    model.requires_grad_(True)
    optimizer = make_optimizer(model.parameters(), config.optimizer, config.learning_rate, config.weight_decay)
    steps_per_epoch = len(pairs) // config.batch_size
    total_steps = steps_per_epoch * config.epochs
    micro = max(1, math.ceil(config.batch_size / config.gradient_accumulation_steps))
    rng = random.Random(config.seed)
    step = 0
    for epoch in range(config.epochs):
        order = list(range(len(pairs)))
        rng.shuffle(order)
        for b in range(steps_per_epoch):
            t0 = time.perf_counter()
            batch = [pairs[i] for i in order[b * config.batch_size:(b + 1) * config.batch_size]]
            optimizer.zero_grad(set_to_none=True)
            loss_total, correct = 0.0, 0.0
            for m in range(0, len(batch), micro):
                part = batch[m:m + micro]
                # a and b of each pair go through the model in one batch
                enc = scorer.encode([p.prompt for p in part] * 2,
                                    [p.response_a for p in part] + [p.response_b for p in part])
                rewards = scorer.forward(enc)
                r_a, r_b = rewards[: len(part)], rewards[len(part):]
                target = torch.tensor([p.p_first for p in part], dtype=torch.float32, device=rewards.device)
                loss = soft_label_loss(r_a, r_b, target)
                (loss * len(part) / len(batch)).backward()
                loss_total += loss.item() * len(part)
                correct += float(((r_a > r_b) == (target > 0.5)).float()[target != 0.5].sum())
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            optimizer.step()
            metrics = {"loss": loss_total / len(batch), "train_accuracy": correct / max(1, sum(p.p_first != 0.5 for p in batch)),
                       "grad_norm": float(grad_norm), "epoch": epoch, "seconds_per_step": time.perf_counter() - t0}
            if eval_pairs and config.eval_every and (step + 1) % config.eval_every == 0 and step + 1 < total_steps:
                metrics.update({f"eval_{k}": v for k, v in evaluate_pairs(scorer, eval_pairs).items()})
            if on_step is not None:
                on_step(step, total_steps, metrics)
            step += 1
    model.requires_grad_(False)
    return evaluate_pairs(scorer, eval_pairs) if eval_pairs else {}
