"""The training jobs' settings: one dataclass per job kind, each setting's default, range and help in its field.

As a TRL trainer's arguments are the fields of one config dataclass (``field(metadata={"help": ...})``),
these dataclasses are the one place a training setting is spelled: the cores train and sample with
them (rl/sft.py, rl/reward_model.py, rl/reinforce.py, rl/sampling.py); the job validators
(rl/params.py) take their defaults and check their ranges and choices; the admin forms
(rl/forms.py) show them with their help, range and default; the experiment presets and configs
(evalsite/experiments) are checked against them.

A field made with ``setting(...)`` is a job setting: its default is what a job uses, and where the
paper states a value (docs/method.md) the field holds it too (``paper``: the help text states it,
the ``paper`` preset takes it). A plain field (``weight_decay: float = 0.0``) is a knob of the core
that the jobs leave at its default. The launch settings (``processes``, ``accelerate_config``) and
``policy_format`` are read by the job that runs the core, not by its loop.

Plain Python without torch, so the web process can read the settings without loading the cores.
"""
import math
from dataclasses import dataclass, field, fields

from rl.formats import FORMATS


@dataclass(frozen=True)
class Bound:
    """The range a numeric setting must lie in (``low`` excluded when ``above_low``).

    The upper bounds keep every job within what its code can run: a seed must fit the 64-bit
    integer torch.manual_seed takes, and a run of 10^9 epochs or 10^7 new tokens would fail
    (or run for years) long after the form accepted it. The forms show the range as help text.
    """

    kind: type  # int or float
    low: float
    high: float
    above_low: bool = False
    high_text: str = ""  # how to write ``high`` where its digits would not read well

    def describe(self):
        high = self.high_text or f"{self.high:g}"
        if self.above_low:
            return f"Above {self.low:g}, at most {high}."
        return f"From {self.low:g} to {high}."


MAX_BATCH = 4096
MAX_PROMPT_TOKENS = 32768
MAX_NEW_TOKENS = 8192
SEED = Bound(int, 0, 2**63 - 1, high_text="2^63 − 1")
LEARNING_RATE = Bound(float, 0, 1, above_low=True)
EPOCHS = Bound(int, 1, 1000)
BATCH_SIZE = Bound(int, 1, MAX_BATCH)
PROMPT_TOKENS = Bound(int, 1, MAX_PROMPT_TOKENS)
RESPONSE_TOKENS = Bound(int, 1, MAX_NEW_TOKENS)
TOP_P = Bound(float, 0, 1, above_low=True)
# data-parallel training processes (in all, over every machine); rl/params.launch_errors also checks the devices
PROCESSES = Bound(int, 1, 1024)

OPTIMIZERS = ("adamw", "adafactor")  # rl/modeling.make_optimizer
INHERITED_FORMAT = "the starting policy's"  # what an empty policy_format means


def setting(default, help, bounds=None, *, choices=None, label=None, paper=None, paper_text=""):
    """A job setting: a dataclass field with ``default`` and, in its metadata, its ``help`` text,
    the range of a number (``bounds``), the values a text may take (``choices``: value -> what it
    shows; a value '' means "not set"), the form's ``label``, and the paper's value (``paper``;
    ``paper_text`` says it where one number would not, e.g. "2–3")."""
    metadata = {"help": help, "bounds": bounds, "choices": dict(choices) if choices else None, "label": label,
                "paper": paper, "paper_text": paper_text}
    return field(default=default, metadata={k: v for k, v in metadata.items() if v not in (None, "")})


def _optimizer(default, paper=None):
    return setting(default, "adamw, or adafactor (factored second moments: almost no memory beyond the weights).",
                   choices={o: o for o in OPTIMIZERS}, paper=paper)


def _seed():
    return setting(0, "Random seed: the same seed and data give the same run.", SEED)


def _policy_format(default):
    """``raw`` for SFT; '' (the starting policy's) for the kinds that start from a trained policy."""
    choices = {f: f for f in FORMATS}
    if default == "":
        choices = {"": INHERITED_FORMAT, **choices}
    return setting(default, "raw: the task's text continued, as a base model does (the paper's); chat: the model's "
                            "chat template, the response is the assistant turn; auto: chat where the tokenizer has "
                            "a template. README: Policy formats.", choices=choices)


