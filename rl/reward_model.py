"""Reward models trained on pairwise preferences with soft or hard targets (docs/method.md §2).

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
import random
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rl.config import RewardModelConfig  # the settings (defaults, ranges, help): rl/config.py
from rl.distributed import Trainable, micro_batches, share, sum_numbers
from rl.modeling import (
    autocast,
    make_optimizer,
    pick_device,
    scalar_head,
    seed_everything,
    to_device,
    trunk,
)


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


def _cpu_float64(values):
    """A flat float64 CPU tensor of rewards or targets, wherever they were: rewards come from the
    model's device, targets from Python lists."""
    if torch.is_tensor(values):
        return values.detach().to("cpu", torch.float64).flatten()
    return torch.tensor(values, dtype=torch.float64).flatten()


def pairwise_metrics(r_a, r_b, p_first, bins=10):
    """Held-out quality of a reward model on pairs.

    accuracy: share of pairs with a clear target (p != 0.5) whose predicted winner matches;
    calibration: expected calibration error of P(a) = sigmoid(r_a - r_b) over equal-width
    bins, Brier score and log loss against the targets, and the mean |P(a) - p| (soft labels).
    """
    r_a, r_b, p = (_cpu_float64(x) for x in (r_a, r_b, p_first))
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


# Attention implementations that take a custom 4D mask as it is: sdpa a boolean one (True: attend),
# eager an additive one (0 or the dtype's lowest value). Others (flash attention, ...) take no
# custom mask: their pairs are read as two whole rows.
PACKED_MASK_ATTENTION = ("sdpa", "eager")


def packs_pairs(config):
    """Whether a causal LM of this config can read a pair as one packed row: a custom 4D mask that
    its attention takes, and no sliding window (the custom mask would replace the window's)."""
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    layer_types = getattr(text, "layer_types", None)
    full_attention = (all(t == "full_attention" for t in layer_types) if layer_types
                      else not getattr(text, "sliding_window", None))
    return getattr(config, "_attn_implementation", None) in PACKED_MASK_ATTENTION and full_attention


def pair_attention_mask(segments, dtype=None):
    """[rows, 1, L, L] attention of packed rows [prompt | answer a | answer b | padding].

    ``segments`` [rows, L]: 0 prompt, 1 answer a, 2 answer b, -1 padding. A token attends to the
    tokens at or before its column that are its prompt's or its own answer's, so answer b never sees
    answer a: each answer reads as if it alone followed the prompt. Padding attends to itself only
    (a row of attention with nothing to attend to would give NaN). Boolean (True: attend), or
    additive in ``dtype`` (0 or its lowest value) for an eager attention.
    """
    width = segments.shape[1]
    col = torch.arange(width, device=segments.device)
    query, key = segments[:, :, None], segments[:, None, :]
    causal = col[None, :, None] >= col[None, None, :]
    allowed = causal & (query != -1) & (key != -1) & ((key == 0) | (key == query))
    allowed = (allowed | torch.eye(width, dtype=torch.bool, device=segments.device))[:, None]
    if dtype is None:
        return allowed
    lowest = torch.finfo(dtype).min
    return torch.zeros(allowed.shape, dtype=dtype, device=segments.device).masked_fill_(~allowed, lowest)


class RewardNet(torch.nn.Module):
    """A reward model's forward pass as one module, so that an engine that wraps it (DDP, FSDP;
    rl/distributed.py) sees every weight used inside its forward.

    ``forward(**batch)``: one reward per row. A causal LM is read at the last real token (found
    from the attention mask, not the pad id, which may equal EOS); an encoder by its own head.
    ``forward(input_ids=packed, segments=..., position_ids=..., read_at=...)``: a causal LM's
    packed pair rows (``RewardScorer.forward_pairs``), read at the columns ``read_at`` [rows, 2]
    (the last token of answer a and of answer b); rewards interleaved: a0, b0, a1, b1, ...
    """

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.config = model.config
        self.causal = is_causal_lm(model.config)
        self._no_split_modules = getattr(model, "_no_split_modules", None)  # the layers FSDP shards one by one

    def forward(self, segments=None, read_at=None, **batch):
        if not self.causal:
            return self.model(**batch).logits.float().squeeze(-1)
        ids, device = batch["input_ids"], batch["input_ids"].device
        body = trunk(self.model)
        if segments is None:
            mask = batch["attention_mask"]
            hidden = body(input_ids=ids, attention_mask=mask).last_hidden_state
            return self._head(hidden[torch.arange(hidden.shape[0], device=device), mask.sum(-1) - 1])
        eager = self.config._attn_implementation == "eager"
        mask = pair_attention_mask(segments, next(self.model.parameters()).dtype if eager else None)
        hidden = body(input_ids=ids, attention_mask=mask, position_ids=batch["position_ids"]).last_hidden_state
        rows = torch.arange(hidden.shape[0], device=device)[:, None].expand_as(read_at)
        return self._head(hidden[rows, read_at].flatten(0, 1))

    def _head(self, hidden):
        return scalar_head(self.model)(hidden).float().squeeze(-1)


