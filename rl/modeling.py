"""Loading, placing and saving models; shared by the trainers. Plain torch/transformers.

Every model lives on disk as a plain Hugging Face folder (config + safetensors + tokenizer).
On a GPU, trainable weights stay float32 and forward passes run under bf16 autocast (so small
learning rates are not lost to bf16 rounding); frozen models are stored in bf16. On a CPU
everything is float32 and the same code runs.
"""
import contextlib
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
        from transformers.optimization import Adafactor

        return Adafactor(params, lr=lr, weight_decay=weight_decay, scale_parameter=False, relative_step=False,
                         warmup_init=False)
    raise ValueError(f"unknown optimizer {name!r}; use 'adamw' or 'adafactor'")