# How responses are decoded (rl/sampling.py): the choice, and what sample_token_ids takes for it.
DECODE_CACHES = {"": None, "static": True, "dynamic": False}


def _decode_cache():
    return setting("", "static: a fixed-size KV cache, the decode step compiled (on a GPU, CUDA graphs: one launch "
                       "per token); dynamic: a cache that grows, finished rows leave the batch. Empty: static on a "
                       "GPU, dynamic on a CPU.",
                   choices={"": "static on a GPU, dynamic on a CPU", "static": "static", "dynamic": "dynamic"})


def _processes():
    return setting(1, "Data-parallel training processes (1: in the worker itself; more: accelerate launch, one per "
                      "GPU or CPU core). README: Training on several GPUs / machines.", PROCESSES)


def _accelerate_config():
    return setting("", "An Accelerate config file, e.g. configs/accelerate/multi_gpu.yaml (empty: Accelerate's "
                       "defaults).")


@dataclass
class SFTConfig:
    learning_rate: float = setting(2e-5, "Learning rate.", LEARNING_RATE)
    epochs: int = setting(1, "Passes over the prompts that have a reference response.", EPOCHS)
    batch_size: int = setting(8, "Examples per optimizer step.", BATCH_SIZE)
    gradient_accumulation_steps: int = setting(1, "The batch runs in this many micro-batches (one optimizer step, "
                                                  "less memory).", BATCH_SIZE)
    max_prompt_tokens: int = setting(512, "Longer prompts keep their end.", PROMPT_TOKENS)
    max_response_tokens: int = setting(128, "Longer reference responses are cut (the token that ends a response "
                                            "included).", RESPONSE_TOKENS)
    optimizer: str = _optimizer("adamw")
    policy_format: str = _policy_format("raw")  # the job prompts the policy in it (rl/formats.py)
    weight_decay: float = 0.0
    warmup_steps: int = 0
    max_grad_norm: float = 1.0
    seed: int = _seed()
    # launch: read by the job that starts the run (rl/launch.py), not by the loop
    processes: int = _processes()
    accelerate_config: str = _accelerate_config()


@dataclass
class RewardModelConfig:
    # the job's split of the labelled pairs (rl/data.py), by prompt; the loop trains on the rest
    eval_fraction: float = setting(0.1, "Share of prompts whose pairs are held out to evaluate the reward model.",
                                   Bound(float, 0, 0.9))
    learning_rate: float = setting(1e-5, "Learning rate.", LEARNING_RATE, paper=1e-5)
    epochs: int = setting(2, "Passes over the training pairs.", EPOCHS, paper=3, paper_text="2–3")
    batch_size: int = setting(32, "Pairs per optimizer step.", BATCH_SIZE, paper=32, paper_text="128 or 32")
    gradient_accumulation_steps: int = setting(1, "The batch runs in this many micro-batches (one optimizer step, "
                                                  "less memory).", BATCH_SIZE)
    max_length: int = setting(1152, "Most tokens the reward model reads of input and response together (longer "
                                    "inputs keep their end).", Bound(int, 1, MAX_PROMPT_TOKENS + MAX_NEW_TOKENS),
                              paper=1152)
    optimizer: str = _optimizer("adafactor", paper="adafactor")
    policy_format: str = _policy_format("")  # the pairs' prompts as the policy reads them (rl/formats.py)
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    eval_every: int = 0                    # evaluate held-out pairs every N steps (0: only at the end)
    seed: int = _seed()
    # launch: read by the job that starts the run (rl/launch.py), not by the loop
    processes: int = _processes()
    accelerate_config: str = _accelerate_config()


