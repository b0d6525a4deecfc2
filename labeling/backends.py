"""Where the labeler's next-token log-probabilities come from. Plain Python, no Django.

Two backends with the same small interface (``render``, ``count_tokens``, ``max_context``,
``label_logprobs``, ``score_probs``, ``generate``):

* :class:`LocalBackend`: a local Hugging Face model. Scoring is the fast path of this package:
  prompts of one call share a long token prefix (preamble + exemplars) and the prompts of one
  *group* (the two orders of a pair, or their chain-of-thought variants) share more (everything up
  to the first response). The common prefix of all prompts is run once (its KV cache is kept
  between calls), each group's common middle once per group, and only the remaining suffixes per
  prompt. On CPU a batch is packed end to end (no padding) and a custom attention implementation
  attends the prefix cache once for all tokens, each group's middle once for all of its rows, and
  merges the blocks by log-sum-exp (no KV cache is copied per row); elsewhere, or for models that
  do not use transformers' attention interface, batches are right-padded with the prefix cache
  repeated per row. Only the last position's hidden state goes through the LM head. The result equals
  scoring every prompt alone (:meth:`LocalBackend.last_logprobs_naive`) up to float rounding.
* :class:`ServerBackend`: any OpenAI-compatible ``/v1/completions`` server that returns token
  log-probabilities (vLLM, llama.cpp server, hosted APIs), with timeouts, retries with backoff, waits
  a ``429``'s ``Retry-After`` asks for, and a concurrency limit.
* :class:`ChatBackend`: the same over ``/v1/chat/completions`` (``logprobs: true``,
  ``top_logprobs``), where today's strong models are served; the prompt goes as chat messages.

Servers return only the top-k alternatives of a token. A label token that is not among them is
never taken as probability 0: it holds at most the smallest returned probability (or what the
returned ones leave of 1, when that is less), and :class:`NextTokenScores` says which labels were
absent and that bound, so the labeler can bound the label and mark it. Every answer's ``usage``
(prompt and completion tokens) is kept with the scores, for cost accounting.
"""
import email.utils
import json
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

SCORE_VALUES = tuple(range(1, 11))


class BackendError(RuntimeError):
    """A backend that cannot be used as configured; the message says why and what to do."""


NEEDS_LOGPROBS = (
    "Labeling reads the probabilities of the label tokens, so it needs a server that returns them: "
    "'logprobs' on /v1/completions, 'logprobs': true with 'top_logprobs' on /v1/chat/completions "
    "(vLLM; llama.cpp's server started with --logits_all true; hosted APIs whose models support logprobs).")


@dataclass
class NextTokenScores:
    """Log-probabilities (full-vocabulary softmax) of each label at the next position."""

    logprobs: list
    mass: float  # total probability of all label tokens: low = the model ignores the format
    n_tokens: int = 0  # prompt tokens (a server's own count where it reports usage)
    completion_tokens: int = 0  # tokens the server generated and bills
    # Top-k servers: labels whose tokens were not among the alternatives (their log-prob above is
    # -inf), the log of the most such a token can hold, and the probability the alternatives left unseen.
    absent: tuple = ()
    absent_bound_logprob: float = -math.inf
    unseen_mass: float = 0.0


def _logsumexp(values):
    values = [v for v in values if v is not None and v != -math.inf]
    if not values:
        return -math.inf
    m = max(values)
    return m + math.log(sum(math.exp(v - m) for v in values))


def score_distribution_from(p_token, p_zero_after_one, p_ten_single):
    """Probabilities of the scores 1..10 from token probabilities, whatever the tokenizer does with 10.

    ``p_token[d]``: P(next token is digit d, with or without a leading space) for d = 1..9, where for
    d = 1 it is a list of (P(token), P("0" follows that token)) per "1"-like token. ``p_ten_single``: P of
    single tokens "10"/" 10" where the vocabulary has them. A "1" followed by "0" is a 10.
    """
    probs = [0.0] * 10
    for p_one, p_zero in p_zero_after_one:
        probs[0] += p_one * (1.0 - p_zero)
        probs[9] += p_one * p_zero
    for d in range(2, 10):
        probs[d - 1] = p_token[d]
    probs[9] += p_ten_single
    return probs


def render_prompt(prompt, chat_tokenizer=None):
    """A LabelPrompt as plain text, or wrapped in ``chat_tokenizer``'s chat template (the user turn
    holds the question; the assistant turn starts with the ending the label follows)."""
    if chat_tokenizer is None:
        return prompt.plain()
    head = chat_tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt.user}], tokenize=False, add_generation_prompt=True)
    return head + prompt.assistant


_BLOCK_ATTENTION = "labeling_shared_blocks"


class _KVBlocks:
    """What one packed forward of the fast path attends to (batch 1: the sequences of a batch are
    laid end to end, so no padding is ever computed).

    ``own``: (start, end) of each sequence in the packed tokens; each attends causally to itself.
    ``prefix``: per layer (k, v) of the shared prefix, seen by every token (never copied).
    ``middle``: per layer (k, v) of the packed middles of a previous forward; ``middle_spans``:
    ((start, end) of a group's tokens here, (start, end) of that group's middle there).
    ``capture``: when a dict, each layer's own (k, v) goes there (the next stage's ``middle``).
    """

    def __init__(self, own, prefix=None, middle=None, middle_spans=(), capture=None, device=None, dtype=None):
        import torch

        self.own, self.prefix, self.middle, self.middle_spans = own, prefix, middle, middle_spans
        self.capture, self.calls = capture, 0
        # Gather indices, built once per forward and used by every layer.
        self.own_index = None if len(own) == 1 else _padded_index(own, device)
        self.middle_index = None
        if middle is not None:
            qi, keep = _padded_index([q for q, _ in middle_spans], device)
            ki, real_keys = _padded_index([k for _, k in middle_spans], device)
            # A huge negative, not -inf: a group without middle gets weight exp(-huge) = 0, not NaN.
            mask = torch.full((ki.numel(),), torch.finfo(dtype).min, dtype=dtype, device=device)
            mask[real_keys] = 0
            self.middle_index = (qi, ki, mask.view(ki.shape)[:, None, None, :], keep)


def _padded_index(spans, device):
    """For spans (start, end) of a packed sequence: an index [spans, longest] gathering each span
    into a padded row (padding repeats the span's last token, or token 0 for an empty span), and
    the positions in the flattened rows of the real tokens, in packed order."""
    import torch

    width = max(1, max(e - a for a, e in spans))
    index, keep = [], []
    for r, (a, e) in enumerate(spans):
        row = list(range(a, e))
        index.append(row + [row[-1] if row else 0] * (width - len(row)))
        keep.extend(r * width + j for j in range(e - a))
    return torch.tensor(index, device=device), torch.tensor(keep, dtype=torch.long, device=device)


