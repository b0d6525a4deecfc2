"""Sampling responses from a policy: batched, KV-cached, temperature and top-p, seeded per row.

Reproducibility: row i's token t is drawn with the t-th uniform number of a CPU
``torch.Generator`` seeded with ``seeds[i]``; all of a row's numbers are drawn up front and
sent to the model's device once. The token is picked from its number on the device by
inverting the cumulative distribution. So a response depends on its prompt, its seed and the
weights only: not on which other prompts share its batch (up to float rounding of padded
batches), nor on the device (a CUDA generator would draw other numbers than a CPU one), nor
on the static or dynamic KV cache, wherever the probabilities agree.

The decode loop keeps tokens, log-probs and the finished flags on the device: a row that
produces a stop token is finished by masking (later tokens are not counted), and the host
looks at the flags only every ``HOST_CHECK_EVERY`` tokens on a GPU (each look waits for the
GPU). Then finished rows leave the batch and its (dynamic) KV cache, so a batch costs roughly
what its long responses cost, not ``batch x max_new_tokens``. On a CUDA device the decode
step can instead run on a static KV cache through ``torch.compile`` (CUDA graphs: one launch
per token instead of one per kernel); rows then stay in the batch until all have finished.
"""
import hashlib
from dataclasses import dataclass

import torch

from rl.config import DECODE_CACHES, SamplingConfig  # the settings (defaults, ranges, help): rl/config.py
from rl.modeling import autocast, cache_argument, encode_left_truncated, pad_left, stop_token_ids, to_device


@dataclass
class Generation:
    text: str
    token_ids: list          # response tokens, including the stop token if one was produced (not a stop string's)
    finished: bool           # ended by a stop token or stop string (False: cut at max_new_tokens)


def row_seed(*parts) -> int:
    """A 63-bit seed from any parts (base seed, prompt key, sample index, ...)."""
    h = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


def row_uniforms(seeds, count):
    """[rows, count] float64 on the CPU: row i holds the first ``count`` numbers of a CPU generator
    seeded with ``seeds[i]`` (the same numbers as ``count`` draws of one number each)."""
    out = torch.empty((len(seeds), count), dtype=torch.float64)
    for i, s in enumerate(seeds):
        out[i] = torch.rand(count, generator=torch.Generator().manual_seed(int(s)), dtype=torch.float64)
    return out


def _filter_top_p(probs, top_p):
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    # Keep the smallest set whose mass reaches top_p (always at least the top token).
    drop = sorted_probs.cumsum(-1) - sorted_probs >= top_p
    sorted_probs = sorted_probs.masked_fill(drop, 0.0)
    return torch.zeros_like(probs).scatter_(-1, order, sorted_probs)


def _draw(logits, temperature, top_p, uniform):
    """One token per row: argmax at temperature 0, else the first token whose cumulative
    probability passes the row's uniform number (``uniform``: [rows] float64 on any device)."""
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        probs = _filter_top_p(probs, top_p)
    # float64 sums: over a 50k vocabulary float32 rounding would move the boundaries between tokens
    cdf = probs.double().cumsum(-1)
    target = uniform.to(cdf.device)[:, None] * cdf[:, -1:]  # top-p leaves the rows unnormalised
    tokens = torch.searchsorted(cdf, target, right=True)[:, 0]  # never a token of probability 0
    return tokens.clamp_(max=probs.shape[-1] - 1)


# Tokens drawn on a GPU between two looks at the host (finished rows, stop strings). A look waits
# for the GPU to finish everything queued, so the host stops queueing the next token's kernels
# (in a launch-bound decode, a token's worth of time); between looks a finished row still runs
# (masked), so a longer interval wastes more compute on finished rows.
HOST_CHECK_EVERY = 8
# On a CPU the tokens are already in host memory: a look costs nothing, finished rows leave at once.
CPU_CHECK_EVERY = 1
# New tokens between checks for stop strings (each check decodes the unfinished rows' text).
STOP_CHECK_EVERY = HOST_CHECK_EVERY
# The static cache's length is rounded up to a multiple of this, so that prompts of similar
# length share one compiled decode graph (a new shape means a new graph and CUDA-graph capture).
STATIC_CACHE_BUCKET = 256
# How the decode step is compiled (None: transformers' CompileConfig defaults: inductor with CUDA
# graphs). Tests set e.g. CompileConfig(backend="eager") to trace the step on a CPU.
COMPILE_CONFIG = None


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