@dataclass
class RLConfig:
    beta: float = setting(0.05, "Weight of the KL penalty: the return is (1 − β)·r − β·KL(π‖π_SFT).",
                          Bound(float, 0, 1), label="β (KL weight)", paper=0.05)
    temperature: float = setting(0.9, "Temperature the policy's responses are sampled at.",
                                 Bound(float, 0, 100, above_low=True), paper=0.9)
    top_p: float = setting(1.0, "Nucleus sampling: draw from the most likely tokens that hold this much probability "
                                "(1: all).", TOP_P)
    batch_size: int = setting(16, "Prompts per step.", BATCH_SIZE, paper=128)
    learning_rate: float = setting(1e-5, "Learning rate of the policy.", LEARNING_RATE, paper=1e-5)
    value_learning_rate: float = setting(0.0, "Learning rate of the value model. 0: same as the policy's.",
                                         Bound(float, 0, 1))
    epochs: int = setting(8, "Passes over the prompt set.", EPOCHS, paper=8)
    max_prompt_tokens: int = setting(512, "Longer prompts keep their end.", PROMPT_TOKENS)
    max_response_tokens: int = setting(64, "Most tokens of a sampled response.", RESPONSE_TOKENS)
    gradient_accumulation_steps: int = setting(1, "The step's batch is trained in this many micro-batches.",
                                               BATCH_SIZE)
    generation_batch_size: int = setting(0, "Rows sampled together. 0: the whole batch at once.",
                                         Bound(int, 0, MAX_BATCH))
    optimizer: str = _optimizer("adafactor", paper="adafactor")
    policy_format: str = _policy_format("")  # the job prompts the policy in it (rl/formats.py)
    max_grad_norm: float = setting(1.0, "Each model's gradients are clipped to this norm.",
                                   Bound(float, 0, 1000, above_low=True))
    save_every: int = setting(25, "Checkpoint every N steps (and at the end); a cancelled or crashed job resumes "
                                  "from the last.", Bound(int, 1, 100000), label="Checkpoint every N steps")
    shuffle: bool = True               # a new prompt order each epoch (False: the order given)
    seed: int = _seed()
    decode_cache: str = _decode_cache()
    # launch: read by the job that starts the run (rl/launch.py), not by the loop
    processes: int = _processes()
    accelerate_config: str = _accelerate_config()

    @classmethod
    def from_dict(cls, d):
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class SamplingConfig:
    n: int = setting(1, "Responses per prompt.", Bound(int, 1, 64), label="Samples per prompt")
    temperature: float = setting(0.9, "Sampling temperature (0: the most likely token; the paper samples the policy "
                                      "at 0.9).", Bound(float, 0, 100))
    top_p: float = setting(1.0, "Nucleus sampling: draw from the most likely tokens that hold this much probability "
                                "(1: all).", TOP_P)
    max_new_tokens: int = setting(64, "Most tokens of a response.", RESPONSE_TOKENS)
    max_prompt_tokens: int = setting(1024, "Longer prompts keep their end.", PROMPT_TOKENS)
    batch_size: int = setting(16, "Rows (prompt × sample) generated together.", BATCH_SIZE)
    seed: int = _seed()
    policy_format: str = _policy_format("")  # the job prompts the policy in it (rl/formats.py)
    decode_cache: str = _decode_cache()


# The settings of each training job kind (the job kinds of rl/jobs.py).
JOB_CONFIGS = {"sft": SFTConfig, "sample": SamplingConfig, "reward_model": RewardModelConfig, "rl": RLConfig}


# --- reading the settings ----------------------------------------------------------------------
def job_settings(config):
    """The job settings of a config dataclass (its fields made with ``setting``), in order."""
    return [f for f in fields(config) if "help" in f.metadata]


def setting_defaults(config):
    """{name: default} of the job settings of ``config``."""
    return {f.name: f.default for f in job_settings(config)}


def setting_bounds(config):
    """{name: Bound} of the numeric job settings of ``config``."""
    return {f.name: f.metadata["bounds"] for f in job_settings(config) if "bounds" in f.metadata}


def paper_settings(config):
    """{name: the paper's value} of the settings of ``config`` the paper states."""
    return {f.name: f.metadata["paper"] for f in job_settings(config) if "paper" in f.metadata}


def _number_text(value):
    """1e-05 as 1e-5, 0.05 as 0.05, 128 as 128; text as it is."""
    return f"{value:g}".replace("e-0", "e-") if isinstance(value, float) else str(value)


