"""Supervised fine-tuning: a causal LM learns to continue each prompt with its reference.

The loss is the mean token cross-entropy over *response* tokens only (prompt and padding
positions get label -100), so the model is not trained to write the posts it summarizes.
"""
import random
import time

import torch

from rl.config import SFTConfig  # the settings (defaults, ranges, help): rl/config.py
from rl.distributed import Trainable, micro_batches, share, sum_numbers
from rl.modeling import autocast, make_optimizer, seed_everything

IGNORE = -100


def encode_example(tokenizer, prompt, response, config: SFTConfig, end_ids=None):
    """(prompt ids, response ids + the ids that end a response), each truncated to its budget.

    ``end_ids``: what ends the response (rl/formats.py: the chat template's end-of-turn token);
    None: the tokenizer's EOS.
    """
    if end_ids is None:
        end_ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    end_ids = list(end_ids)
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"][-config.max_prompt_tokens:]
    r = tokenizer(response, add_special_tokens=False)["input_ids"][: max(config.max_response_tokens - len(end_ids), 0)]
    return p, r + end_ids


def collate(examples, pad_id):
    """Right-padded input_ids / attention_mask / labels; labels are -100 except on response tokens."""
    width = max(len(p) + len(r) for p, r in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    for i, (p, r) in enumerate(examples):
        seq = torch.tensor(p + r, dtype=torch.long)
        ids[i, : len(seq)] = seq
        mask[i, : len(seq)] = 1
        labels[i, len(p): len(seq)] = torch.tensor(r, dtype=torch.long)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def sft_loss_sum(model, batch):
    """(sum of response-token cross-entropies, number of response tokens) for one micro-batch."""
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items()}
    with autocast(device):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    targets = batch["labels"][:, 1:]
    loss = torch.nn.functional.cross_entropy(
        logits[:, :-1].float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE,
        reduction="sum",
    )
    return loss, int((targets != IGNORE).sum())


def evaluate_sft(model, examples, pad_id, batch_size=8):
    """Mean response-token loss on held-out examples."""
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(examples), batch_size):
            loss, n = sft_loss_sum(model, collate(examples[i:i + batch_size], pad_id))
            total, count = total + float(loss), count + n
    return total / max(count, 1)


def train_sft(model, tokenizer, prompts, responses, config: SFTConfig, *, on_step=None, accelerator=None,
              end_ids=None):
    """Fine-tune ``model`` in place. ``on_step(step, total_steps, metrics)`` after each step.
    ``end_ids``: the tokens every target ends with (None: EOS; see :func:`encode_example`).

    With an ``accelerator`` of several processes each trains on its share of every global batch,
    the model and optimizer prepared for the run's engine (rl/distributed.py; under FSDP or
    DeepSpeed ``model`` is left sharded: save it with ``rl.distributed.save_trained``);
    ``on_step`` runs on every process with the global metrics.
    Returns the per-step mean training losses.
    """
    if len(prompts) != len(responses):
        raise ValueError("prompts and responses differ in length")
    if config.batch_size > len(prompts):
        raise ValueError(f"batch size {config.batch_size} is larger than the {len(prompts)} examples")
    seed_everything(config.seed)
    examples = [encode_example(tokenizer, p, r, config, end_ids) for p, r in zip(prompts, responses)]
    steps_per_epoch = len(examples) // config.batch_size
    total_steps = steps_per_epoch * config.epochs
    optimizer = make_optimizer(model.parameters(), config.optimizer, config.learning_rate, config.weight_decay)
    # The schedule stays outside Accelerate, which would step it once per process (it expects each
    # process to see 1/N of the steps); here every process takes every step.
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / config.warmup_steps) if config.warmup_steps else 1.0
    )
    trained = Trainable(model, optimizer, accelerator, config)
    rng = random.Random(config.seed)
    losses, step = [], 0
    for epoch in range(config.epochs):
        order = list(range(len(examples)))
        rng.shuffle(order)
        for b in range(steps_per_epoch):
            t0 = time.perf_counter()
            batch = [examples[i] for i in order[b * config.batch_size:(b + 1) * config.batch_size]]
            n_tokens = sum(len(r) for _, r in batch)
            mine = share(batch, accelerator)  # the whole batch with one process
            parts = micro_batches(mine, len(batch), config.gradient_accumulation_steps, accelerator)
            total = 0.0
            trained.zero_grad()
            for i, part in enumerate(parts):
                with trained.micro_batch(last=i == len(parts) - 1):
                    loss_sum, _ = sft_loss_sum(trained.module, collate(part, tokenizer.pad_token_id))
                    # Every response token of the whole batch weighs the same, however it is split.
                    trained.backward(loss_sum / n_tokens)
                total += loss_sum.item()
            total = sum_numbers([total], accelerator)[0]
            grad_norm = trained.step()
            schedule.step()
            losses.append(total / n_tokens)
            if on_step is not None:
                on_step(step, total_steps, {
                    "loss": losses[-1], "grad_norm": grad_norm, "epoch": epoch,
                    "lr": schedule.get_last_lr()[0], "response_tokens": n_tokens,
                    "seconds_per_step": time.perf_counter() - t0,
                })
            step += 1
    return losses