def _to(tensor, device):
    """A CPU tensor on ``device`` without waiting for it: a blocking copy to a GPU first waits for all
    the work queued there, so the host could not prepare the next batch meanwhile."""
    return tensor.to(device, non_blocking=True)


def _cache_kwargs(model, cache):
    """``{name: cache}`` for a forward: transformers 5.24 takes it as ``cache`` (``past_key_values``
    still works there, with a deprecation warning), earlier 5.x versions as ``past_key_values``."""
    import inspect

    return {"cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values": cache}


def _returned_cache(output):
    """The KV cache a forward returned (``output.cache`` since transformers 5.24)."""
    return output["cache"] if "cache" in output else output.past_key_values


def _flash(query, key, value, causal=False, mask=None, scale=None):
    """torch's fused CPU attention kernel; it also returns each query's log-sum-exp of scores,
    which lets attention over separate key blocks be merged exactly."""
    import torch

    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(query, key, value, 0.0, causal, attn_mask=mask, scale=scale)


def _block_attention(module, query, key, value, attention_mask=None, scaling=None, dropout=0.0, kv_blocks=None,
                     **kwargs):
    """Causal attention of packed sequences over [shared prefix, their group's middle, themselves].

    Installed (as an attention implementation) only for the fast path's forwards. Each key block
    is attended with the fused kernel and the results are merged by their log-sum-exps (as flash
    attention merges tiles). The prefix is one call for all tokens, with the query heads that share
    a key head folded into one long query: the prefix cache is never copied per sequence or head.
    """
    import torch

    blocks = kv_blocks
    layer = module.layer_idx
    blocks.calls += 1
    if blocks.capture is not None:
        blocks.capture[layer] = (key, value)
    _, heads, t, d = query.shape
    kv_heads = key.shape[1]
    rep = heads // kv_heads  # query head h uses key head h // rep
    if scaling is None:
        scaling = d ** -0.5
    parts = []
    if blocks.prefix is not None:
        kp, vp = blocks.prefix[layer]
        o, lse = _flash(query.reshape(1, kv_heads, rep * t, d), kp, vp, scale=scaling)
        parts.append((o.reshape(1, heads, t, d), lse.reshape(1, heads, t)))
    if blocks.middle is not None:
        # Each group's rows against its own middle: one padded batch call (queries and keys gathered
        # into [groups, ...], padded keys masked, padded queries dropped).
        km, vm = blocks.middle[layer]
        qi, ki, mask, keep = blocks.middle_index
        g, lq = qi.shape
        qg = query[0][:, qi].transpose(0, 1).reshape(g, kv_heads, rep * lq, d)
        o, lse = _flash(qg, km[0][:, ki].transpose(0, 1), vm[0][:, ki].transpose(0, 1), mask=mask, scale=scaling)
        parts.append((o.reshape(g, heads, lq, d).transpose(0, 1).reshape(heads, g * lq, d)[:, keep][None],
                      lse.reshape(g, heads, lq).transpose(0, 1).reshape(heads, g * lq)[:, keep][None]))
    if rep > 1:
        key = key[:, :, None].expand(1, kv_heads, rep, t, d).reshape(1, heads, t, d)
        value = value[:, :, None].expand(1, kv_heads, rep, t, d).reshape(1, heads, t, d)
    if blocks.own_index is None:
        parts.append(_flash(query, key, value, causal=True, scale=scaling))
    else:
        # The sequences against themselves: one padded batch call; padding sits after each
        # sequence's tokens, so the causal mask already hides it from them.
        oi, keep = blocks.own_index
        n, lo = oi.shape
        o, lse = _flash(query[0][:, oi].transpose(0, 1), key[0][:, oi].transpose(0, 1), value[0][:, oi].transpose(0, 1),
                        causal=True, scale=scaling)
        parts.append((o.transpose(0, 1).reshape(heads, n * lo, d)[:, keep][None],
                      lse.transpose(0, 1).reshape(heads, n * lo)[:, keep][None]))
    if len(parts) == 1:
        out = parts[0][0]
    else:
        total = parts[0][1]
        for _, lse in parts[1:]:
            total = torch.logaddexp(total, lse)
        # the log-sum-exps are float32: the merged output goes back to the model's dtype (bf16)
        out = sum(o * (lse - total).exp_()[..., None] for o, lse in parts).to(query.dtype)
    return out.transpose(1, 2).contiguous(), None


def _block_attention_fits(config, device):
    """Whether :func:`_block_attention` computes what the model's own attention does: plain causal
    softmax attention (no sliding window, no score soft-capping, no ALiBi-style biases)."""
    from transformers import AttentionInterface

    if device.type != "cpu":  # the fused kernel with log-sum-exp used here is torch's CPU one
        return False
    if getattr(config, "attn_logit_softcapping", None) or getattr(config, "alibi", False):
        return False
    if getattr(config, "model_type", "") in ("bloom", "falcon", "mpt"):
        return False
    layer_types = getattr(config, "layer_types", None)
    if layer_types and any(t != "full_attention" for t in layer_types):
        return False
    if not layer_types and getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
        return False
    AttentionInterface.register(_BLOCK_ATTENTION, _block_attention)
    return True


# --------------------------------------------------------------------------------------------
# (a) local transformers model
# --------------------------------------------------------------------------------------------
@dataclass
class LocalBackendConfig:
    model_path: str
    dtype: str = "auto"  # auto (float32 on CPU, bfloat16 on GPU), float32, bfloat16, float16
    threads: int = 0  # torch intra-op threads; 0 = leave torch's default
    device: str = "auto"  # auto (cuda when present), cpu, cuda, cuda:1, ...
    chat_template: str = "auto"  # auto (use the tokenizer's when it has one), on, off
    batch_size: int = 8  # groups (pairs) per forward pass
    max_context: int = 0  # 0 = the model's window
    prefix_reuse: bool = True  # False = score each prompt alone (the naive reference)