def setting_help(f):
    """The help text of setting ``f``: what it does, the paper's value, its range."""
    meta = f.metadata
    parts = [meta["help"]]
    if "paper" in meta:
        paper = meta.get("paper_text") or _number_text(meta["paper"])
        parts.append(f"The paper used {paper}.")
    if "bounds" in meta:
        parts.append(meta["bounds"].describe())
    return " ".join(parts)


# --- checking values -----------------------------------------------------------------------------
def _shown(raw):
    return repr(raw) if len(repr(raw)) <= 40 else repr(raw)[:37] + "..."


def number_error(name, raw, bound):
    """(``raw`` typed as ``bound.kind``, None), or (that value, or ``raw`` where it is no number, a message)."""
    try:
        if isinstance(raw, bool):
            raise ValueError
        if bound.kind is int:
            if isinstance(raw, float) and not raw.is_integer():  # also inf and NaN
                raise ValueError
            value = int(raw)
        else:
            value = float(raw)
            if not math.isfinite(value):
                raise ValueError
    except (TypeError, ValueError, OverflowError):
        return raw, f"{name} must be {'a whole number' if bound.kind is int else 'a number'} (got {_shown(raw)})."
    if value < bound.low or (bound.above_low and value == bound.low):
        return value, f"{name} must be {'greater than' if bound.above_low else 'at least'} {bound.low:g}."
    if value > bound.high:
        return value, f"{name} must be at most {bound.high_text or f'{bound.high:g}'}."
    return value, None


def number_errors(values, bounds):
    """Messages for the numbers among ``values`` (only those given) that are outside ``bounds``."""
    return [message for key, bound in bounds.items() if key in values
            for message in [number_error(key.replace("_", " "), values[key], bound)[1]] if message]


def setting_error(f, raw):
    """(the value of setting ``f`` for ``raw``, None) or (the value, a message saying what is wrong).
    A number is typed and must be in range; a choice must be one of them; an empty text or choice
    (None or '') is the setting's default."""
    name, meta = f.name.replace("_", " "), f.metadata
    if "bounds" in meta:
        return number_error(name, raw, meta["bounds"])
    if f.type is bool:
        return (raw, None) if isinstance(raw, bool) else (raw, f"{name} must be true or false (got {_shown(raw)}).")
    value = f.default if raw in (None, "") else raw
    choices = meta.get("choices")
    if choices is not None:
        if isinstance(value, str) and value in choices:
            return value, None
        listed = ", ".join(c for c in choices if c != "")
        empty = f" (or empty: {choices['']})" if "" in choices else ""
        return value, f"{name} must be one of {listed}{empty}; got {_shown(value)}."
    if not isinstance(value, str):
        return value, f"{name} must be text (got {_shown(value)})."
    return value, None


def check_settings(config, values):
    """(the job settings of ``config`` among ``values``, each typed or its default, {name: [messages]}).
    Names in ``values`` that are not settings of ``config`` are not looked at (``unknown_settings``)."""
    checked, errors = {}, {}
    for f in job_settings(config):
        if f.name in values:
            checked[f.name], message = setting_error(f, values[f.name])
            if message:
                errors.setdefault(f.name, []).append(message)
    return checked, errors


def unknown_settings(config, values):
    """The names in ``values`` that are not job settings of ``config``, sorted."""
    known = {f.name for f in job_settings(config)}
    return sorted(str(k) for k in values if k not in known)


def unknown_settings_error(config, values):
    """A message naming the keys of ``values`` that are not job settings of ``config``; None when all are."""
    unknown = unknown_settings(config, values)
    if not unknown:
        return None
    known = ", ".join(f.name for f in job_settings(config))
    return (f"{', '.join(map(repr, unknown))} {'is not a setting' if len(unknown) == 1 else 'are not settings'} of "
            f"{config.__name__} (rl/config.py); its settings are: {known}.")


def settings_errors(config, values):
    """Messages for ``values`` taken as settings of ``config`` (e.g. a section of an experiment
    config): keys that are not among them, numbers out of range, values not among the choices."""
    unknown = unknown_settings_error(config, values)
    return ([unknown] if unknown else []) + [m for ms in check_settings(config, values)[1].values() for m in ms]
