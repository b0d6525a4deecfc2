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

from rl.config import SamplingConfig  # the settings (defaults, ranges, help): rl/config.py
from rl.modeling import autocast, encode_left_truncated, pad_left, stop_token_ids


@dataclass
class Generation:
    text: str
    token_ids: list          # response tokens, including the stop token if one was produced (not a stop string's)
    finished: bool           # ended by a stop token or stop string (False: cut at max_new_tokens)


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


STOP_CHECK_EVERY = 8  # new tokens between checks for stop strings (each check decodes the active rows)


def cut_at_stop_strings(ids, decode, stop_strings):
    """(kept ids, True) when ``decode(ids)`` holds one of ``stop_strings``: the longest prefix of
    ``ids`` whose text ends before the first of them; else (ids, False)."""
    if not stop_strings or not ids:
        return ids, False
    text = decode(ids)
    found = [i for i in (text.find(s) for s in stop_strings) if i >= 0]
    if not found:
        return ids, False
    cut, kept = min(found), len(ids)
    while kept > 0 and len(decode(ids[:kept])) > cut:
        kept -= 1
    return ids[:kept], True


@torch.no_grad()
def sample_token_ids(model, prompt_ids, *, max_new_tokens, temperature, top_p, stop_ids, pad_id, seeds,
                     return_logprobs=False, stop_strings=(), decode=None, return_ended=False):
    """Continue each prompt (a list of token ids); returns one list of response ids per prompt.

    ``return_logprobs``: also return, per prompt, log pi(token) of each sampled token under the
    model itself (temperature 1, no top-p): what RL's KL term needs, at no extra forward pass.
    ``stop_strings`` (with ``decode(ids) -> text``): a response whose text reaches one ends before
    it; its tokens from there on are dropped (with their log-probs), so nothing downstream -- the
    stored text, RL's log-probs, KL and value targets -- sees them. The active rows are decoded
    every ``STOP_CHECK_EVERY`` tokens and once at the end, not at every token.
    ``return_ended``: also return, per prompt, whether it ended (a stop token or a stop string)
    rather than running out of ``max_new_tokens``.
    """
    if stop_strings and decode is None:
        raise ValueError("stop strings need decode(ids) -> text")
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
    ended = [False] * len(prompt_ids)

    def cut(row):
        kept, hit = cut_at_stop_strings(out[row], decode, stop_strings)
        if hit:
            out[row], out_logprobs[row], ended[row] = kept, out_logprobs[row][:len(kept)], True
        return hit

    cache = DynamicCache()
    with autocast(device):
        logits = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                       use_cache=True, logits_to_keep=1).logits[:, -1]
    next_pos = positions[:, -1]
    for drawn in range(1, max_new_tokens + 1):
        tokens = _draw(logits, temperature, top_p, [generators[r] for r in active])
        for row, t in zip(active, tokens.tolist()):
            out[row].append(t)
        if return_logprobs:
            lp = torch.log_softmax(logits.float(), dim=-1).gather(-1, tokens[:, None])[:, 0]
            for row, v in zip(active, lp.tolist()):
                out_logprobs[row].append(v)
        done = torch.isin(tokens, stop)
        if stop_strings and drawn % STOP_CHECK_EVERY == 0:
            hit = torch.tensor([cut(row) for row in active], device=device)
            done = done | hit
        if bool(done.any()):
            keep = (~done).nonzero().flatten()
            if keep.numel() == 0:
                break
            cache.batch_select_indices(keep)
            active = [active[i] for i in keep.tolist()]
            tokens, mask, next_pos = tokens[keep], mask[keep], next_pos[keep]
        if drawn >= max_new_tokens:
            break
        next_pos = next_pos + 1
        mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
        with autocast(device):
            logits = model(input_ids=tokens[:, None], attention_mask=mask, position_ids=next_pos[:, None],
                           past_key_values=cache, use_cache=True).logits[:, -1]
    stops = set(stop_ids or ())
    for row in range(len(prompt_ids)):
        if not ended[row]:
            stopped = bool(out[row]) and out[row][-1] in stops
            body = out[row][:-1] if stopped else out[row]
            kept, hit = cut_at_stop_strings(body, decode, stop_strings)
            if hit:  # a stop string before the stop token, or in the last tokens before max_new_tokens
                out[row], out_logprobs[row] = kept, out_logprobs[row][:len(kept)]
            ended[row] = hit or stopped
    result = (out,) + ((out_logprobs,) if return_logprobs else ()) + ((ended,) if return_ended else ())
    return result if len(result) > 1 else out


def generate(model, tokenizer, prompts, config: SamplingConfig, *, prompt_keys=None, only=None, progress=None,
             stop_strings=(), extra_stop_ids=()):
    """``config.n`` responses for each prompt text: a list (per prompt) of lists of Generation.

    ``stop_strings`` and ``extra_stop_ids`` (besides EOS) end a response (``rl.formats.PolicyInput``);
    neither is part of its text.

    ``prompt_keys`` (e.g. database ids) make each row's seed independent of the prompt's
    position in ``prompts``; ``only`` (a set of (prompt position, sample index)) generates just
    those rows (the others stay None); ``progress(done_rows, total_rows)`` after each batch.
    """
    keys = list(prompt_keys) if prompt_keys is not None else list(range(len(prompts)))
    ids = encode_left_truncated(tokenizer, prompts, config.max_prompt_tokens)
    stop_ids = sorted(set(stop_token_ids(tokenizer, getattr(model, "generation_config", None) or model.config))
                      | {int(i) for i in extra_stop_ids})
    pad_id = tokenizer.pad_token_id
    rows = [(p, k) for p in range(len(prompts)) for k in range(config.n) if only is None or (p, k) in only]
    # Similar lengths share a batch: less padding in the prompt pass.
    rows.sort(key=lambda r: len(ids[r[0]]))
    results = [[None] * config.n for _ in prompts]
    for start in range(0, len(rows), config.batch_size):
        chunk = rows[start:start + config.batch_size]
        responses, ended = sample_token_ids(
            model, [ids[p] for p, _ in chunk], max_new_tokens=config.max_new_tokens,
            temperature=config.temperature, top_p=config.top_p, stop_ids=stop_ids, pad_id=pad_id,
            seeds=[row_seed(config.seed, keys[p], k) for p, k in chunk], return_ended=True,
            stop_strings=tuple(stop_strings), decode=lambda t: tokenizer.decode(t, skip_special_tokens=True),
        )
        for (p, k), resp, finished in zip(chunk, responses, ended):
            text = tokenizer.decode(resp[:-1] if resp and resp[-1] in stop_ids else resp, skip_special_tokens=True)
            results[p][k] = Generation(text=text, token_ids=resp, finished=finished)
        if progress is not None:
            progress(min(start + config.batch_size, len(rows)), len(rows))
    return results