def _label_token_ids(tokenizer, label):
    """Single tokens that mean ``label`` right after the ending: "1", " 1", SentencePiece "▁1"."""
    ids = []
    for text in (label, " " + label):
        enc = tokenizer.encode(text, add_special_tokens=False)
        if len(enc) == 1 and enc[0] not in ids:
            ids.append(enc[0])
    unk = getattr(tokenizer, "unk_token_id", None)
    for piece in ("▁" + label, "Ġ" + label):
        tid = tokenizer.convert_tokens_to_ids(piece)
        if isinstance(tid, int) and tid != unk and tid >= 0 and tid not in ids and tokenizer.decode([tid]).strip() == label:
            ids.append(tid)
    return ids


class LocalBackend:
    kind = "local"

    def __init__(self, config: LocalBackendConfig):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from evalsite.modelzoo import is_hf_folder

        self.config = config
        path = Path(config.model_path)
        if not path.is_dir():
            raise BackendError(f"model folder {path} does not exist")
        if not is_hf_folder(path):
            raise BackendError(f"{path} is not a Hugging Face model folder (it needs config.json and *.safetensors)")
        if config.threads:
            torch.set_num_threads(int(config.threads))
        device = config.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        dtype = config.dtype
        if dtype == "auto":
            dtype = "bfloat16" if self.device.type == "cuda" else "float32"
        if dtype not in ("float32", "bfloat16", "float16"):
            raise BackendError(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16")
        self.dtype = getattr(torch, dtype)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        try:  # torch's fused attention kernels; the fast path's own CPU attention replaces it per forward
            self.model = AutoModelForCausalLM.from_pretrained(path, dtype=self.dtype, attn_implementation="sdpa")
        except ValueError:  # an architecture without it: its own attention
            self.model = AutoModelForCausalLM.from_pretrained(path, dtype=self.dtype)
        self.model.to(self.device).eval()
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = self.tokenizer.eos_token_id or 0
        has_template = bool(getattr(self.tokenizer, "chat_template", None))
        if config.chat_template == "on" and not has_template:
            raise BackendError(f"chat_template is 'on' but the tokenizer in {path} has no chat template")
        self.uses_chat_template = has_template and config.chat_template != "off"
        window = getattr(self.model.config, "max_position_embeddings", None) or getattr(self.model.config, "n_positions", 2048)
        self.max_context = min(window, config.max_context) if config.max_context else window
        self._label_ids = {}
        self._prefix = None  # (token tuple, [(k, v) per layer])
        self._lock = threading.Lock()
        self.name = path.name
        self.forward_tokens = 0  # tokens run through the model, padding included
        self.forward_flops = 0.0  # matmul FLOPs of those forwards (estimate, for the benchmark)
        cfg = self.model.config
        emb_in, emb_out = self.model.get_input_embeddings().weight, self.model.get_output_embeddings().weight
        total = sum(p.numel() for p in self.model.parameters())  # a tied head is counted once
        self._dense_params = total - emb_in.numel() - (0 if emb_out is emb_in else emb_out.numel())
        self._attn_dim = (getattr(cfg, "num_attention_heads", None) or cfg.n_head) * (
            getattr(cfg, "head_dim", None) or cfg.hidden_size // (getattr(cfg, "num_attention_heads", None) or cfg.n_head))
        self._layers = getattr(cfg, "num_hidden_layers", None) or cfg.n_layer
        self._block_attention = _block_attention_fits(cfg, self.device)

    # ---- text -------------------------------------------------------------------------------
    def render(self, prompt):
        """The exact text the model sees for a :class:`labeling.prompts.LabelPrompt`."""
        return render_prompt(prompt, self.tokenizer if self.uses_chat_template else None)

    def encode(self, text):
        # Chat-rendered text already holds its special tokens; plain text gets the tokenizer's usual ones.
        return self.tokenizer.encode(text, add_special_tokens=not self.uses_chat_template)

    def count_tokens(self, text):
        return len(self.encode(text))

    def label_ids(self, label):
        if label not in self._label_ids:
            ids = _label_token_ids(self.tokenizer, label)
            if not ids:
                raise BackendError(f"the tokenizer has no single token for the label {label!r}")
            self._label_ids[label] = ids
        return self._label_ids[label]

    def _count(self, rows, q_len, past_len, head_rows=0):
        """Add the matmul FLOPs of a forward: dense layers, attention scores and values, LM head."""
        tokens = rows * q_len
        self.forward_tokens += tokens
        attn = 4 * self._layers * self._attn_dim * tokens * (past_len + (q_len + 1) / 2)
        head = 2 * self.model.get_output_embeddings().weight.numel() * head_rows
        self.forward_flops += 2 * self._dense_params * tokens + attn + head

    # ---- the scoring primitive --------------------------------------------------------------
    def last_logprobs_naive(self, seqs):
        """Reference: each sequence alone, as a careful user would score it: one forward pass with
        the LM head at the last position only (``logits_to_keep=1``), no batching, no reuse."""
        import torch

        out = []
        with torch.inference_mode():
            for seq in seqs:
                ids = torch.tensor([seq], device=self.device)
                logits = self.model(input_ids=ids, logits_to_keep=1).logits[0, -1].float()
                self._count(1, len(seq), 0, head_rows=1)
                out.append(torch.log_softmax(logits, -1).cpu())
        return torch.stack(out) if out else torch.empty(0)

    def last_logprobs(self, seqs, groups=None):
        """Next-token log-probabilities after each sequence, sharing computation (module docstring).

        ``groups``: lists of indices into ``seqs`` whose sequences share a long middle (e.g. the two
        orders of a pair). Returns a float32 tensor [len(seqs), vocab] on the CPU.
        """
        import torch

        if not self.config.prefix_reuse:
            return self.last_logprobs_naive(seqs)
        if not seqs:
            return torch.empty(0)
        if any(len(s) == 0 for s in seqs):
            raise BackendError("cannot score an empty prompt")
        groups = groups or [[i] for i in range(len(seqs))]
        with self._lock, torch.inference_mode():
            prefix_len, prefix_kv = self._shared_prefix(seqs)
            # filled on the device and copied to the CPU once: a copy waits for the device to finish
            out = torch.empty(len(seqs), self._vocab_size(), device=self.device)
            middles = []
            for g in groups:
                members = [seqs[i] for i in g]
                m = _common_prefix_len(members, start=prefix_len)
                m = min(m, min(len(s) for s in members) - 1) - prefix_len  # each keeps >= 1 own token
                middles.append(max(0, m))
            # Similar lengths together: less padding.
            order = sorted(range(len(groups)), key=lambda j: (middles[j], max(len(seqs[i]) for i in groups[j])))
            bs = max(1, int(self.config.batch_size))
            for start in range(0, len(order), bs):
                batch = [order[j] for j in range(start, min(start + bs, len(order)))]
                args = (seqs, [groups[j] for j in batch], [middles[j] for j in batch], prefix_len, prefix_kv, out)
                if not (self._block_attention and self._run_groups_blocks(*args)):
                    self._run_groups(*args)
        return out.cpu()

    def _vocab_size(self):
        return self.model.get_output_embeddings().weight.shape[0]

    def _shared_prefix(self, seqs):
        """Length and KV cache of the prefix shared by all sequences (reused across calls)."""
        import torch

        limit = min(len(s) for s in seqs) - 1
        if self._prefix is not None:
            key = self._prefix[0]
            n = len(key)
            if n <= limit and all(tuple(s[:n]) == key for s in seqs):
                return n, self._prefix[1]
        n = min(_common_prefix_len(seqs), limit)
        if n < 8:  # not worth a cache
            return 0, None
        ids = _to(torch.tensor([seqs[0][:n]]), self.device)
        out = self.model(input_ids=ids, use_cache=True, logits_to_keep=1)
        self._count(1, n, 0)
        kv = [(k, v) for k, v, *_ in _returned_cache(out)]
        self._prefix = (tuple(seqs[0][:n]), kv)
        return n, kv

    def _cache(self, kv, index=None, rows=None):
        """A DynamicCache holding rows ``index`` of ``kv`` (or its single row repeated ``rows`` times).

        The tensors are put in place directly: building the cache through ``update`` would copy
        them once more before the forward pass concatenates (and copies) them anyway.
        """
        from transformers import DynamicCache

        def pick(t):
            return t.expand(rows, *t.shape[1:]) if index is None else t.index_select(0, index)

        cache = DynamicCache(config=self.model.config)
        if len(cache.layers) != len(kv) or type(cache.layers[0]).__name__ != "DynamicLayer":
            return DynamicCache(ddp_cache_data=[(pick(k), pick(v)) for k, v in kv], config=self.model.config)
        for layer, (k, v) in zip(cache.layers, kv):
            layer.lazy_initialization(k, v)
            layer.keys, layer.values = pick(k), pick(v)
        return cache

    def _blocks_forward(self, blocks, tokens, positions):
        """One packed forward of the base model with :func:`_block_attention` (None: the model does
        not route its attention through the interface; the caller falls back to padded batches)."""
        import torch

        config = self.model.config
        before = config._attn_implementation
        config._attn_implementation = _BLOCK_ATTENTION
        try:
            res = self.model.base_model(input_ids=torch.tensor([tokens], device=self.device),
                                        position_ids=torch.tensor([positions], device=self.device),
                                        use_cache=False, kv_blocks=blocks)
        finally:
            config._attn_implementation = before
        if blocks.calls != self._layers:
            self._block_attention = False
            return None
        return res

    def _run_groups_blocks(self, seqs, groups, middles, prefix_len, prefix_kv, out):
        """:meth:`_run_groups` packed, with :func:`_block_attention`: no padding, no per-row KV
        copies; the prefix cache is attended once for the whole batch, each group's middle once for
        all of its rows. False when the model turns out not to use the attention interface."""
        import torch

        dev = self.device
        tokens, positions, own, mid_kv = [], [], [], []
        for j, g in enumerate(groups):
            start, m = len(tokens), middles[j]
            tokens += seqs[g[0]][prefix_len:prefix_len + m]
            positions += range(prefix_len, prefix_len + m)
            mid_kv.append((start, len(tokens)))
            if m:
                own.append((start, len(tokens)))
                self._count(1, m, prefix_len)
        middle = None
        if tokens:
            blocks = _KVBlocks(own, prefix=prefix_kv, capture={}, device=dev, dtype=self.dtype)
            if not self._blocks_forward(blocks, tokens, positions):
                return False
            middle = [blocks.capture[i] for i in range(self._layers)]
        tokens, positions, own, spans, last, targets = [], [], [], [], [], []
        for j, g in enumerate(groups):
            group_start, at = len(tokens), prefix_len + middles[j]
            for i in g:
                suffix = seqs[i][at:]
                own.append((len(tokens), len(tokens) + len(suffix)))
                tokens += suffix
                positions += range(at, at + len(suffix))
                last.append(len(tokens) - 1)
                targets.append(i)
                self._count(1, len(suffix), at, head_rows=1)
            spans.append(((group_start, len(tokens)), mid_kv[j]))
        blocks = _KVBlocks(own, prefix=prefix_kv, middle=middle, middle_spans=spans, device=dev, dtype=self.dtype)
        res = self._blocks_forward(blocks, tokens, positions)
        if not res:
            return False
        self._head_into(out, res.last_hidden_state[0, torch.tensor(last, device=dev)], targets)
        return True

    def _head_into(self, out, hidden, indices):
        import torch

        logits = self.model.get_output_embeddings()(hidden).float()
        softcap = getattr(self.model.config, "final_logit_softcapping", None)
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        out[_to(torch.tensor(indices), out.device)] = torch.log_softmax(logits, -1)

    def _run_groups(self, seqs, groups, middles, prefix_len, prefix_kv, out):
        import torch

        dev = self.device
        base = self.model.base_model
        n_groups = len(groups)
        mid_max = max(middles)
        past = None
        past_mask = torch.ones(n_groups, prefix_len, dtype=torch.long, device=dev)
        if prefix_kv is not None:
            past = self._cache(prefix_kv, rows=n_groups)
        if mid_max > 0:
            ids = torch.full((n_groups, mid_max), self.pad_id, dtype=torch.long)
            mid_mask = torch.zeros(n_groups, mid_max, dtype=torch.long)
            for j, g in enumerate(groups):
                m = middles[j]
                ids[j, :m] = torch.tensor(seqs[g[0]][prefix_len:prefix_len + m])
                mid_mask[j, :m] = 1
            mask = torch.cat([past_mask, _to(mid_mask, dev)], 1)
            pos = (prefix_len + torch.arange(mid_max, device=dev)).expand(n_groups, -1)
            res = base(input_ids=_to(ids, dev), attention_mask=mask, position_ids=pos, use_cache=True,
                       **_cache_kwargs(base, past))
            self._count(n_groups, mid_max, prefix_len)
            past, past_mask = _returned_cache(res), mask
        # The suffixes: one row per sequence, the group's cache rows repeated.
        rows = [(j, i) for j, g in enumerate(groups) for i in g]
        index = _to(torch.tensor([j for j, _ in rows], dtype=torch.long), dev)
        suffixes = [seqs[i][prefix_len + middles[j]:] for j, i in rows]
        suf_max = max(len(s) for s in suffixes)
        ids = torch.full((len(rows), suf_max), self.pad_id, dtype=torch.long)
        suf_mask = torch.zeros(len(rows), suf_max, dtype=torch.long)
        for r, s in enumerate(suffixes):
            ids[r, :len(s)] = torch.tensor(s)
            suf_mask[r, :len(s)] = 1
        starts = _to(torch.tensor([prefix_len + middles[j] for j, _ in rows]), dev)
        pos = starts[:, None] + torch.arange(suf_max, device=dev)[None, :]
        if past is not None:
            cache_layers = [(k, v) for k, v, *_ in past]
            past = self._cache(cache_layers, index)
            mask = torch.cat([past_mask.index_select(0, index), _to(suf_mask, dev)], 1)
        else:
            mask = _to(suf_mask, dev)
        res = base(input_ids=_to(ids, dev), attention_mask=mask, position_ids=pos, use_cache=False,
                   **_cache_kwargs(base, past))
        self._count(len(rows), suf_max, prefix_len + mid_max, head_rows=len(rows))
        last = _to(torch.tensor([len(s) - 1 for s in suffixes]), dev)
        self._head_into(out, res.last_hidden_state[torch.arange(len(rows), device=dev), last], [i for _, i in rows])

    # ---- what the labeler asks --------------------------------------------------------------
    def label_logprobs(self, texts, labels=("1", "2"), groups=None):
        seqs = [self.encode(t) for t in texts]
        too_long = [len(s) for s in seqs if len(s) > self.max_context]
        if too_long:
            raise BackendError(f"a prompt has {max(too_long)} tokens, more than the model's window of {self.max_context}")
        lp = self.last_logprobs(seqs, groups)
        ids = [self.label_ids(lab) for lab in labels]
        result = []
        for row, seq in zip(lp, seqs):
            per_label = [float(torch_logsumexp(row, i)) for i in ids]
            mass = sum(math.exp(v) for v in per_label)
            result.append(NextTokenScores(per_label, mass, len(seq)))
        return result

    def score_probs(self, texts):
        """P(score = 1..10) after each prompt (unnormalised) and the mass on score tokens."""
        ones = self.label_ids("1")
        zeros = self.label_ids("0")
        tens = [i for i in _label_token_ids(self.tokenizer, "10")]
        seqs, groups, index = [], [], []
        for t in texts:
            s = self.encode(t)
            g = [len(seqs)] + [len(seqs) + 1 + k for k in range(len(ones))]
            seqs.append(s)
            seqs.extend(s + [o] for o in ones)
            groups.append(g)
            index.append(g)
        lp = self.last_logprobs(seqs, groups)
        out = []
        for g in index:
            first = lp[g[0]].exp()
            p_digit = {d: float(sum(first[i] for i in self.label_ids(str(d)))) for d in range(2, 10)}
            pairs = [(float(first[o]), float(lp[g[1 + k]].exp()[zeros].sum())) for k, o in enumerate(ones)]
            probs = score_distribution_from(p_digit, pairs, float(sum(first[i] for i in tens)))
            out.append(NextTokenScores(probs, sum(probs), len(seqs[g[0]])))
        return out

    def generate(self, texts, max_new_tokens, temperature=0.0, n=1, seed=0):
        """Continuations of each text: greedy when temperature is 0, else n samples. Left padding."""
        import torch

        seqs = [self.encode(t) for t in texts]
        results = []
        bs = max(1, int(self.config.batch_size))
        with self._lock, torch.inference_mode():
            for start in range(0, len(seqs), bs):
                batch = seqs[start:start + bs]
                width = max(len(s) for s in batch)
                ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
                mask = torch.zeros(len(batch), width, dtype=torch.long)
                for r, s in enumerate(batch):
                    ids[r, width - len(s):] = torch.tensor(s)
                    mask[r, width - len(s):] = 1
                kwargs = dict(max_new_tokens=int(max_new_tokens), pad_token_id=self.pad_id,
                              num_return_sequences=int(n))
                if temperature and temperature > 0:
                    torch.manual_seed(int(seed) + start)
                    kwargs.update(do_sample=True, temperature=float(temperature), top_p=1.0, top_k=0)
                else:
                    kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
                gen = self.model.generate(input_ids=ids.to(self.device), attention_mask=mask.to(self.device), **kwargs)
                new = gen[:, width:].cpu()
                self._count(len(batch) * n, width + new.shape[1], 0, head_rows=new.numel())
                texts_out = self.tokenizer.batch_decode(new, skip_special_tokens=True)
                for r in range(len(batch)):
                    results.append(texts_out[r * n:(r + 1) * n])
        return results


def torch_logsumexp(row, ids):
    import torch

    return torch.logsumexp(row[ids], 0)


def _common_prefix_len(seqs, start=0):
    if not seqs:
        return 0
    first = seqs[0]
    n = min(len(s) for s in seqs)
    i = start
    while i < n and all(s[i] == first[i] for s in seqs):
        i += 1
    return i


# --------------------------------------------------------------------------------------------
# (b) OpenAI-compatible completions server
# --------------------------------------------------------------------------------------------
@dataclass
class ServerBackendConfig:
    url: str  # e.g. http://localhost:8000/v1 (vLLM), http://localhost:8080/v1 (llama.cpp server)
    model: str = ""  # model name the server expects ("" = the server's default)
    # The key itself (kept out of repr): the caller decides where it may come from, never this module.
    api_key: str = field(default="", repr=False)
    timeout_s: float = 60.0
    max_retries: int = 3
    backoff_s: float = 0.5  # waits backoff, 2*backoff, 4*backoff, ... between retries
    concurrency: int = 4  # requests in flight at once
    top_logprobs: int = 20  # alternatives per position to ask for (OpenAI allows 5, vLLM 20 by default)
    tokenizer_path: str = ""  # optional local tokenizer: chat template and exact token counts
    chat_template: str = "auto"
    max_context: int = 4096
    extra_headers: dict = field(default_factory=dict)
    rate_limit_retries: int = 8  # 429 answers waited out, besides max_retries for failures
    max_retry_after_s: float = 120.0  # the longest Retry-After wait honoured


class ServerBackend:
    kind = "server"

    def __init__(self, config: ServerBackendConfig):
        import requests

        self.config = config
        url = config.url.strip().rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise BackendError(f"server URL {config.url!r} must start with http:// or https://")
        if not url.endswith("/completions"):
            url += "/completions" if url.endswith("/v1") else "/v1/completions"
        self.endpoint = url
        self.session = requests.Session()
        self.session.headers["Content-Type"] = "application/json"
        if config.api_key:
            self.session.headers["Authorization"] = f"Bearer {config.api_key}"
        self.session.headers.update(config.extra_headers or {})
        self.tokenizer = None
        self.uses_chat_template = False
        if config.tokenizer_path:
            from transformers import AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(config.tokenizer_path)
            self.uses_chat_template = bool(getattr(self.tokenizer, "chat_template", None)) and config.chat_template != "off"
        self.max_context = config.max_context
        self.name = config.model or self.endpoint
        self.requests_sent = 0
        self.prompt_tokens_used = 0  # from every answer's usage
        self.completion_tokens_used = 0
        self._usage_lock = threading.Lock()

    def render(self, prompt):
        return render_prompt(prompt, self.tokenizer if self.uses_chat_template else None)

    def count_tokens(self, text):
        if self.tokenizer is not None:
            return len(self.tokenizer.encode(text, add_special_tokens=False))
        return math.ceil(len(text) / 3.5)  # rough: without a tokenizer we can only estimate

    # ---- HTTP ---------------------------------------------------------------------------
    def _post(self, payload):
        """POST ``payload`` to the endpoint; the answer's JSON. Connection errors, timeouts and 5xx are
        retried ``max_retries`` times with backoff; a ``429`` waits what its ``Retry-After`` asks (at
        most ``max_retry_after_s``), up to ``rate_limit_retries`` times, without using up those retries."""
        import requests

        if self.config.model:
            payload = {"model": self.config.model, **payload}
        body = json.dumps(payload)
        delay = self.config.backoff_s
        failures = rate_limited = 0
        last = None
        while True:
            wait = None
            try:
                with self._usage_lock:
                    self.requests_sent += 1
                r = self.session.post(self.endpoint, data=body, timeout=self.config.timeout_s)
            except (requests.ConnectionError, requests.Timeout) as e:
                last = f"{type(e).__name__}: {e}"
            else:
                if r.status_code == 200:
                    try:
                        data = r.json()
                    except ValueError:
                        raise BackendError(f"the server at {self.endpoint} answered with something that is not JSON: "
                                           f"{r.text[:200]!r}") from None
                    self._count_usage(data)
                    return data
                if "logprobs" in payload and r.status_code in (400, 422, 500) and "logprob" in r.text.lower():
                    # Retrying will not help: this server (or model) cannot give what labeling reads.
                    raise BackendError(f"the server at {self.endpoint} refused to return token log-probabilities "
                                       f"(HTTP {r.status_code}: {r.text[:300]}). {NEEDS_LOGPROBS}")
                retry_after = _retry_after_seconds(r.headers.get("Retry-After"))
                if r.status_code == 429 and rate_limited < self.config.rate_limit_retries:
                    rate_limited += 1
                    time.sleep(min(self.config.max_retry_after_s, delay if retry_after is None else retry_after))
                    continue
                if r.status_code in (408, 409, 425, 429) or r.status_code >= 500:
                    last = f"HTTP {r.status_code}: {r.text[:300]}"
                    wait = retry_after
                else:
                    raise BackendError(f"the server at {self.endpoint} refused the request (HTTP {r.status_code}): "
                                       f"{r.text[:500]}")
            if failures >= self.config.max_retries:
                break
            failures += 1
            time.sleep(min(self.config.max_retry_after_s, max(delay, wait or 0.0)))
            delay *= 2
        limited = f", {rate_limited} rate-limit waits" if rate_limited else ""
        raise BackendError(f"the server at {self.endpoint} did not answer after {failures + 1} "
                           f"attempts{limited} ({last})")

    def _count_usage(self, data):
        prompt, completion = usage_of(data)
        with self._usage_lock:
            self.prompt_tokens_used += prompt
            self.completion_tokens_used += completion

    def _map(self, fn, items):
        if len(items) <= 1 or self.config.concurrency <= 1:
            return [fn(x) for x in items]
        with ThreadPoolExecutor(max_workers=int(self.config.concurrency)) as pool:
            return list(pool.map(fn, items))

    def top_logprobs(self, text, k=None):
        """{token text: log-prob} of the next token's most likely alternatives."""
        return dict(self._alternatives(text, k)[0])

    def _alternatives(self, text, k=None):
        """([(token text, log-prob)] of the next token's top ``k`` alternatives, the answer's usage)."""
        data = self._post({"prompt": text, "max_tokens": 1, "temperature": 0.0,
                           "logprobs": int(k or self.config.top_logprobs), "echo": False})
        try:
            top = data["choices"][0]["logprobs"]["top_logprobs"][0]
        except (KeyError, IndexError, TypeError):
            top = None
        if not top:
            raise BackendError(f"the server at {self.endpoint} returned no token log-probabilities. {NEEDS_LOGPROBS}")
        if isinstance(top, list):  # some servers send [{"token":..., "logprob":...}]
            pairs = [(str(d["token"]), float(d["logprob"])) for d in top]
        else:
            pairs = [(str(t), float(v)) for t, v in top.items()]
        return pairs, usage_of(data)

    @staticmethod
    def _label_logprob(top, label):
        return _logsumexp([lp for tok, lp in top.items() if tok.strip().lstrip("▁Ġ") == label])

    def label_logprobs(self, texts, labels=("1", "2"), groups=None, top_logprobs=None):
        """Label log-probs from each prompt's top alternatives (``top_logprobs``: ask for that many)."""
        def one(text):
            top, (prompt, completion) = self._alternatives(text, top_logprobs)
            return scores_from_alternatives(top, labels, prompt or self.count_tokens(text), completion)

        return self._map(one, list(texts))

    def score_probs(self, texts):
        def one(text):
            pairs_top, (prompt, completion) = self._alternatives(text)
            top = dict(pairs_top)
            p = {d: math.exp(self._label_logprob(top, str(d))) for d in range(2, 10)}
            pairs = []
            for tok, lp in top.items():
                if tok.strip() == "1" and math.exp(lp) > 1e-6:
                    nxt, (more_prompt, more_completion) = self._alternatives(text + tok)
                    prompt, completion = prompt + more_prompt, completion + more_completion
                    nxt = dict(nxt)
                    # "0" glued to the "1" makes a 10; " 0" would not.
                    pairs.append((math.exp(lp), math.exp(nxt["0"]) if "0" in nxt else 0.0))
            ten = sum(math.exp(lp) for tok, lp in top.items() if tok.strip() == "10")
            probs = score_distribution_from(p, pairs, ten)
            return NextTokenScores(probs, sum(probs), prompt or self.count_tokens(text), completion,
                                   unseen_mass=_unseen_mass(pairs_top))

        return self._map(one, list(texts))

    def generate(self, texts, max_new_tokens, temperature=0.0, n=1, seed=0):
        def one(text):
            data = self._post({"prompt": text, "max_tokens": int(max_new_tokens), "temperature": float(temperature),
                               "n": int(n), "seed": int(seed)})
            return Completions([c.get("text", "") for c in data.get("choices", [])][:n], *usage_of(data))

        return self._map(one, list(texts))


# --------------------------------------------------------------------------------------------
# what the server backends share: usage, rate limits, top-k alternatives
# --------------------------------------------------------------------------------------------
class Completions(list):
    """The texts generated for one prompt, with the tokens the server counted for them."""

    def __init__(self, texts=(), prompt_tokens=0, completion_tokens=0):
        super().__init__(texts)
        self.prompt_tokens, self.completion_tokens = prompt_tokens, completion_tokens


def usage_of(data):
    """(prompt tokens, completion tokens) from an answer's ``usage``; (0, 0) where it has none."""
    usage = data.get("usage") if isinstance(data, dict) else None
    if not isinstance(usage, dict):
        return 0, 0

    def count(name):
        value = usage.get(name)
        return int(value) if isinstance(value, (int, float)) and math.isfinite(value) and value >= 0 else 0

    return count("prompt_tokens"), count("completion_tokens")


def _retry_after_seconds(value):
    """Seconds a ``Retry-After`` header asks to wait (a number of seconds or an HTTP date); None if absent
    or unreadable."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _label_text(token):
    return token.strip().lstrip("▁Ġ")


def _unseen_mass(alternatives):
    """The probability the returned alternatives leave unaccounted for."""
    return max(0.0, 1.0 - sum(math.exp(lp) for _, lp in alternatives))


def scores_from_alternatives(alternatives, labels, n_tokens=0, completion_tokens=0):
    """:class:`NextTokenScores` of ``labels`` from a server's top-k ``alternatives`` [(token, log-prob)].

    A label none of whose tokens ("1", " 1", ...) was returned is *absent*: its log-prob stays -inf
    here, and ``absent_bound_logprob`` is the most it can be: a single token outside the top k has
    at most the smallest returned probability, and never more than the alternatives leave unseen.
    """
    per_label = [_logsumexp([lp for tok, lp in alternatives if _label_text(tok) == lab]) for lab in labels]
    mass = sum(math.exp(v) for v in per_label if v != -math.inf)
    absent = tuple(lab for lab, v in zip(labels, per_label) if v == -math.inf)
    unseen = _unseen_mass(alternatives)
    bound = -math.inf
    if absent and alternatives:
        bound = min(min(lp for _, lp in alternatives), math.log(unseen) if unseen > 0 else -math.inf)
    elif absent:
        bound = 0.0  # nothing returned: the label may hold anything
    return NextTokenScores(per_label, mass, n_tokens, completion_tokens, absent=absent, absent_bound_logprob=bound,
                           unseen_mass=unseen)


# --------------------------------------------------------------------------------------------
# (c) OpenAI-compatible chat completions server
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ChatPrompt:
    """A prompt laid out as chat messages: ((role, content), ...)."""

    messages: tuple

    def payload(self):
        return [{"role": role, "content": content} for role, content in self.messages]

    @classmethod
    def from_text(cls, text):
        return cls((("user", text),))


@dataclass
class ChatBackendConfig(ServerBackendConfig):
    """``url``: the API base (``https://api.openai.com/v1``, ``http://localhost:8000/v1``); the rest as
    for :class:`ServerBackendConfig`. ``top_logprobs``: hosted chat APIs allow at most 20.
    ``tokenizer_path``: a local tokenizer with the model's chat template, for exact token counts
    (without one they are estimated from characters)."""

    preamble_role: str = "system"  # the preamble as the system message, or as user text ("user")
    exemplars: str = "turns"  # exemplars as earlier user/assistant turns, or inline in the user text
    max_context: int = 8192


class ChatBackend(ServerBackend):
    """The labeler over ``/v1/chat/completions``: the answer's first token is read from the
    ``top_logprobs`` of ``choices[0].logprobs.content[0]``.

    A chat API cannot start the model's reply, so the ending (``Preferred Summary=``) closes the
    last user message (:func:`labeling.prompts.chat_messages`). The direct scorer asks for two
    tokens: a 10 is "10" as one token, or "1" then "0" where the reply starts with "1"; when it
    does not, P("0" after "1") is unknown and that share of the "1" is counted in ``unseen_mass``.
    """

    kind = "chat"

    def __init__(self, config: ChatBackendConfig):
        from .prompts import EXEMPLAR_LAYOUTS, PREAMBLE_ROLES

        if config.preamble_role not in PREAMBLE_ROLES:
            raise BackendError(f"preamble role {config.preamble_role!r}: use one of {', '.join(PREAMBLE_ROLES)}")
        if config.exemplars not in EXEMPLAR_LAYOUTS:
            raise BackendError(f"exemplar layout {config.exemplars!r}: use one of {', '.join(EXEMPLAR_LAYOUTS)}")
        super().__init__(config)
        url = config.url.strip().rstrip("/")
        for tail in ("/chat/completions", "/completions"):
            if url.endswith(tail):
                url = url[: -len(tail)]
        self.endpoint = url + ("/chat/completions" if url.endswith("/v1") else "/v1/chat/completions")
        self.name = config.model or self.endpoint
        self.uses_chat_template = True

    # ---- messages -------------------------------------------------------------------------
    def render(self, prompt):
        from .prompts import chat_messages

        messages = chat_messages(prompt, self.config.preamble_role, self.config.exemplars)
        return ChatPrompt(tuple((m["role"], m["content"]) for m in messages))

    def count_tokens(self, text):
        if not isinstance(text, ChatPrompt):
            return super().count_tokens(text)
        if self.tokenizer is not None and getattr(self.tokenizer, "chat_template", None):
            rendered = self.tokenizer.apply_chat_template(text.payload(), tokenize=False, add_generation_prompt=True)
            return len(self.tokenizer.encode(rendered, add_special_tokens=False))  # the template holds its own
        # Each message costs a few tokens of framing besides its text.
        return sum(super(ChatBackend, self).count_tokens(c) + 4 for _, c in text.messages) + 3

    # ---- HTTP -----------------------------------------------------------------------------
    def _chat(self, prompt, **fields):
        if not isinstance(prompt, ChatPrompt):
            prompt = ChatPrompt.from_text(str(prompt))
        return self._post({"messages": prompt.payload(), **fields})

    def _reply_alternatives(self, prompt, positions=1, k=None):
        """The top alternatives at each of the reply's first ``positions`` tokens (greedy reply):
        ([[(token, log-prob)], ...], [token chosen at each position], usage)."""
        data = self._chat(prompt, max_tokens=int(positions), temperature=0.0, logprobs=True,
                          top_logprobs=int(k or self.config.top_logprobs))
        try:
            content = data["choices"][0]["logprobs"]["content"]
            tops = [[(str(a["token"]), float(a["logprob"])) for a in entry["top_logprobs"]] for entry in content]
            chosen = [str(entry["token"]) for entry in content]
        except (KeyError, IndexError, TypeError, ValueError):
            tops = chosen = None
        if not tops or not tops[0]:
            raise BackendError(f"the chat server at {self.endpoint} returned no token log-probabilities. "
                               f"{NEEDS_LOGPROBS}")
        return tops, chosen, usage_of(data)

    def top_logprobs(self, text, k=None):
        """{token text: log-prob} of the reply's first token (``text``: a ChatPrompt or a user message)."""
        return dict(self._reply_alternatives(text, k=k)[0][0])

    # ---- what the labeler asks --------------------------------------------------------------
    def label_logprobs(self, texts, labels=("1", "2"), groups=None, top_logprobs=None):
        def one(prompt):
            tops, _, (n_prompt, n_completion) = self._reply_alternatives(prompt, k=top_logprobs)
            return scores_from_alternatives(tops[0], labels, n_prompt or self.count_tokens(prompt), n_completion)

        return self._map(one, list(texts))

    def score_probs(self, texts):
        def one(prompt):
            tops, chosen, (n_prompt, n_completion) = self._reply_alternatives(prompt, positions=2)
            first = tops[0]
            p = {d: math.exp(_logsumexp([lp for tok, lp in first if _label_text(tok) == str(d)])) for d in range(2, 10)}
            p_one = math.exp(_logsumexp([lp for tok, lp in first if _label_text(tok) == "1"]))
            ten = sum(math.exp(lp) for tok, lp in first if _label_text(tok) == "10")
            unseen = _unseen_mass(first)
            if p_one and _label_text(chosen[0]) == "1" and len(tops) > 1:
                # The reply began with "1": its next token says how often that "1" is a 10.
                p_zero = math.exp(_logsumexp([lp for tok, lp in tops[1] if tok == "0"]))
                pairs = [(p_one, p_zero)]
            else:
                pairs = [(p_one, 0.0)]
                unseen += p_one  # 1 or 10: not known without a reply that starts with "1"
            probs = score_distribution_from(p, pairs, ten)
            return NextTokenScores(probs, sum(probs), n_prompt or self.count_tokens(prompt), n_completion,
                                   unseen_mass=min(1.0, unseen))

        return self._map(one, list(texts))

    def generate(self, texts, max_new_tokens, temperature=0.0, n=1, seed=0):
        """Replies to each prompt; servers that give fewer than ``n`` choices are asked again."""
        def one(prompt):
            replies, n_prompt, n_completion = [], 0, 0
            while len(replies) < n:
                data = self._chat(prompt, max_tokens=int(max_new_tokens), temperature=float(temperature),
                                  n=int(n - len(replies)), seed=int(seed) + len(replies))
                choices = [(c.get("message") or {}).get("content") or "" for c in data.get("choices") or []]
                if not choices:
                    raise BackendError(f"the chat server at {self.endpoint} answered without any choices")
                replies += choices
                used = usage_of(data)
                n_prompt, n_completion = n_prompt + used[0], n_completion + used[1]
            return Completions(replies[:n], n_prompt, n_completion)

        return self._map(one, list(texts))


class LocalChatLayoutBackend(LocalBackend):
    """A local model reading each prompt laid out as a :class:`ChatBackend` sends it: the messages
    of :func:`labeling.prompts.chat_messages` in the tokenizer's chat template, the reply not started.
    What an OpenAI-compatible chat server running the same model computes; the reference the chat
    backend is checked against."""

    def __init__(self, config: LocalBackendConfig, preamble_role="system", exemplars="turns"):
        super().__init__(config)
        if not getattr(self.tokenizer, "chat_template", None):
            raise BackendError(f"the tokenizer in {config.model_path} has no chat template")
        self.uses_chat_template = True
        self.preamble_role, self.exemplars = preamble_role, exemplars

    def render(self, prompt):
        from .prompts import chat_messages

        return self.tokenizer.apply_chat_template(chat_messages(prompt, self.preamble_role, self.exemplars),
                                                  tokenize=False, add_generation_prompt=True)


class LocalTokenCounter:
    """What a dry run needs of a local backend (render and count tokens), without loading the weights."""

    kind = "local"

    def __init__(self, config: LocalBackendConfig):
        from transformers import AutoConfig, AutoTokenizer

        from evalsite.modelzoo import is_hf_folder

        path = Path(config.model_path)
        if not is_hf_folder(path):
            raise BackendError(f"{path} is not a Hugging Face model folder (it needs config.json and *.safetensors)")
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.uses_chat_template = bool(getattr(self.tokenizer, "chat_template", None)) and config.chat_template != "off"
        model_config = AutoConfig.from_pretrained(path)
        window = getattr(model_config, "max_position_embeddings", None) or getattr(model_config, "n_positions", 2048)
        self.max_context = min(window, config.max_context) if config.max_context else window

    render = LocalBackend.render
    encode = LocalBackend.encode
    count_tokens = LocalBackend.count_tokens


def token_counter(kind, **options):
    """A backend that can render and count a labeler's prompts without loading a model or calling a server."""
    if kind == "local":
        return LocalTokenCounter(LocalBackendConfig(**options))
    return make_backend(kind, **options)  # server backends send nothing until asked


def make_backend(kind, **options):
    """Build a backend from plain options (what LabelerConfig stores)."""
    if kind == "local":
        return LocalBackend(LocalBackendConfig(**options))
    if kind == "server":
        return ServerBackend(ServerBackendConfig(**options))
    if kind == "chat":
        return ChatBackend(ChatBackendConfig(**options))
    raise BackendError(f"unknown backend {kind!r}; use 'local', 'server' or 'chat'")