class RewardScorer:
    """Scores (prompt, response) pairs with a reward model: ``scorer(prompts, responses) -> [float]``."""

    def __init__(self, model, tokenizer, *, max_length=1152, batch_size=16):
        self.model, self.tokenizer = model, tokenizer
        self.max_length, self.batch_size = max_length, batch_size
        self.net = RewardNet(model)  # what computes the rewards (in training: as the engine holds it)
        self.causal = self.net.causal
        self.share_prompts = True  # forward_pairs: one packed row per pair where the model can read one

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
            n = len(prompts)
            ids = tok(list(prompts) + list(responses), add_special_tokens=False)["input_ids"]  # one call for all
            for p_ids, r_ids in zip(ids[:n], ids[n:]):
                r_ids = r_ids[: self.max_length]
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
        """One scalar per row (``RewardNet``)."""
        device = next(self.model.parameters()).device
        batch = {k: to_device(v, device) for k, v in batch.items()}
        with autocast(device):
            return self.net(**batch)

    def forward_pairs(self, prompts, responses_a, responses_b):
        """(r_a, r_b) for pairs sharing their prompt, with gradients when enabled.

        A causal LM reads each pair as one packed row, [prompt | answer a | answer b], in one
        forward pass: answer b is masked from answer a and its positions restart where the prompt
        ends, so each answer reads as if it alone followed the prompt, and the prompt (most of the
        tokens in TL;DR or HH pairs) costs one forward and one backward instead of two, in one pass
        over the layers (as many kernel launches as one batch of rows). Rewards and gradients are
        those of two whole rows. The prompt is cut from the left to leave room for the longer
        answer. Encoders, attention without custom masks (``packs_pairs``), pairs with an empty
        prompt or answer, and ``share_prompts = False`` score two ordinary rows.
        """
        n = len(prompts)
        packed = self.share_prompts and self.causal and packs_pairs(self.model.config)
        rows = self._pair_ids(prompts, responses_a, responses_b) if packed else None
        if rows is None:
            rewards = self.forward(self.encode(list(prompts) * 2, list(responses_a) + list(responses_b)))
            return rewards[:n], rewards[n:]
        prompt_rows, answer_rows = rows  # answers interleaved: a0, b0, a1, b1, ...
        width = max(len(p) + len(answer_rows[2 * i]) + len(answer_rows[2 * i + 1]) for i, p in enumerate(prompt_rows))
        ids = torch.full((n, width), self.tokenizer.pad_token_id, dtype=torch.long)
        segments = torch.full((n, width), -1, dtype=torch.long)
        positions = torch.zeros((n, width), dtype=torch.long)
        read_at = torch.zeros((n, 2), dtype=torch.long)
        for i, p in enumerate(prompt_rows):
            a, b = answer_rows[2 * i], answer_rows[2 * i + 1]
            pa, pab = len(p) + len(a), len(p) + len(a) + len(b)
            ids[i, :pab] = torch.tensor(p + a + b, dtype=torch.long)
            segments[i, :len(p)] = 0
            segments[i, len(p):pa] = 1
            segments[i, pa:pab] = 2
            positions[i, :pa] = torch.arange(pa)
            positions[i, pa:pab] = torch.arange(len(p), len(p) + len(b))  # b continues the prompt, not a
            read_at[i] = torch.tensor([pa - 1, pab - 1])
        rewards = self.forward({"input_ids": ids, "segments": segments, "position_ids": positions, "read_at": read_at})
        return rewards[0::2], rewards[1::2]

    def _pair_ids(self, prompts, responses_a, responses_b):
        """(prompt ids, interleaved answer ids), or None when some prompt or answer is empty."""
        n = len(prompts)
        ids = self.tokenizer(list(prompts) + list(responses_a) + list(responses_b),
                             add_special_tokens=False)["input_ids"]  # one call for all
        prompt_rows, answer_rows = [], []
        for p_ids, a_ids, b_ids in zip(ids[:n], ids[n:2 * n], ids[2 * n:]):
            a_ids, b_ids = a_ids[: self.max_length - 1], b_ids[: self.max_length - 1]
            p_ids = p_ids[-(self.max_length - max(len(a_ids), len(b_ids))):]
            if not (p_ids and a_ids and b_ids):
                return None
            prompt_rows.append(p_ids)
            answer_rows += [a_ids, b_ids]
        return prompt_rows, answer_rows

    def score(self, prompts, responses):
        """Rewards as a float32 CPU tensor (plain numbers to index and compare with Python data)."""
        out = []
        with torch.no_grad():
            for i in range(0, len(prompts), self.batch_size):
                out.append(self.forward(self.encode(prompts[i:i + self.batch_size], responses[i:i + self.batch_size])))
        return torch.cat(out).float().cpu() if out else torch.zeros(0)

    def __call__(self, prompts, responses):
        return self.score(prompts, responses).tolist()


