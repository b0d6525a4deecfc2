from .core import Comparison, Dataset, Policy, Preference, Prompt, Sample, Task, pair_key  # noqa: F401
from .humaneval import Assignment, EvalItem, EvalRound, RankedResponse, Ranking  # noqa: F401
