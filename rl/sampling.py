"""Sampling responses from a policy: batched, KV-cached, temperature and top-p, seeded per row.

Each row draws its tokens from its own ``torch.Generator``, so a response depends on its
prompt, its seed and the weights, not on which other prompts shared its batch (up to float
rounding of padded batches). The generators live on the CPU and give one uniform number per
row and token; the token is picked from it on the model's device by inverting the cumulative
distribution. So the same seed draws the same tokens on a CPU and on a GPU, wherever their
probabilities agree (a CUDA generator would draw other numbers than a CPU one). Rows that finish
are dropped from the batch (and the KV cache), so a batch costs what its long responses cost,
not ``batch x max_new_tokens``.
"""
import hashlib
from dataclasses import dataclass

import torch

from rl.modeling import autocast, encode_left_truncated, pad_left, stop_token_ids


@dataclass
class SamplingConfig:
    n: int = 1                       # responses per prompt
    temperature: float = 0.9         # the paper samples the policy at T = 0.9
    top_p: float = 1.0
    max_new_tokens: int = 64
    max_prompt_tokens: int = 1024    # longer prompts keep their end
    batch_size: int = 16             # rows (prompt x sample) generated together
    seed: int = 0


@dataclass
class Generation:
    text: str
    token_ids: list          # response tokens, including the stop token if one was produced
    finished: bool           # stopped by a stop token (False: cut at max_new_tokens)


def row_seed(*parts) -> int:
    """A 63-bit seed from any parts (base seed, prompt key, sample index, ...)."""
    h = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


def _filter_top_p(probs, top_p):
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    # Keep the smallest set whose mass reaches top_p (always at least the top token).
    drop = sorted_probs.cumsum(-1) - sorted_probs >= top_p
    sorted_probs = sorted_probs.masked_fill(drop, 0.0)
    return torch.zeros_like(probs).scatter_(-1, order, sorted_probs)


def _draw(logits, temperature, top_p, generators):
    """One token per row: argmax at temperature 0, else the first token whose cumulative
    probability passes the row's uniform number (its generator's next draw)."""
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        probs = _filter_top_p(probs, top_p)
    uniform = torch.cat([torch.rand(1, generator=g, dtype=torch.float64) for g in generators])
    # float64 sums: over a 50k vocabulary float32 rounding would move the boundaries between tokens
    cdf = probs.double().cumsum(-1)
    target = uniform.to(cdf.device)[:, None] * cdf[:, -1:]  # top-p leaves the rows unnormalised
    tokens = torch.searchsorted(cdf, target, right=True)[:, 0]  # never a token of probability 0
    return tokens.clamp_(max=probs.shape[-1] - 1)


@torch.no_grad()
def sample_token_ids(model, prompt_ids, *, max_new_tokens, temperature, top_p, stop_ids, pad_id, seeds,
                     return_logprobs=False):
    """Continue each prompt (a list of token ids); returns one list of response ids per prompt.

    ``return_logprobs``: also return, per prompt, log pi(token) of each sampled token under the
    model itself (temperature 1, no top-p): what RL's KL term needs, at no extra forward pass.
    """
    device = next(model.parameters()).device
    from transformers import DynamicCache

    generators = []
    for s in seeds:
        g = torch.Generator()  # on the CPU whatever the model's device (module docstring)
        g.manual_seed(int(s))
        generators.append(g)
    input_ids, mask, positions = pad_left(prompt_ids, pad_id, device)
    stop = torch.tensor(stop_ids or [-1], device=device)
    active = list(range(len(prompt_ids)))        # original row of each batch row
    out = [[] for _ in prompt_ids]
    out_logprobs = [[] for _ in prompt_ids]
    cache = DynamicCache()
    with autocast(device):
        logits = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                       use_cache=True, logits_to_keep=1).logits[:, -1]
    next_pos = positions[:, -1]
    for _ in range(max_new_tokens):
        tokens = _draw(logits, temperature, top_p, [generators[r] for r in active])
        for row, t in zip(active, tokens.tolist()):
            out[row].append(t)
        if return_logprobs:
            lp = torch.log_softmax(logits.float(), dim=-1).gather(-1, tokens[:, None])[:, 0]
            for row, v in zip(active, lp.tolist()):
                out_logprobs[row].append(v)
        done = torch.isin(tokens, stop)
        if bool(done.any()):
            keep = (~done).nonzero().flatten()
            if keep.numel() == 0:
                break
            cache.batch_select_indices(keep)
            active = [active[i] for i in keep.tolist()]
            tokens, mask, next_pos = tokens[keep], mask[keep], next_pos[keep]
        if len(out[active[0]]) >= max_new_tokens:
            break
        next_pos = next_pos + 1
        mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
        with autocast(device):
            logits = model(input_ids=tokens[:, None], attention_mask=mask, position_ids=next_pos[:, None],
                           past_key_values=cache, use_cache=True).logits[:, -1]
    return (out, out_logprobs) if return_logprobs else out


def generate(model, tokenizer, prompts, config: SamplingConfig, *, prompt_keys=None, only=None, progress=None):
    """``config.n`` responses for each prompt text: a list (per prompt) of lists of Generation.

    ``prompt_keys`` (e.g. database ids) make each row's seed independent of the prompt's
    position in ``prompts``; ``only`` (a set of (prompt position, sample index)) generates just
    those rows (the others stay None); ``progress(done_rows, total_rows)`` after each batch.
    """
    keys = list(prompt_keys) if prompt_keys is not None else list(range(len(prompts)))
    ids = encode_left_truncated(tokenizer, prompts, config.max_prompt_tokens)
    stop_ids = stop_token_ids(tokenizer, getattr(model, "generation_config", None) or model.config)
    pad_id = tokenizer.pad_token_id
    rows = [(p, k) for p in range(len(prompts)) for k in range(config.n) if only is None or (p, k) in only]
    # Similar lengths share a batch: less padding in the prompt pass.
    rows.sort(key=lambda r: len(ids[r[0]]))
    results = [[None] * config.n for _ in prompts]
    for start in range(0, len(rows), config.batch_size):
        chunk = rows[start:start + config.batch_size]
        responses = sample_token_ids(
            model, [ids[p] for p, _ in chunk], max_new_tokens=config.max_new_tokens,
            temperature=config.temperature, top_p=config.top_p, stop_ids=stop_ids, pad_id=pad_id,
            seeds=[row_seed(config.seed, keys[p], k) for p, k in chunk],
        )
        for (p, k), resp in zip(chunk, responses):
            finished = bool(resp) and resp[-1] in stop_ids
            text = tokenizer.decode(resp[:-1] if finished else resp, skip_special_tokens=True)
            results[p][k] = Generation(text=text, token_ids=resp, finished=finished)
        if progress is not None:
            progress(min(start + config.batch_size, len(rows)), len(rows))
    return results
