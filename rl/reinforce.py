"""REINFORCE with a learned value baseline, as in the RLAIF paper (docs/method.md §3).

Policy pi and value model V both start from the SFT model; a frozen copy of SFT is the
reference pi_SFT. Each step:

1. sample a response y for each prompt x from pi at temperature 0.9 (KV cache, batched);
2. score it: r(x, y) from a reward model or any ``reward_fn(contexts, responses)``;
3. the return, given only at the last token with gamma = 1, is the same for every step t:
       Z_t = R = (1 - beta) * r(x, y) - beta * KL,   KL = sum_t [log pi(a_t|s_t) - log pi_SFT(a_t|s_t)]
   (the per-token log-ratio estimate of KL(pi || pi_SFT) on the sampled tokens);
4. minimise, averaged over the batch,
       policy loss = -sum_t log pi(a_t|s_t) * stopgrad(Z_t - V(s_t))
       value loss  =  sum_t (V(s_t) - Z_t)^2
   with one optimizer step for each model.

Log-probabilities are those of the model itself (temperature 1); the temperature only shapes
how responses are drawn. The stop token, when produced, is one of the actions; a response that
reaches a stop string (the task's next turn marker, rl/formats.py) ends before it, and the tokens
from there on are no actions: the sampler drops them, so log-probs, KL and value targets cover
only the kept tokens.
"""
import copy
import random
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import torch

from rl.config import DECODE_CACHES, RLConfig  # the settings (defaults, ranges, help): rl/config.py
from rl.distributed import (
    Trainable,
    as_number,
    engine,
    gather_lists,
    is_main,
    is_sharded,
    micro_batches,
    refresh_copy,
    save_trained,
    share_bounds,
    sum_numbers,
    wait_for_everyone,
)
from rl.modeling import (
    autocast,
    encode_left_truncated,
    entropy_from_logits,
    load_causal_lm,
    load_tokenizer,
    load_value_model,
    make_optimizer,
    pick_device,
    replace_dir,
    seed_everything,
    stop_token_ids,
    to_device,
    token_logprobs,
    use_bf16,
)
from rl.sampling import row_seed, sample_token_ids


DEEPSPEED_RL = ("RL does not run under DeepSpeed: its checkpoints keep the optimizer states in PyTorch's format "
                "so a run resumes on any number of processes, and ZeRO keeps them partitioned in its own. Use "
                "configs/accelerate/fsdp.yaml (FSDP 2 shards policy and value model the same way).")


def reinforce_returns(logprobs, ref_logprobs, mask, scores, beta):
    """(KL estimate, return R) per sequence: R = (1 - beta) r - beta sum_t (log pi - log pi_SFT)."""
    mask = mask.to(ref_logprobs.dtype)
    kl = ((logprobs.detach() - ref_logprobs) * mask).sum(-1)
    return kl, (1 - beta) * scores - beta * kl               # R, given at the last token


def value_loss_of(values, returns, mask, n):
    """sum_t (V(X_t) - Z_t)^2 with Z_t = R for every t (gamma = 1), mean over the step's n sequences."""
    z = returns[:, None].expand_as(values)
    return (((values - z) ** 2) * mask.to(values.dtype)).sum() / n


def policy_loss_of(logprobs, returns, values, mask, n):
    """-sum_t log pi(A_t | X_t) * stopgrad(Z_t - V(X_t)), mean over the step's n sequences."""
    advantage = (returns[:, None].expand_as(logprobs) - values).detach()
    return -(logprobs * advantage * mask.to(logprobs.dtype)).sum() / n


def reinforce_losses(logprobs, ref_logprobs, values, mask, scores, beta, *, batch_size=None):
    """The paper's losses for a batch of sampled responses.

    logprobs (with grad), ref_logprobs, values (with grad), mask: [B, T] over response tokens
    (mask 1 on real tokens); scores: [B] rewards r(x, y). Sums over tokens, means over the
    ``batch_size`` sequences of the whole step (defaults to B; pass the step's size when
    accumulating micro-batches).
    """
    n = batch_size or logprobs.shape[0]
    kl, returns = reinforce_returns(logprobs, ref_logprobs, mask, scores, beta)
    return {"policy_loss": policy_loss_of(logprobs, returns, values, mask, n),
            "value_loss": value_loss_of(values, returns, mask, n), "kl": kl, "returns": returns}


