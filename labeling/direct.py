"""Direct RLAIF scores (docs/method.md §2): the LLM rates one response 1-10 and that is the reward.

Plain Python, no Django. The probabilities of the ten score tokens at the next position are
normalised, s = sum(i * P(i)), and the reward is s' = (s - 5.5) / 4.5 in [-1, 1]. "10" is read
correctly whether the vocabulary has it as one token or it is "1" followed by "0" (the backends
look one token further after a "1").

    scorer = DirectScorer.from_pretrained("var/models/SmolLM2-135M-Instruct", "summarization")
    scorer.rewards(contexts, responses)   # -> [0.12, -0.3, ...]
"""
from dataclasses import dataclass, field

from .backends import LocalBackend, LocalBackendConfig
from .prompts import context_keep, make_template, PromptBuilder, truncate_context


@dataclass
class DirectScore:
    probs: list  # normalised P(score = 1..10)
    score: float  # s = sum(i * P(i)), in [1, 10]
    reward: float  # (s - 5.5) / 4.5, in [-1, 1]
    mass: float  # probability the model put on score tokens before normalising
    truncated_tokens: int = 0
    # Servers: probability the top-k alternatives left unseen, plus a "1" that may have been a 10
    # (chat APIs cannot be asked what follows a "1" the reply did not start with). 0 for a local model.
    unseen_mass: float = 0.0


def expected_score(probs):
    """s = sum(i * P(i)) over the normalised distribution; 5.5 (reward 0) when it is all zero."""
    total = float(sum(probs))
    if total <= 0:
        return 5.5
    return sum((i + 1) * p for i, p in enumerate(probs)) / total


def score_to_reward(score):
    return max(-1.0, min(1.0, (score - 5.5) / 4.5))


@dataclass
class DirectScorerSettings:
    task: object = "summarization"  # a TaskText (Task.text()), or a built-in task's slug
    template_overrides: dict = field(default_factory=dict)
    max_prompt_tokens: int = 0
    batch_size: int = 16  # prompts per backend call


class DirectScorer:
    def __init__(self, backend, task="summarization", **settings):
        self.backend = backend
        self.settings = DirectScorerSettings(task=task, **settings)
        self.template = make_template(self.settings.task, "base", self.settings.template_overrides)
        self.builder = PromptBuilder(self.template)
        self.keep = context_keep(self.settings.task)

    @classmethod
    def from_pretrained(cls, model_dir, task, *, dtype="auto", threads=0, device="auto", chat_template="auto",
                        batch_size=8, **settings):
        backend = LocalBackend(LocalBackendConfig(str(model_dir), dtype=dtype, threads=threads, device=device,
                                                  chat_template=chat_template, batch_size=batch_size))
        return cls(backend, task, **settings)

    def _prompt(self, context, response):
        limit = self.backend.max_context
        if self.settings.max_prompt_tokens:
            limit = min(limit, self.settings.max_prompt_tokens)
        text = self.backend.render(self.builder.score_prompt(context, response))
        n = self.backend.count_tokens(text)
        removed = 0
        if n > limit - 1:  # one token of room for the "0" after a "1"
            context, removed = truncate_context(context, n - limit + 2, self.backend.count_tokens, self.keep)
            text = self.backend.render(self.builder.score_prompt(context, response))
        return text, removed

    def score(self, contexts, responses):
        contexts, responses = list(contexts), list(responses)
        if len(contexts) != len(responses):
            raise ValueError(f"{len(contexts)} contexts but {len(responses)} responses")
        prompts = [self._prompt(c, r) for c, r in zip(contexts, responses)]
        out = []
        bs = max(1, self.settings.batch_size)
        for start in range(0, len(prompts), bs):
            batch = prompts[start:start + bs]
            for (text, removed), res in zip(batch, self.backend.score_probs([t for t, _ in batch])):
                total = sum(res.logprobs)
                probs = [p / total for p in res.logprobs] if total > 0 else [0.1] * 10
                s = expected_score(probs)
                out.append(DirectScore(probs, s, score_to_reward(s), res.mass, removed, res.unseen_mass))
        return out

    def rewards(self, contexts, responses):
        """Rewards in [-1, 1] for RL (docs/method.md §2, direct RLAIF)."""
        return [r.reward for r in self.score(contexts, responses)]
