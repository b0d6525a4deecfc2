"""The AI preference labeler (docs/method.md §1): soft labels, position debiasing, chain of thought.

Plain Python, no Django. :class:`PreferenceLabeler` turns (context, response A, response B) into
a :class:`PairLabel`: the pair is scored in both orders, (A, B) and (B, A); each order gives
P(the response in slot 1 is better) = softmax over the log-probs of the label tokens ``1``/``2``;
the swapped order is mapped back (1 - p) and the two are averaged. With chain of thought, each
order first gets a greedy rationale (or k sampled ones: self-consistency), which is appended
before the ending and scored the same way; the k distributions are averaged.

Servers return only the top-k alternatives of the answer's first token. When a label token is not
among them, the pair is not turned into a hard 0/1 label: the absent token is put at the most it
can hold (``NextTokenScores.absent_bound_logprob``), which gives the label closest to 0.5 that the
answer allows, and the label is *bounded* (``PairLabel.bounded``, with ``p_first_low`` and
``p_first_high``). ``LabelerSettings.absent_labels`` says what to do with such prompts: keep them
bounded, re-ask with ``reask_top_logprobs`` alternatives (kept bounded if still absent), or drop
the pair (the app stores no label for it).
"""
import math
import time
from dataclasses import dataclass, field

from .prompts import Exemplar, PromptBuilder, clean_rationale, context_keep, make_template, truncate_context


ABSENT_LABEL_POLICIES = ("keep", "reask", "drop")


@dataclass
class LabelerSettings:
    """Everything that decides a label, apart from the model (see ``LabelerConfig`` in the app)."""

    task: object = "summarization"  # a TaskText (Task.text()), or a built-in task's slug
    variant: str = "base"
    template_overrides: dict = field(default_factory=dict)
    exemplars: list = field(default_factory=list)  # Exemplar or dicts
    chain_of_thought: bool = False
    cot_max_tokens: int = 512
    self_consistency_k: int = 1  # > 1: sample k rationales at self_consistency_temperature
    self_consistency_temperature: float = 1.0
    max_prompt_tokens: int = 0  # 0 = the backend's window
    seed: int = 0
    absent_labels: str = "keep"  # a label token not among a server's top-k: keep (bounded), reask or drop
    reask_top_logprobs: int = 20  # alternatives asked for when re-asking

    def __post_init__(self):
        self.exemplars = [e if isinstance(e, Exemplar) else Exemplar.from_dict(e) for e in self.exemplars]
        if self.self_consistency_k < 1:
            raise ValueError("self_consistency_k must be at least 1")
        if self.self_consistency_k > 1 and not self.chain_of_thought:
            raise ValueError("self-consistency samples rationales, so it needs chain of thought")
        if self.self_consistency_k > 1 and self.self_consistency_temperature <= 0:
            raise ValueError("self-consistency needs a temperature above 0")
        if self.absent_labels not in ABSENT_LABEL_POLICIES:
            raise ValueError(f"absent_labels must be one of {', '.join(ABSENT_LABEL_POLICIES)}, "
                             f"not {self.absent_labels!r}")


@dataclass
class Pair:
    context: str
    first: str  # response A
    second: str  # response B


@dataclass
class PairLabel:
    p_first: float  # debiased P(A is better)
    p_slot1_order1: float  # P(slot 1 better) with (A, B)
    p_slot1_order2: float  # P(slot 1 better) with (B, A), raw
    mass_order1: float
    mass_order2: float
    rationales: dict = field(default_factory=dict)  # {"order1": [...], "order2": [...]}
    prompt_tokens: int = 0  # every request's prompt (a server's usage where it reports one)
    generated_tokens: int = 0
    truncated_tokens: int = 0
    latency_s: float = 0.0
    completion_tokens: int = 0  # what a server generated and bills (else the rationales' tokens)
    # A label token was not among a server's top-k alternatives: p_first is then bounded by these.
    bounded: bool = False
    p_first_low: float | None = None
    p_first_high: float | None = None
    unseen_mass: float = 0.0  # probability the returned alternatives left unseen (mean of the orders)

    def __post_init__(self):
        if self.p_first_low is None:
            self.p_first_low = self.p_first
        if self.p_first_high is None:
            self.p_first_high = self.p_first

    @property
    def label_mass(self):
        return (self.mass_order1 + self.mass_order2) / 2


def softmax2(lp1, lp2):
    """P(label 1) from two log-probs; 0.5 when neither label has any probability."""
    if lp1 == -math.inf and lp2 == -math.inf:
        return 0.5
    m = max(lp1, lp2)
    e1, e2 = math.exp(lp1 - m), math.exp(lp2 - m)
    return e1 / (e1 + e2)


