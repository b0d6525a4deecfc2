from .core import Comparison, Dataset, Policy, Preference, Prompt, Sample, Task, pair_key  # noqa: F401
from .jobs import Job, JobMetric  # noqa: F401
from .experiment import Experiment  # noqa: F401,E402
