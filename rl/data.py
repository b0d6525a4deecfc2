"""Training data from the database: SFT examples, RL prompts and reward-model preference pairs.

App layer, not a core: it reads the database for the jobs (rl/jobs.py) and hands the cores plain
texts and ``Pair`` rows.

Human labels come from ``Comparison.human_preference`` and, where the human-evaluation
module is installed, from annotators' rankings (``evalsite.humaneval.data``); AI soft labels
from ``labeling.data.label_frame``. Both optional modules are imported lazily.
"""
import hashlib


from evalsite.models import Comparison, Prompt
from rl import formats
from rl.reward_model import Pair

P_FROM_PREFERENCE = {"first": 1.0, "second": 0.0, "tie": 0.5}


def prompt_queryset(params):
    qs = Prompt.objects.select_related("dataset__task")
    if params.get("prompt_ids"):
        return qs.filter(pk__in=params["prompt_ids"])
    if params.get("dataset_id"):
        return qs.filter(dataset_id=params["dataset_id"])
    return qs


def policy_input(prompt, tokenizer=None, fmt="raw"):
    """The text a policy continues for ``prompt`` in policy format ``fmt`` (rl/formats.py)."""
    return formats.policy_input(prompt.dataset.task.text(), prompt.context, tokenizer, fmt).prompt


def policy_inputs(prompts, tokenizer, fmt):
    """(prompt texts, stop strings, extra stop token ids) of a job's prompts in format ``fmt``:
    the stops of all their tasks together (a job's prompts are usually of one task)."""
    texts, stop_strings, stop_ids = [], [], set()
    for prompt in prompts:
        pi = formats.policy_input(prompt.dataset.task.text(), prompt.context, tokenizer, fmt)
        texts.append(pi.prompt)
        stop_strings += [s for s in pi.stop_strings if s not in stop_strings]
        stop_ids.update(pi.stop_token_ids)
    return texts, tuple(stop_strings), tuple(sorted(stop_ids))


def held_out(prompt_id, fraction, seed):
    """Split by prompt, so a prompt's pairs are all on one side."""
    if fraction <= 0:
        return False
    h = hashlib.sha256(f"{seed}:{prompt_id}".encode()).digest()
    return int.from_bytes(h[:8], "little") / 2**64 < fraction


def _human_pairs(params, prompt_filter):
    rows = []  # (prompt_id, response_a, response_b, p_first, human p or None)
    field = params.get("human_label_field", "human_preference")
    qs = Comparison.objects.exclude(**{field: ""})
    if prompt_filter is not None:
        qs = qs.filter(prompt_id__in=prompt_filter)
    for c in qs.values("prompt_id", "response_a", "response_b", field):
        p = P_FROM_PREFERENCE[c[field]]
        rows.append((c["prompt_id"], c["response_a"], c["response_b"], p, p))
    if params.get("include_annotator_rankings", True) and field == "human_preference":
        from evalsite.humaneval.data import human_pair_preferences

        frame = human_pair_preferences(prompt_ids=list(prompt_filter) if prompt_filter is not None else None)
        for r in frame.itertuples(index=False):
            p = P_FROM_PREFERENCE[r.preference]
            rows.append((int(r.prompt_id), r.response_a, r.response_b, p, p))
    return rows


def _ai_pairs(params, prompt_filter):
    from labeling.data import label_frame

    frame = label_frame(config_ids=params["label_config_ids"])
    if frame.empty:
        return []
    # Several configurations labelling the same pair: average their soft labels.
    p_by_comparison = frame.groupby("comparison_id")["p_first"].mean().dropna().to_dict()
    qs = Comparison.objects.filter(pk__in=list(p_by_comparison))
    if prompt_filter is not None:
        qs = qs.filter(prompt_id__in=prompt_filter)
    rows = []
    for c in qs.values("pk", "prompt_id", "response_a", "response_b", "human_preference"):
        human = P_FROM_PREFERENCE.get(c["human_preference"])
        rows.append((c["prompt_id"], c["response_a"], c["response_b"], float(p_by_comparison[c["pk"]]), human))
    return rows


def preference_rows(params):
    prompt_filter = None
    if params.get("prompt_ids") or params.get("dataset_id"):
        prompt_filter = set(prompt_queryset(params).values_list("pk", flat=True))
    rows = _ai_pairs(params, prompt_filter) if params["labels"] == "ai" else _human_pairs(params, prompt_filter)
    return sorted(rows, key=lambda r: (r[0], r[1], r[2]))


def preference_pairs(params, tokenizer=None, fmt="raw"):
    """(train pairs, held-out pairs) as rl.reward_model.Pair; held-out pairs carry ``human``
    (the human label where one exists) for accuracy against people. The pairs' prompts are the
    policy's input in format ``fmt``, as RL's reward model will read them."""
    rows = preference_rows(params)
    prompts = {p.pk: p for p in Prompt.objects.select_related("dataset__task").filter(pk__in={r[0] for r in rows})}
    train, evaluation = [], []
    for prompt_id, a, b, p, human in rows:
        pair = Pair(policy_input(prompts[prompt_id], tokenizer, fmt), a, b, p)
        pair.human = human
        pair.prompt_id = prompt_id
        (evaluation if held_out(prompt_id, params["eval_fraction"], params["seed"]) else train).append(pair)
    return train, evaluation