def debias(p_slot1_order1, p_slot1_order2):
    """P(A better) averaged over both orders; order 2 showed B first, so its 'slot 1' is B."""
    return (p_slot1_order1 + (1.0 - p_slot1_order2)) / 2.0


def slot1_probability(scores, labels=("1", "2")):
    """(estimate, lowest, highest) P(slot 1 better) from one prompt's :class:`NextTokenScores`.

    Exact when both labels were seen. An absent label token holds between 0 and its bound; the
    estimate puts it at the bound (the label closest to 0.5 the answer allows, never a silent 0/1).
    """
    lp1, lp2 = scores.logprobs[:2]
    absent1, absent2 = labels[0] in scores.absent, labels[1] in scores.absent
    if not (absent1 or absent2):
        p = softmax2(lp1, lp2)
        return p, p, p
    bound = scores.absent_bound_logprob
    top1, top2 = (bound if absent1 else lp1), (bound if absent2 else lp2)
    return (softmax2(top1, top2), softmax2(-math.inf if absent1 else lp1, top2),
            softmax2(top1, -math.inf if absent2 else lp2))


class PreferenceLabeler:
    def __init__(self, backend, settings: LabelerSettings):
        self.backend = backend
        self.settings = settings
        self.template = make_template(settings.task, settings.variant, settings.template_overrides)
        self.builder = PromptBuilder(self.template, list(settings.exemplars), settings.chain_of_thought)
        self.keep = context_keep(settings.task)

    @property
    def token_limit(self):
        limit = self.backend.max_context
        if self.settings.max_prompt_tokens:
            limit = min(limit, self.settings.max_prompt_tokens)
        return limit

    # ---- prompts ----------------------------------------------------------------------------
    def _texts(self, context, a, b, rationales=None):
        """Rendered prompts of both orders (order 1 = (a, b), order 2 = (b, a))."""
        if not self.settings.chain_of_thought or rationales is None:
            if self.settings.chain_of_thought:
                make = self.builder.rationale_prompt
                return [self.backend.render(make(context, a, b)), self.backend.render(make(context, b, a))]
            make = self.builder.label_prompt
            return [self.backend.render(make(context, a, b)), self.backend.render(make(context, b, a))]
        out = []
        for (x, y), rs in zip(((a, b), (b, a)), rationales):
            out.append([self.backend.render(self.builder.label_prompt(context, x, y, rationale=r)) for r in rs])
        return out

    def fit_context(self, pair):
        """The context cut to fit the window with both orders (and room for a rationale). Returns
        (context, tokens removed)."""
        s = self.settings
        reserve = (s.cot_max_tokens + 16) if s.chain_of_thought else 0
        limit = self.token_limit - reserve
        if limit <= 0:
            raise ValueError(f"the window of {self.token_limit} tokens leaves no room for the prompt")
        context, removed = pair.context, 0
        for _ in range(4):
            n = max(self.backend.count_tokens(t) for t in self._texts(context, pair.first, pair.second))
            if n <= limit:
                return context, removed
            if not context:
                break
            context, cut = truncate_context(context, n - limit + 2 * _ + 1, self.backend.count_tokens, self.keep)
            removed += cut
        raise ValueError(f"the prompt needs {n} tokens without any context, more than the {limit} allowed: "
                         "shorten the preamble or exemplars, or allow longer prompts")

    def prompts(self, pair):
        """The rendered first prompts of both orders (the rationale request with chain of thought)."""
        context, _ = self.fit_context(pair)
        return self._texts(context, pair.first, pair.second)

    # ---- labeling ---------------------------------------------------------------------------
    def label(self, pairs):
        """Label pairs; returns one :class:`PairLabel` per pair, in order."""
        pairs = [p if isinstance(p, Pair) else Pair(*p) for p in pairs]
        if not pairs:
            return []
        s = self.settings
        t0 = time.perf_counter()
        fitted = [self.fit_context(p) for p in pairs]
        rationales = [None] * len(pairs)
        generated = [0] * len(pairs)
        step1_prompt = [0] * len(pairs)
        step1_completion = [0] * len(pairs)
        if s.chain_of_thought:
            step1 = []
            for (ctx, _), p in zip(fitted, pairs):
                step1.extend(self._texts(ctx, p.first, p.second))
            k = s.self_consistency_k
            temperature = s.self_consistency_temperature if k > 1 else 0.0
            outs = self.backend.generate(step1, s.cot_max_tokens, temperature=temperature, n=k, seed=s.seed)
            for i in range(len(pairs)):
                r1 = [clean_rationale(t, self.template) for t in outs[2 * i]]
                r2 = [clean_rationale(t, self.template) for t in outs[2 * i + 1]]
                rationales[i] = (r1, r2)
                generated[i] = sum(self.backend.count_tokens(t) for t in outs[2 * i] + outs[2 * i + 1])
                # A server reports what it billed; a local model's prompt tokens are counted here.
                billed = [(getattr(o, "prompt_tokens", 0), getattr(o, "completion_tokens", 0))
                          for o in outs[2 * i:2 * i + 2]]
                step1_prompt[i] = sum(b[0] or self.backend.count_tokens(t)
                                      for b, t in zip(billed, step1[2 * i:2 * i + 2]))
                step1_completion[i] = sum(b[1] for b in billed) or generated[i]
        texts, groups, spans = [], [], []
        for i, ((ctx, _), p) in enumerate(zip(fitted, pairs)):
            if s.chain_of_thought:
                o1, o2 = self._texts(ctx, p.first, p.second, rationales[i])
            else:
                o1, o2 = self._texts(ctx, p.first, p.second)
                o1, o2 = [o1], [o2]
            start = len(texts)
            texts.extend(o1 + o2)
            groups.append(list(range(start, len(texts))))
            spans.append((start, len(o1), len(o2)))
        scores = self.backend.label_logprobs(texts, ("1", "2"), groups)
        if s.absent_labels == "reask":
            scores = self._reask(texts, scores)
        elapsed = time.perf_counter() - t0
        out = []
        for i, (start, n1, n2) in enumerate(spans):
            sc1 = scores[start:start + n1]
            sc2 = scores[start + n1:start + n1 + n2]
            (p1, low1, high1), (p2, low2, high2) = (
                [sum(v) / len(sc) for v in zip(*(slot1_probability(x) for x in sc))] for sc in (sc1, sc2))
            out.append(PairLabel(
                p_first=debias(p1, p2), p_slot1_order1=p1, p_slot1_order2=p2,
                mass_order1=sum(x.mass for x in sc1) / n1, mass_order2=sum(x.mass for x in sc2) / n2,
                rationales={"order1": rationales[i][0], "order2": rationales[i][1]} if rationales[i] else {},
                prompt_tokens=step1_prompt[i] + sum(x.n_tokens for x in sc1 + sc2), generated_tokens=generated[i],
                truncated_tokens=fitted[i][1], latency_s=elapsed / len(pairs),
                completion_tokens=step1_completion[i] + sum(x.completion_tokens for x in sc1 + sc2),
                bounded=any(x.absent for x in sc1 + sc2), p_first_low=debias(low1, high2),
                p_first_high=debias(high1, low2),
                unseen_mass=(sum(x.unseen_mass for x in sc1) / n1 + sum(x.unseen_mass for x in sc2) / n2) / 2,
            ))
        return out

    def _reask(self, texts, scores):
        """Ask again, with ``reask_top_logprobs`` alternatives, for the prompts whose label tokens were absent."""
        redo = [j for j, sc in enumerate(scores) if sc.absent]
        if not redo:
            return scores
        again = self.backend.label_logprobs([texts[j] for j in redo], ("1", "2"),
                                            top_logprobs=self.settings.reask_top_logprobs)
        scores = list(scores)
        for j, sc in zip(redo, again):
            first = scores[j]
            sc.n_tokens += first.n_tokens  # both requests were paid for
            sc.completion_tokens += first.completion_tokens
            scores[j] = sc
        return scores

    # ---- what a run will take ------------------------------------------------------------------
    def estimate(self, pairs):
        """Requests and tokens labeling ``pairs`` will take, before it starts (a dry run).

        Prompts are rendered and counted exactly as :meth:`label` does. With chain of thought each
        order takes one request for its rationale(s) (up to ``cot_max_tokens`` each) and one per
        rationale for the label, whose prompt holds the rationale: those are upper bounds.
        Re-asks are not counted (nobody knows yet which labels will be absent). Returns a dict with
        ``pairs``, ``requests``, ``prompt_tokens``, ``completion_tokens``.
        """
        s = self.settings
        k = s.self_consistency_k
        out = {"pairs": 0, "requests": 0, "prompt_tokens": 0, "completion_tokens": 0}
        for pair in pairs:
            pair = pair if isinstance(pair, Pair) else Pair(*pair)
            first = [self.backend.count_tokens(t) for t in self.prompts(pair)]
            out["pairs"] += 1
            if s.chain_of_thought:
                label_prompt = [n + s.cot_max_tokens + 16 for n in first]  # the rationale and the ending
                out["requests"] += 2 + 2 * k
                out["prompt_tokens"] += sum(first) + k * sum(label_prompt)
                out["completion_tokens"] += 2 * k * s.cot_max_tokens + 2 * k
            else:
                out["requests"] += 2
                out["prompt_tokens"] += sum(first)
                out["completion_tokens"] += 2
        return out
