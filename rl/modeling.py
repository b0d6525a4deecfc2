"""Loading, placing and saving models; shared by the trainers. Plain torch/transformers.

Every model lives on disk as a plain Hugging Face folder (config + safetensors + tokenizer).
On a GPU, trainable weights stay float32 and forward passes run under bf16 autocast (so small
learning rates are not lost to bf16 rounding); frozen models are stored in bf16. On a CPU
everything is float32 and the same code runs.
"""
import contextlib
import functools
import math
import os
import random
import shutil
from pathlib import Path

import torch


def pick_device(device=None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# bf16 on a GPU that supports it: autocast for forward passes, bf16 storage for frozen models.
# Tests that check two code paths are equal on a GPU turn it off and compare in float32.
BF16_ON_GPU = True


def use_bf16(device) -> bool:
    device = torch.device(device)
    return BF16_ON_GPU and device.type == "cuda" and torch.cuda.is_bf16_supported()


def autocast(device):
    """bf16 autocast on a GPU that supports it; a no-op elsewhere."""
    device = torch.device(device)
    if use_bf16(device):
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def seed_everything(seed):
    random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def load_tokenizer(path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _prepare(model, device, trainable):
    # Dropout off everywhere: RL needs log-probs of the sampled tokens under the same
    # network that sampled them, and reward/SFT runs become reproducible.
    model.eval()
    model.to(device)
    model.requires_grad_(trainable)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = model.config.pad_token_id
    return model


def load_causal_lm(path, device=None, *, trainable=True):
    from transformers import AutoModelForCausalLM

    device = pick_device(device)
    dtype = torch.bfloat16 if (not trainable and use_bf16(device)) else torch.float32
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    return _prepare(model, device, trainable)


def load_value_model(path, device=None, *, zero_head=True):
    """A per-token scalar head on a causal LM's trunk (V(X_t) for every position).

    Loading a causal LM folder keeps its trunk and adds a fresh head; ``zero_head`` starts
    the value at 0 for every state, so the first advantages are the returns themselves.
    """
    from transformers import AutoModelForTokenClassification

    device = pick_device(device)
    model = AutoModelForTokenClassification.from_pretrained(path, num_labels=1, dtype=torch.float32)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = model.config.eos_token_id
    head = scalar_head(model)
    if zero_head and not _has_head_weights(path):
        with torch.no_grad():
            head.weight.zero_()
            if head.bias is not None:
                head.bias.zero_()
    return _prepare(model, device, True)


HEAD_NAMES = ("score", "classifier")


def scalar_head(model):
    """The linear head of a *ForTokenClassification / *ForSequenceClassification (its name varies)."""
    for name in HEAD_NAMES:
        head = getattr(model, name, None)
        if isinstance(head, torch.nn.Linear):
            return head
    raise ValueError(f"{type(model).__name__} has no linear scalar head")


def _has_head_weights(path):
    """Whether the folder already holds a trained head (a saved value or reward model)."""
    from safetensors import safe_open

    for f in Path(path).glob("*.safetensors"):
        with safe_open(str(f), framework="pt") as st:
            if any(k.split(".")[0] in HEAD_NAMES for k in st.keys()):
                return True
    return False


def trunk(model):
    """The transformer body of a *ForCausalLM / *ForTokenClassification / *ForSequenceClassification."""
    return getattr(model, model.base_model_prefix)


def save_hf_folder(model, tokenizer, dest, *, extra_files=None, state_dict=None):
    """Write model + tokenizer to ``dest`` atomically (a half-written folder is never visible).
    ``state_dict``: the weights to write in place of the model's own (a sharded model's, gathered)."""
    dest = Path(dest)
    tmp = dest.with_name(dest.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    for name, text in (extra_files or {}).items():
        (tmp / name).write_text(text)
    return replace_dir(tmp, dest)


def replace_dir(tmp, dest):
    """Move the finished folder ``tmp`` to ``dest``, replacing what was there (never half of both)."""
    tmp, dest = Path(tmp), Path(dest)
    old = dest.with_name(dest.name + ".old")
    if dest.exists():
        if old.exists():
            shutil.rmtree(old)
        os.replace(dest, old)
    os.replace(tmp, dest)
    if old.exists():
        shutil.rmtree(old)
    return dest


def token_logprobs(logits, tokens):
    """log softmax(logits)[tokens], computed in float32 without keeping a second vocab-sized copy."""
    logits = logits.float()
    picked = torch.gather(logits, -1, tokens.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


@torch.no_grad()
def entropy_from_logits(logits):
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def encode_left_truncated(tokenizer, texts, max_tokens):
    """Token ids of each text, keeping the *end* when too long (the end says what to continue)."""
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    return [x[-max_tokens:] if max_tokens and len(x) > max_tokens else x for x in ids]


def pad_left(rows, pad_id, device):
    """Left-padded ids, attention mask and position ids (positions count real tokens only)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
            mask[i, width - len(r):] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return to_device(ids, device), to_device(mask, device), to_device(positions, device)


def to_device(tensor, device):
    """A CPU tensor on ``device`` without waiting for the device: a blocking copy to a GPU first waits
    for all the work queued there. (Safe from ordinary memory: the copy is staged before it returns.)"""
    return tensor.to(device, non_blocking=True)


def cache_argument(model):
    """The keyword a model's forward takes its KV cache by: ``cache`` since transformers 5.24
    (``past_key_values`` still works there, with a warning that would also break a compiled graph)."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def returned_cache(output):
    """The KV cache a forward returned: ``output.cache`` since transformers 5.24 (reading
    ``past_key_values`` there logs a deprecation), ``output.past_key_values`` before."""
    return output["cache"] if "cache" in output else output.past_key_values


def stop_token_ids(tokenizer, model_config=None):
    """Tokens that end a response: the tokenizer's EOS and the model's generation EOS ids."""
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    eos = getattr(model_config, "eos_token_id", None) if model_config is not None else None
    if isinstance(eos, int):
        ids.add(eos)
    elif isinstance(eos, (list, tuple)):
        ids.update(int(e) for e in eos)
    return sorted(ids)


def make_optimizer(params, name, lr, weight_decay=0.0):
    """``adamw`` (torch) or ``adafactor`` (the paper's optimizer; factored second moments, no
    first moment, so it needs almost no memory beyond the weights)."""
    params = [p for p in params if p.requires_grad]
    if name == "adamw":
        # the fused kernel (CPU and GPU) does the update in one pass over each tensor
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
    if name == "adafactor":
        return batched_adafactor()(params, lr=lr, weight_decay=weight_decay, scale_parameter=False,
                                   relative_step=False, warmup_init=False)
    raise ValueError(f"unknown optimizer {name!r}; use 'adamw' or 'adafactor'")


# Devices whose Adafactor steps are batched: on a GPU each small operation is a kernel launch; a
# CPU runs them without that cost, and one tensor at a time its temporaries stay in its caches.
BATCHED_ADAFACTOR_DEVICES = ("cuda",)
# Elements of the tensors one batched Adafactor update works on at once (a tensor larger than this
# is a batch by itself): each batch holds two temporary float32 copies of its tensors, so this
# bounds what the step needs beyond the weights, gradients and factored moments.
ADAFACTOR_BATCH_ELEMENTS = 1 << 26


@functools.cache  # one class: its optimizers are instances of the same type
def batched_adafactor():
    """transformers' ``Adafactor``, whose step does the same arithmetic for many tensors at once.

    Its own step runs about twenty small operations per weight tensor, one after another (a
    kernel launch each on a GPU: thousands per step for a model of a few hundred tensors). Here,
    with the settings the trainers use (a fixed learning rate: ``scale_parameter``,
    ``relative_step`` and ``warmup_init`` off, no first moment) and float32 weights on one GPU
    (``BATCHED_ADAFACTOR_DEVICES``), the elementwise work runs as torch's ``_foreach`` operations
    over batches of tensors; only the row and column means of the factored moments and the
    clipping divisor stay per tensor. The state (``step``, ``exp_avg_sq_row``/``_col`` or
    ``exp_avg_sq``) is transformers', so a checkpoint of either loads into the other. Other
    settings, weights or devices take its own step.
    """
    from transformers.optimization import Adafactor

    class BatchedAdafactor(Adafactor):
        @torch.no_grad()
        def step(self, closure=None):
            groups = [(group, [p for p in group["params"] if p.grad is not None]) for group in self.param_groups]
            if not all(self._batches(group, params) for group, params in groups):
                return super().step(closure)
            loss = closure() if closure is not None else None
            for group, params in groups:
                for batch in _element_batches(params, ADAFACTOR_BATCH_ELEMENTS):
                    by_step = {}
                    for p in batch:
                        state = self.state[p]
                        if not state:
                            self._init_state(p, state)
                        state["step"] += 1
                        by_step.setdefault(state["step"], []).append(p)
                    for step, same in by_step.items():
                        self._update(group, same, step)
            return loss

        def _batches(self, group, params):
            """Whether the batched step does what transformers' would for these settings and weights."""
            plain = all(type(p) in (torch.nn.Parameter, torch.Tensor) for p in params)  # no DTensor, ...
            return (plain and group["beta1"] is None and not group["scale_parameter"] and not group["relative_step"]
                    and not group["warmup_init"] and group["lr"] is not None
                    and all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 and not p.grad.is_sparse
                            for p in params)
                    and len({p.device for p in params}) <= 1
                    and all(p.device.type in BATCHED_ADAFACTOR_DEVICES for p in params))

        def _init_state(self, p, state):
            state["step"] = 0
            if p.dim() >= 2:
                state["exp_avg_sq_row"] = torch.zeros(p.shape[:-1], dtype=p.dtype, device=p.device)
                state["exp_avg_sq_col"] = torch.zeros(p.shape[:-2] + p.shape[-1:], dtype=p.dtype, device=p.device)
            else:
                state["exp_avg_sq"] = torch.zeros_like(p)
            state["RMS"] = 0  # transformers' key; it only reads it with scale_parameter

        def _update(self, group, params, step):
            """One Adafactor step for ``params`` (all at step ``step``), as transformers' does it."""
            lr, beta2t = group["lr"], 1.0 - math.pow(step, group["decay_rate"])
            grads = [p.grad for p in params]
            squares = torch._foreach_mul(grads, grads)
            torch._foreach_add_(squares, group["eps"][0])
            factored = [i for i, p in enumerate(params) if p.dim() >= 2]
            single = [i for i, p in enumerate(params) if p.dim() < 2]
            updates = [None] * len(params)
            if factored:
                rows = [self.state[params[i]]["exp_avg_sq_row"] for i in factored]
                cols = [self.state[params[i]]["exp_avg_sq_col"] for i in factored]
                torch._foreach_mul_(rows, beta2t)
                torch._foreach_add_(rows, [squares[i].mean(dim=-1) for i in factored], alpha=1.0 - beta2t)
                torch._foreach_mul_(cols, beta2t)
                torch._foreach_add_(cols, [squares[i].mean(dim=-2) for i in factored], alpha=1.0 - beta2t)
                # the approximate second moment: rsqrt(row / mean(row)) x rsqrt(col), an outer product
                row_factors = torch._foreach_div(rows, [r.mean(dim=-1, keepdim=True) for r in rows])
                torch._foreach_rsqrt_(row_factors)
                col_factors = torch._foreach_rsqrt(cols)
                for i, r, c in zip(factored, row_factors, col_factors):
                    updates[i] = r.unsqueeze(-1) * c.unsqueeze(-2)
            if single:
                moments = [self.state[params[i]]["exp_avg_sq"] for i in single]
                torch._foreach_mul_(moments, beta2t)
                torch._foreach_add_(moments, [squares[i] for i in single], alpha=1.0 - beta2t)
                for i, u in zip(single, torch._foreach_rsqrt(moments)):
                    updates[i] = u
            del squares
            torch._foreach_mul_(updates, grads)
            # clipping: each update divided by max(1, RMS(update) / clip_threshold)
            norms = torch.stack(torch._foreach_norm(updates))
            sizes = to_device(torch.tensor([u.numel() ** 0.5 for u in updates], dtype=norms.dtype), norms.device)
            divisors = (norms / sizes / group["clip_threshold"]).clamp_(min=1.0)
            torch._foreach_div_(updates, list(divisors.unbind()))
            torch._foreach_mul_(updates, lr)
            if group["weight_decay"] != 0:
                torch._foreach_add_(params, params, alpha=-group["weight_decay"] * lr)
            torch._foreach_sub_(params, updates)

    return BatchedAdafactor


def _element_batches(tensors, limit):
    """``tensors`` in order, in runs of at most ``limit`` elements (a larger tensor alone)."""
    batch, size = [], 0
    for t in tensors:
        if batch and size + t.numel() > limit:
            yield batch
            batch, size = [], 0
        batch.append(t)
        size += t.numel()
    if batch:
        yield batch