def _decode_step(model, static, compile_decode):
    """``step(tokens [B], mask, positions [B], cache) -> logits [B, vocab]`` for one new token."""
    forward = model
    if static and compile_decode:
        from transformers import CompileConfig

        # transformers' own compiled call (cached on the model): inductor with CUDA graphs
        forward = model.get_compiled_call(COMPILE_CONFIG or CompileConfig())
    cache_kw = cache_argument(model)

    def step(tokens, mask, positions, cache):
        if forward is not model:
            torch.compiler.cudagraph_mark_step_begin()  # the previous step's logits are no longer read
        return forward(input_ids=tokens[:, None], attention_mask=mask, position_ids=positions[:, None],
                       use_cache=True, **{cache_kw: cache}).logits[:, -1]

    return step


@torch.no_grad()
def sample_token_ids(model, prompt_ids, *, max_new_tokens, temperature, top_p, stop_ids, pad_id, seeds,
                     return_logprobs=False, stop_strings=(), decode=None, return_ended=False,
                     static_cache=None, compile_decode=None):
    """Continue each prompt (a list of token ids); returns one list of response ids per prompt.

    ``return_logprobs``: also return, per prompt, log pi(token) of each sampled token under the
    model itself (temperature 1, no top-p): what RL's KL term needs, at no extra forward pass.
    ``stop_strings`` (with ``decode(ids) -> text``): a response whose text reaches one ends before
    it; its tokens from there on are dropped (with their log-probs), so nothing downstream -- the
    stored text, RL's log-probs, KL and value targets -- sees them. The unfinished rows are decoded
    every ``STOP_CHECK_EVERY`` tokens and once at the end, not at every token.
    ``return_ended``: also return, per prompt, whether it ended (a stop token or a stop string)
    rather than running out of ``max_new_tokens``.
    ``static_cache`` (default: on a CUDA device) decodes on a static KV cache, and
    ``compile_decode`` (default: with the static cache on CUDA) through ``torch.compile``.
    """
    if stop_strings and decode is None:
        raise ValueError("stop strings need decode(ids) -> text")
    device = next(model.parameters()).device
    on_cuda = device.type == "cuda"
    static = on_cuda if static_cache is None else bool(static_cache)
    compile_decode = static and on_cuda if compile_decode is None else bool(compile_decode)
    n = len(prompt_ids)
    uniforms = to_device(row_uniforms(seeds, max_new_tokens), device) if temperature > 0 else None
    input_ids, mask, positions = pad_left(prompt_ids, pad_id, device)
    stop = to_device(torch.tensor(stop_ids or [-1]), device)
    # Per prompt, on the device: every token drawn for it (those after its end are never read), its
    # log-probs, how many tokens it keeps, and whether it has ended.
    tokens_out = torch.full((n, max(max_new_tokens, 1)), pad_id, dtype=torch.long, device=device)
    logprobs_out = torch.zeros(tokens_out.shape, dtype=torch.float32, device=device)
    lengths = torch.zeros(n, dtype=torch.long, device=device)
    finished = torch.zeros(n, dtype=torch.bool, device=device)
    rows = torch.arange(n, device=device)  # prompt of each batch row (rows leave the batch, never the order)
    active = list(range(n))                # the same on the host
    by_string = set()                      # prompts cut at a stop string
    look_every = CPU_CHECK_EVERY if device.type == "cpu" else HOST_CHECK_EVERY

    if static:
        from transformers import StaticCache

        width = input_ids.shape[1] + max_new_tokens
        width = -(-width // STATIC_CACHE_BUCKET) * STATIC_CACHE_BUCKET
        cache = StaticCache(config=model.config, max_cache_len=width)
        # the whole width at once: columns not yet written are hidden by the causal mask
        mask = torch.cat([mask, mask.new_ones((n, width - mask.shape[1]))], dim=1)
    else:
        from transformers import DynamicCache

        cache = DynamicCache()
    step = _decode_step(model, static, compile_decode)

    def cut_stop_strings(drawn):
        """Ends the unfinished prompts whose text so far reaches a stop string."""
        ids, kept, ended = tokens_out[:, :drawn].tolist(), lengths.tolist(), finished.tolist()
        cut = {}
        for row in active:
            if not ended[row]:
                ids_kept, hit = cut_at_stop_strings(ids[row][:kept[row]], decode, stop_strings)
                if hit:
                    cut[row] = len(ids_kept)
        if cut:
            at = torch.tensor(list(cut), device=device)
            lengths[at] = torch.tensor(list(cut.values()), device=device)
            finished[at] = True
            by_string.update(cut)

    # One autocast region for the whole loop: a float32 policy's bf16 weight copies are made once.
    with autocast(device):
        logits = model(input_ids=input_ids, attention_mask=mask[:, :input_ids.shape[1]], position_ids=positions,
                       use_cache=True, logits_to_keep=1, **{cache_argument(model): cache}).logits[:, -1]
        next_pos = positions[:, -1]
        for drawn in range(1, max_new_tokens + 1):
            t = drawn - 1
            tokens = _draw(logits, temperature, top_p, uniforms[rows, t] if uniforms is not None else None)
            tokens_out[rows, t] = tokens
            if return_logprobs:
                logprobs_out[rows, t] = torch.log_softmax(logits.float(), dim=-1).gather(-1, tokens[:, None])[:, 0]
            live = ~finished[rows]
            lengths[rows] += live
            finished[rows] |= live & torch.isin(tokens, stop)
            if drawn == max_new_tokens:
                break
            if drawn % look_every == 0:
                if stop_strings and drawn % STOP_CHECK_EVERY == 0:
                    cut_stop_strings(drawn)
                ended = finished.tolist()  # the look: waits for the device
                keep = [i for i, row in enumerate(active) if not ended[row]]
                if not keep:
                    break
                if not static and len(keep) < len(active):
                    keep_at = torch.tensor(keep, device=device)
                    cache.batch_select_indices(keep_at)
                    active = [active[i] for i in keep]
                    rows, tokens, mask, next_pos = rows[keep_at], tokens[keep_at], mask[keep_at], next_pos[keep_at]
            next_pos = next_pos + 1
            if not static:
                mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
            logits = step(tokens, mask, next_pos, cache)

    kept = lengths.tolist()
    out = [ids[:k] for ids, k in zip(tokens_out.tolist(), kept)]
    out_logprobs = [lp[:k] for lp, k in zip(logprobs_out.tolist(), kept)] if return_logprobs else None
    stops = set(stop_ids or ())
    ended = [row in by_string for row in range(n)]
    for row in range(n):
        if not ended[row]:
            stopped = bool(out[row]) and out[row][-1] in stops
            body = out[row][:-1] if stopped else out[row]
            ids_kept, hit = cut_at_stop_strings(body, decode, stop_strings)
            if hit:  # a stop string before the stop token, or in the last tokens before max_new_tokens
                out[row] = ids_kept
                if return_logprobs:
                    out_logprobs[row] = out_logprobs[row][:len(ids_kept)]
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
            static_cache=DECODE_CACHES[config.decode_cache],
        )
        for (p, k), resp, finished in zip(chunk, responses, ended):
            text = tokenizer.decode(resp[:-1] if resp and resp[-1] in stop_ids else resp, skip_special_tokens=True)
            results[p][k] = Generation(text=text, token_ids=resp, finished=finished)
        if progress is not None:
            progress(min(start + config.batch_size, len(rows)), len(rows))
    return results