def _batch_tensors(prompt_ids, response_ids, pad_id, device):
    """[left-padded prompts | right-padded responses]: every response starts at column P."""
    p_width = max(len(p) for p in prompt_ids)
    t_width = max(len(r) for r in response_ids)
    b = len(prompt_ids)
    ids = torch.full((b, p_width + t_width), pad_id, dtype=torch.long)
    mask = torch.zeros((b, p_width + t_width), dtype=torch.long)
    for i, (p, r) in enumerate(zip(prompt_ids, response_ids)):
        ids[i, p_width - len(p): p_width] = torch.tensor(p, dtype=torch.long)
        ids[i, p_width: p_width + len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, p_width - len(p): p_width + len(r)] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return to_device(ids, device), to_device(mask, device), to_device(positions, device), p_width, t_width


class ReinforceTrainer:
    """Holds policy, value model, frozen reference and their optimizers; ``train`` runs the loop.

    With an ``accelerator`` of several processes, each samples, scores and trains on its share
    of every step's prompts, policy and value model prepared for the run's engine with their
    optimizers (rl/distributed.py); the frozen reference and the reward source are not prepared:
    each process holds them whole on its device. ``policy`` and ``value_model`` stay the Hugging
    Face models (under FSDP, sharded).
    """

    def __init__(self, config: RLConfig, policy, value_model, reference, tokenizer, reward_fn, *, accelerator=None,
                 stop_strings=(), extra_stop_ids=()):
        if engine(accelerator) == "DEEPSPEED":
            raise RuntimeError(DEEPSPEED_RL)
        self.config, self.accelerator = config, accelerator
        self.policy, self.value_model, self.reference = policy, value_model, reference
        self.tokenizer, self.reward_fn = tokenizer, reward_fn
        # what ends a response: EOS, the format's end-of-turn token and stop strings (rl/formats.py)
        self.stop_ids = sorted(set(stop_token_ids(tokenizer, getattr(policy, "generation_config", None) or policy.config))
                               | {int(i) for i in extra_stop_ids})
        self.stop_strings = tuple(stop_strings)
        # Sampling goes token by token and rows stop early, so it cannot run through a sharded policy
        # (rl/distributed.py): under FSDP the policy samples from a whole copy, refreshed each step.
        sampler = copy.deepcopy(policy).requires_grad_(False) if is_sharded(accelerator) else policy
        self.trained_policy = Trainable(
            policy, make_optimizer(policy.parameters(), config.optimizer, config.learning_rate), accelerator, config)
        self.trained_value = Trainable(
            value_model, make_optimizer(value_model.parameters(), config.optimizer,
                                        config.value_learning_rate or config.learning_rate), accelerator, config)
        self.policy_optimizer, self.value_optimizer = self.trained_policy.optimizer, self.trained_value.optimizer
        self.device = next(self.trained_policy.module.parameters()).device
        if sampler is not policy:  # stored as the reference is (bf16 on a GPU); the prepared weights
            sampler.to(self.device, dtype=torch.bfloat16 if use_bf16(self.device) else None)
            refresh_copy(sampler, policy)
        self.sampler = sampler
        self.completed_steps = 0

    @classmethod
    def from_sft(cls, sft_dir, reward_fn, config: RLConfig, *, device=None, resume_from=None, accelerator=None,
                 stop_strings=(), extra_stop_ids=()):
        """Policy and value from the SFT folder (or a checkpoint to resume), reference = SFT, frozen."""
        device = accelerator.device if accelerator is not None and device is None else pick_device(device)
        if device.type == "cpu":
            device = torch.device("cpu")  # Accelerate's "cpu:0" is no place torch.load can map to
        seed_everything(config.seed)
        tokenizer = load_tokenizer(sft_dir)
        start = Path(resume_from) if resume_from else None
        # a sharded engine moves its shards to the device itself: the whole models stay on the CPU
        trained_on = torch.device("cpu") if is_sharded(accelerator) else device
        policy = load_causal_lm(start / "policy" if start else sft_dir, trained_on)
        value_model = load_value_model(start / "value" if start else sft_dir, trained_on)
        reference = load_causal_lm(sft_dir, device, trainable=False)
        trainer = cls(config, policy, value_model, reference, tokenizer, reward_fn, accelerator=accelerator,
                      stop_strings=stop_strings, extra_stop_ids=extra_stop_ids)
        if start:
            state = torch.load(start / "state.pt", map_location=device, weights_only=False)
            trainer.trained_policy.load_optimizer_state(state["policy_optimizer"])
            trainer.trained_value.load_optimizer_state(state["value_optimizer"])
            trainer.completed_steps = int(state["step"])
        return trainer

    # --- one step ----------------------------------------------------------------------
    def sample(self, prompt_ids, step, first_row=0):
        """(response ids, log pi of each sampled token, ended) per prompt; the policy's own log-probs come
        from the generation pass, so the KL term needs no extra forward. Row i's seed comes from its
        place ``first_row + i`` in the step's global batch, so a process's share draws what one
        process would draw for those rows."""
        cfg = self.config
        rows = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))  # less padding
        size = cfg.generation_batch_size or len(rows)
        out, out_logprobs, out_ended = [None] * len(prompt_ids), [None] * len(prompt_ids), [False] * len(prompt_ids)
        for s in range(0, len(rows), size):
            chunk = rows[s:s + size]
            responses, logprobs, ended = sample_token_ids(
                self.sampler, [prompt_ids[i] for i in chunk], max_new_tokens=cfg.max_response_tokens,
                temperature=cfg.temperature, top_p=cfg.top_p, stop_ids=self.stop_ids,
                pad_id=self.tokenizer.pad_token_id, seeds=[row_seed(cfg.seed, step, first_row + i) for i in chunk],
                return_logprobs=True, return_ended=True, stop_strings=self.stop_strings,
                static_cache=DECODE_CACHES[cfg.decode_cache],
                decode=lambda t: self.tokenizer.decode(t, skip_special_tokens=True),
            )
            for i, r, lp, e in zip(chunk, responses, logprobs, ended):
                out[i], out_logprobs[i], out_ended[i] = r, lp, e
        return out, out_logprobs, out_ended

    def response_text(self, ids):
        if ids and ids[-1] in self.stop_ids:
            ids = ids[:-1]
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def step(self, prompt_ids, contexts, step):
        """Sample, score and update once; returns (the step's metrics, this process's response texts).

        ``prompt_ids`` and ``contexts`` are the step's global batch; this process takes its share.
        """
        cfg = self.config
        t0 = time.perf_counter()
        n = len(prompt_ids)  # losses are means over the global batch, whichever process holds a row
        lo, hi = share_bounds(n, self.accelerator)
        prompt_ids, contexts = prompt_ids[lo:hi], contexts[lo:hi]
        responses, sampled_logprobs, ended = self.sample(prompt_ids, step, first_row=lo)
        t_gen = time.perf_counter() - t0
        texts = [self.response_text(r) for r in responses]
        scores = torch.tensor([float(x) for x in self.reward_fn(list(contexts), texts)], dtype=torch.float32)
        if scores.shape[0] != len(texts) or not torch.isfinite(scores).all():
            raise ValueError("the reward function must return one finite number per response")
        t_reward = time.perf_counter() - t0 - t_gen

        mine = len(prompt_ids)
        order = sorted(range(mine), key=lambda i: len(prompt_ids[i]) + len(responses[i]))
        batches = []
        # Per-row and per-step figures stay on the device until the step's end, where they are read
        # at once: each read waits for the device to finish what is queued (on a GPU the host would
        # stop queueing the next micro-batch's kernels).
        device_scores = to_device(scores, self.device)
        kl_all = torch.zeros(mine, device=self.device)
        returns_all = torch.zeros(mine, device=self.device)
        for idx in micro_batches(order, n, cfg.gradient_accumulation_steps, self.accelerator):
            ids, mask, pos, p_w, t_w = _batch_tensors([prompt_ids[i] for i in idx], [responses[i] for i in idx],
                                                      self.tokenizer.pad_token_id, self.device)
            at = to_device(torch.tensor(idx, dtype=torch.long), self.device)
            targets, resp_mask = ids[:, p_w:], mask[:, p_w:]
            # the logits at positions P-1 .. P+T-2 predict the response tokens
            with torch.no_grad(), autocast(self.device):
                ref_logits = self.reference(input_ids=ids, attention_mask=mask, position_ids=pos,
                                            logits_to_keep=t_w + 1).logits[:, :-1]
            ref_logprobs = token_logprobs(ref_logits, targets)
            del ref_logits
            # R needs log pi of the sampled tokens: the generation pass computed them with these very
            # weights, so R is known before either model trains.
            gen_logprobs = torch.zeros(ref_logprobs.shape, dtype=ref_logprobs.dtype)
            for row, i in enumerate(idx):
                gen_logprobs[row, :len(sampled_logprobs[i])] = torch.tensor(sampled_logprobs[i])
            kl, returns = reinforce_returns(to_device(gen_logprobs, self.device), ref_logprobs, resp_mask,
                                            device_scores[at], cfg.beta)
            kl_all[at] = kl.float()
            returns_all[at] = returns.float()
            batches.append({"ids": ids, "mask": mask, "pos": pos, "p_w": p_w, "t_w": t_w, "targets": targets,
                            "resp_mask": resp_mask, "returns": returns})

        t_ref = time.perf_counter()
        # The value model trains first, over every micro-batch, and steps; then the policy does,
        # using V(s_t) from before the value update (as when both step together). Only one
        # model's gradients and activations exist at any time.
        # policy loss, value loss, entropy, value: summed on the device, read once at the end
        sums = torch.zeros(4, dtype=torch.float64, device=self.device)
        value = self.trained_value
        value.zero_grad()
        for i, b in enumerate(batches):
            with value.micro_batch(last=i == len(batches) - 1):
                with autocast(self.device):
                    values = value.module(input_ids=b["ids"], attention_mask=b["mask"],
                                          position_ids=b["pos"]).logits[:, b["p_w"] - 1:-1, 0].float()
                value_loss = value_loss_of(values, b["returns"], b["resp_mask"], n)
                value.backward(value_loss)
            b["values"] = values.detach()
            sums[1] += value_loss.detach()
            sums[3] += (b["values"] * b["resp_mask"]).sum()
            del values, value_loss
        value_grad = value.step(read=False)
        value.zero_grad()  # free the value gradients before the policy's exist
        t_value = time.perf_counter()

        policy = self.trained_policy
        policy.zero_grad()
        for i, b in enumerate(batches):
            with policy.micro_batch(last=i == len(batches) - 1):
                with autocast(self.device):
                    logits = policy.module(input_ids=b["ids"], attention_mask=b["mask"], position_ids=b["pos"],
                                           logits_to_keep=b["t_w"] + 1).logits[:, :-1]
                logprobs = token_logprobs(logits, b["targets"])
                sums[2] += (entropy_from_logits(logits.detach()) * b["resp_mask"]).sum()
                del logits
                policy_loss = policy_loss_of(logprobs, b["returns"], b["values"], b["resp_mask"], n)
                policy.backward(policy_loss)
            sums[0] += policy_loss.detach()
            del logprobs, policy_loss
        policy_grad = policy.step(read=False)
        policy.zero_grad()  # free gradient memory between steps
        if self.sampler is not self.policy:
            refresh_copy(self.sampler, self.policy)
        self.completed_steps = step + 1
        # the metrics are the global batch's: every process's rows, in global order
        acc = self.accelerator
        policy_grad, value_grad = as_number(policy_grad), as_number(value_grad)  # both wait for the policy's step
        kl_mine, returns_mine = torch.stack([kl_all, returns_all]).tolist()
        step_sums = sums.tolist() + [sum(len(r) for r in responses)]  # a response's tokens are its mask's ones
        scores = torch.tensor(gather_lists(scores.tolist(), acc), dtype=torch.float32)
        kl_all = torch.tensor(gather_lists(kl_mine, acc), dtype=torch.float32)
        returns_all = torch.tensor(gather_lists(returns_mine, acc), dtype=torch.float32)
        lengths = torch.tensor(gather_lists([len(r) for r in responses], acc), dtype=torch.float32)
        stopped = sum_numbers([sum(ended)], acc)[0]
        sums = dict(zip(("policy_loss", "value_loss", "entropy", "value", "tokens"), sum_numbers(step_sums, acc)))
        return {
            "reward_mean": float(scores.mean()),
            "reward_std": float(scores.std()) if n > 1 else 0.0,
            "kl": float(kl_all.mean()),
            "return_mean": float(returns_all.mean()),
            "policy_loss": sums["policy_loss"],
            "value_loss": sums["value_loss"],
            "value_mean": sums["value"] / max(sums["tokens"], 1),
            "entropy": sums["entropy"] / max(sums["tokens"], 1),
            "response_length": float(lengths.mean()),
            "stopped_share": stopped / n,
            "policy_grad_norm": policy_grad,
            "value_grad_norm": value_grad,
            # host seconds per phase: on a GPU the host queues a phase's work and goes on, so a phase's
            # device time can fall into a later one (bench/profile_step measures device seconds)
            "generation_seconds": t_gen,
            "reward_seconds": t_reward,
            "reference_seconds": t_ref - t0 - t_gen - t_reward,  # with building the batches and R
            "value_train_seconds": t_value - t_ref,
            "policy_train_seconds": time.perf_counter() - t_value,
            "seconds_per_step": time.perf_counter() - t0,
        }, texts

    # --- the loop ----------------------------------------------------------------------
    def epoch_order(self, epoch, n):
        order = list(range(n))
        if self.config.shuffle:
            random.Random(self.config.seed * 1_000_003 + epoch).shuffle(order)
        return order

    def total_steps(self, n_prompts):
        return (n_prompts // self.config.batch_size) * self.config.epochs

    def train(self, prompts, contexts=None, *, on_step=None, checkpoint_dir=None):
        """Run from ``completed_steps`` to the end. ``prompts``: policy inputs; ``contexts``: what
        ``reward_fn`` gets with each response (defaults to the prompts).

        ``on_step(step, total_steps, metrics, responses)`` after each step (it may raise to stop);
        a checkpoint is written to ``checkpoint_dir`` every ``save_every`` steps and at the end.
        """
        cfg = self.config
        contexts = list(prompts) if contexts is None else list(contexts)
        if cfg.batch_size > len(prompts):
            raise ValueError(f"batch size {cfg.batch_size} is larger than the {len(prompts)} prompts")
        ids = encode_left_truncated(self.tokenizer, prompts, cfg.max_prompt_tokens)
        per_epoch = len(prompts) // cfg.batch_size
        total = per_epoch * cfg.epochs
        for step in range(self.completed_steps, total):
            epoch, b = divmod(step, per_epoch)
            chosen = self.epoch_order(epoch, len(prompts))[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            metrics, texts = self.step([ids[i] for i in chosen], [contexts[i] for i in chosen], step)
            metrics["epoch"] = epoch
            # metrics first: a crash before the next checkpoint repeats (and rewrites) these steps
            if on_step is not None:
                on_step(step, total, metrics, texts)
            if checkpoint_dir and ((step + 1) % cfg.save_every == 0 or step + 1 == total):
                self.save_checkpoint(checkpoint_dir)
        return self.completed_steps

    # --- checkpoints -------------------------------------------------------------------
    def save_checkpoint(self, directory):
        """``directory/checkpoint`` = policy/, value/ (HF folders) and state.pt, replaced atomically.
        Every process calls it (sharded weights and optimizer states are gathered); the main one writes."""
        directory = Path(directory)
        final = directory / "checkpoint"
        tmp = directory / "checkpoint.partial"
        main = is_main(self.accelerator)
        if main:
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
        wait_for_everyone(self.accelerator)
        save_trained(self.policy, self.tokenizer, tmp / "policy", self.accelerator)
        save_trained(self.value_model, None, tmp / "value", self.accelerator)
        state = {"step": self.completed_steps, "config": asdict(self.config),
                 "policy_optimizer": self.trained_policy.optimizer_state(),
                 "value_optimizer": self.trained_value.optimizer_state()}
        if main:
            torch.save(state, tmp / "state.pt")
            replace_dir(tmp, final)
        wait_for_everyone(self.accelerator)
        return final

    @staticmethod
    def checkpoint_step(directory):
        """Completed steps of the checkpoint in ``directory``, or None if there is none."""
        path = Path(directory) / "checkpoint" / "state.pt"
        if not path.exists():
            return None
        return int(torch.load(path, map_location="cpu", weights_only=False)["step"])
