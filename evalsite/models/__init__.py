from .core import Comparison, Dataset, Policy, Preference, Prompt, Sample, Task, pair_key  # noqa: F401