def evaluate_pairs(scorer, pairs):
    r_a, r_b = [], []
    with torch.no_grad():
        for i in range(0, len(pairs), scorer.batch_size):
            part = pairs[i:i + scorer.batch_size]
            a, b = scorer.forward_pairs([p.prompt for p in part], [p.response_a for p in part],
                                        [p.response_b for p in part])
            r_a.append(a)
            r_b.append(b)
    cat = lambda x: torch.cat(x) if x else torch.zeros(0)  # noqa: E731
    return pairwise_metrics(cat(r_a), cat(r_b), [p.p_first for p in pairs])


def train_reward_model(scorer, pairs, config: RewardModelConfig, *, eval_pairs=None, on_step=None,
                       accelerator=None):
    """Train ``scorer.model`` in place on ``pairs``; returns the final held-out metrics (or {}).

    ``on_step(step, total_steps, metrics)`` after each optimizer step. With an ``accelerator`` of
    several processes each trains on its share of every global batch, the model and optimizer
    prepared for the run's engine (rl/distributed.py; under FSDP or DeepSpeed ``scorer.model`` is
    left sharded: save it with ``rl.distributed.save_trained``); ``on_step`` runs on every process
    with the global metrics.
    """
    if config.batch_size > len(pairs):
        raise ValueError(f"batch size {config.batch_size} is larger than the {len(pairs)} training pairs")
    seed_everything(config.seed)
    model = scorer.model
    model.requires_grad_(True)
    optimizer = make_optimizer(model.parameters(), config.optimizer, config.learning_rate, config.weight_decay)
    trained = Trainable(scorer.net, optimizer, accelerator, config)
    plain, scorer.net = scorer.net, trained.module  # forward passes go through the engine
    steps_per_epoch = len(pairs) // config.batch_size
    total_steps = steps_per_epoch * config.epochs
    rng = random.Random(config.seed)
    step = 0
    for epoch in range(config.epochs):
        order = list(range(len(pairs)))
        rng.shuffle(order)
        for b in range(steps_per_epoch):
            t0 = time.perf_counter()
            batch = [pairs[i] for i in order[b * config.batch_size:(b + 1) * config.batch_size]]
            mine = share(batch, accelerator)  # the whole batch with one process
            parts = micro_batches(mine, len(batch), config.gradient_accumulation_steps, accelerator)
            trained.zero_grad()
            # summed on the device and read once per step: each read waits for the GPU to finish
            sums = torch.zeros(2, dtype=torch.float64, device=next(scorer.model.parameters()).device)  # loss x pairs, correct
            for i, part in enumerate(parts):
                with trained.micro_batch(last=i == len(parts) - 1):
                    r_a, r_b = scorer.forward_pairs([p.prompt for p in part], [p.response_a for p in part],
                                                    [p.response_b for p in part])
                    target = to_device(torch.tensor([p.p_first for p in part], dtype=torch.float32), r_a.device)
                    loss = soft_label_loss(r_a, r_b, target)
                    trained.backward(loss * len(part) / len(batch))
                sums[0] += loss.detach() * len(part)
                sums[1] += (((r_a > r_b) == (target > 0.5)) & (target != 0.5)).sum()  # no boolean index: no sync
            loss_total, correct = sum_numbers(sums.tolist(), accelerator)
            grad_norm = trained.step()
            metrics = {"loss": loss_total / len(batch), "train_accuracy": correct / max(1, sum(p.p_first != 0.5 for p in batch)),
                       "grad_norm": grad_norm, "epoch": epoch, "seconds_per_step": time.perf_counter() - t0}
            if eval_pairs and config.eval_every and (step + 1) % config.eval_every == 0 and step + 1 < total_steps:
                metrics.update({f"eval_{k}": v for k, v in evaluate_pairs(scorer, eval_pairs).items()})
            if on_step is not None:
                on_step(step, total_steps, metrics)
            step += 1
    scorer.net = plain
    model.requires_grad_(False)
    return evaluate_pairs(scorer, eval_pairs) if eval_pairs else {}
