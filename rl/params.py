"""Validation of the training jobs' parameters (used by Job.submit and by the admin forms).

Each ``validate_*`` returns cleaned params (defaults filled in, numbers typed) or raises a
ValidationError whose message dict names the bad fields, so forms can show them in place.
"""
import math
from dataclasses import dataclass
from pathlib import Path

from django.core.exceptions import ValidationError

from evalsite.models import Dataset, Policy, Prompt

SFT_DEFAULTS = {"learning_rate": 2e-5, "epochs": 1, "batch_size": 8, "gradient_accumulation_steps": 1,
                "max_prompt_tokens": 512, "max_response_tokens": 128, "optimizer": "adamw", "seed": 0,
                "processes": 1, "accelerate_config": "", "policy_format": "raw"}
# policy_format "" (sample, reward_model, rl): the format recorded on the policy they start from
SAMPLE_DEFAULTS = {"n": 1, "temperature": 0.9, "top_p": 1.0, "max_new_tokens": 64, "seed": 0, "make_pairs": False,
                   "batch_size": 16, "max_prompt_tokens": 1024, "policy_format": ""}
# human_label_field: "judge_preference" trains the "human" reward model on a dataset's external AI
# judge (e.g. GPT-4 on TL;DR, which ships no human labels) as a stated stand-in for people.
RM_DEFAULTS = {"labels": "human", "label_config_ids": [], "include_annotator_rankings": True, "eval_fraction": 0.1,
               "human_label_field": "human_preference",
               "learning_rate": 1e-5, "epochs": 2, "batch_size": 32, "gradient_accumulation_steps": 1,
               "max_length": 1152, "optimizer": "adafactor", "seed": 0, "processes": 1, "accelerate_config": "",
               "policy_format": ""}
RL_DEFAULTS = {"reward": "reward_model", "beta": 0.05, "temperature": 0.9, "top_p": 1.0, "batch_size": 16,
               "learning_rate": 1e-5, "value_learning_rate": 0.0, "epochs": 8, "max_prompt_tokens": 512,
               "max_response_tokens": 64, "gradient_accumulation_steps": 1, "generation_batch_size": 0,
               "optimizer": "adafactor", "max_grad_norm": 1.0, "save_every": 25, "seed": 0,
               "processes": 1, "accelerate_config": "", "policy_format": ""}
OPTIMIZERS = ("adamw", "adafactor")
POLICY_FORMATS = ("raw", "chat", "auto")  # rl/formats.py


@dataclass(frozen=True)
class Bound:
    """The range a numeric parameter must lie in (``low`` excluded when ``above_low``).

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
# data-parallel training processes (in all, over every machine); launch_errors also checks the devices
PROCESSES = Bound(int, 1, 1024)

# Every numeric parameter of each job kind, with its range (the validators and forms read these).
SFT_NUMBERS = {"learning_rate": LEARNING_RATE, "epochs": EPOCHS, "batch_size": BATCH_SIZE,
               "gradient_accumulation_steps": BATCH_SIZE, "max_prompt_tokens": PROMPT_TOKENS,
               "max_response_tokens": RESPONSE_TOKENS, "seed": SEED, "processes": PROCESSES}
SAMPLE_NUMBERS = {"n": Bound(int, 1, 64), "temperature": Bound(float, 0, 100), "top_p": TOP_P,
                  "max_new_tokens": RESPONSE_TOKENS, "batch_size": BATCH_SIZE, "max_prompt_tokens": PROMPT_TOKENS,
                  "seed": SEED}
RM_NUMBERS = {"eval_fraction": Bound(float, 0, 0.9), "learning_rate": LEARNING_RATE, "epochs": EPOCHS,
              "batch_size": BATCH_SIZE, "gradient_accumulation_steps": BATCH_SIZE,
              "max_length": Bound(int, 1, MAX_PROMPT_TOKENS + MAX_NEW_TOKENS), "seed": SEED, "processes": PROCESSES}
RL_NUMBERS = {"beta": Bound(float, 0, 1), "temperature": Bound(float, 0, 100, above_low=True), "top_p": TOP_P,
              "learning_rate": LEARNING_RATE, "value_learning_rate": Bound(float, 0, 1),
              "max_grad_norm": Bound(float, 0, 1000, above_low=True), "batch_size": BATCH_SIZE, "epochs": EPOCHS,
              "max_prompt_tokens": PROMPT_TOKENS, "max_response_tokens": RESPONSE_TOKENS,
              "gradient_accumulation_steps": BATCH_SIZE, "save_every": Bound(int, 1, 100000),
              "generation_batch_size": Bound(int, 0, MAX_BATCH), "seed": SEED, "processes": PROCESSES}
NUMBERS = {"sft": SFT_NUMBERS, "sample": SAMPLE_NUMBERS, "reward_model": RM_NUMBERS, "rl": RL_NUMBERS}


class _Errors(dict):
    def add(self, field, message):
        self.setdefault(field, []).append(message)

    def raise_if_any(self):
        if self:
            raise ValidationError(dict(self))


def number_errors(values, bounds):
    """Messages for the numbers among ``values`` (only those given) that are outside ``bounds``."""
    errors, values = _Errors(), dict(values)
    for field, bound in bounds.items():
        if field in values:
            _number(values, errors, field, bound)
    return [m for messages in errors.values() for m in messages]


def _numbers(params, errors, bounds):
    for field, bound in bounds.items():
        _number(params, errors, field, bound)


def _number(params, errors, field, bound):
    """Type ``params[field]`` as ``bound.kind`` and check its range; a message per problem."""
    raw, name = params.get(field), field.replace("_", " ")
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
        shown = repr(raw) if len(repr(raw)) <= 40 else repr(raw)[:37] + "..."
        errors.add(field, f"{name} must be {'a whole number' if bound.kind is int else 'a number'} (got {shown}).")
        return
    if value < bound.low or (bound.above_low and value == bound.low):
        errors.add(field, f"{name} must be {'greater than' if bound.above_low else 'at least'} {bound.low:g}.")
    elif value > bound.high:
        errors.add(field, f"{name} must be at most {bound.high_text or f'{bound.high:g}'}.")
    params[field] = value


def _policy(params, errors, field="policy_id", *, need_checkpoint=True):
    pid = params.get(field)
    try:
        policy = Policy.objects.get(pk=int(pid))
    except (TypeError, ValueError, OverflowError, Policy.DoesNotExist):
        errors.add(field, f"Unknown policy {pid!r}.")
        return None
    params[field] = policy.pk
    if need_checkpoint and not policy.checkpoint_dir:
        errors.add(field, f"Policy “{policy.name}” has no checkpoint folder to load (it is {policy.get_kind_display()}).")
    elif need_checkpoint and not Path(policy.checkpoint_dir).is_dir():
        errors.add(field, f"The folder of policy “{policy.name}” does not exist: {policy.checkpoint_dir}.")
    return policy


def _prompt_ids(params, errors, *, need_reference=False):
    """Resolve ``prompt_ids`` or ``dataset_id`` to a sorted list of prompt ids (never empty)."""
    if params.get("prompt_ids"):
        try:
            wanted = sorted({int(i) for i in params["prompt_ids"]})
        except (TypeError, ValueError, OverflowError):
            errors.add("prompt_ids", "prompt ids must be whole numbers.")
            return []
        found = set(Prompt.objects.filter(pk__in=wanted).values_list("pk", flat=True))
        missing = [i for i in wanted if i not in found]
        if missing:
            errors.add("prompt_ids", f"Unknown prompt ids: {', '.join(map(str, missing[:10]))}"
                                     f"{' ...' if len(missing) > 10 else ''}.")
            return []
        qs = Prompt.objects.filter(pk__in=wanted)
        params.pop("dataset_id", None)
    elif params.get("dataset_id") not in (None, ""):
        try:
            dataset = Dataset.objects.get(pk=int(params["dataset_id"]))
        except (TypeError, ValueError, OverflowError, Dataset.DoesNotExist):
            errors.add("dataset_id", f"Unknown dataset {params.get('dataset_id')!r}.")
            return []
        params["dataset_id"] = dataset.pk
        qs = dataset.prompts.all()
    else:
        errors.add("prompt_ids", "Choose a dataset or give prompt ids: the prompt set is empty.")
        return []
    if need_reference:
        qs = qs.exclude(reference="")
    ids = sorted(qs.values_list("pk", flat=True))
    if not ids:
        errors.add("dataset_id" if "dataset_id" in params else "prompt_ids",
                   "The prompt set is empty" + (" (no prompt has a reference response)." if need_reference else "."))
    return ids


def _name(params, errors, what):
    """``params["name"]`` stripped; '' (with a message) when it is missing or holds a NUL."""
    name = str(params.get("name") or "").strip()
    if not name:
        errors.add("name", f"Give the new {what} a name.")
    elif "\x00" in name:  # PostgreSQL cannot even look it up
        errors.add("name", "The name must not contain NUL characters.")
        name = ""
    params["name"] = name
    return name


def _new_policy_name(params, errors):
    name = _name(params, errors, "policy")
    if name and Policy.objects.filter(name=name).exists():
        errors.add("name", f"A policy named “{name}” already exists.")


def local_devices():
    """(how many, what) a training process can have on this machine: GPUs, else CPU cores."""
    import os

    import torch

    if torch.cuda.is_available():
        return torch.cuda.device_count(), "GPUs"
    return os.cpu_count() or 1, "CPU cores"


def launch_errors(values, kind=None):
    """Messages for a training job's launch section (``processes``, ``accelerate_config``): a config
    file that is missing or not Accelerate's, an engine this machine or the loop cannot run, more
    processes per machine than this machine has devices, fewer rows per step than processes.
    ``kind`` (sft, reward_model, rl) supplies the job's default optimizer and what only RL refuses."""
    from rl.launch import resolve_config

    messages = {}
    processes = values.get("processes", 1)
    if not isinstance(processes, int) or isinstance(processes, bool):
        return messages  # number_errors says what is wrong with it
    machines = 1
    name = values.get("accelerate_config") or ""
    if not isinstance(name, str):
        messages["accelerate_config"] = "accelerate config must be a file path."
    elif name:
        path = resolve_config(name)
        if not Path(path).is_file():
            messages["accelerate_config"] = (f"The Accelerate config file {name!r} does not exist (give a path, e.g. "
                                             "configs/accelerate/multi_gpu.yaml).")
        else:
            from accelerate.commands.config.config_args import load_config_from_file

            try:
                cluster = load_config_from_file(path)
            except Exception as e:  # yaml, json or unknown keys: all mean "not a usable config"
                messages["accelerate_config"] = f"{name} is not an Accelerate config file: {e}"
            else:
                machines = max(1, int(getattr(cluster, "num_machines", 1) or 1))
                optimizer = values.get("optimizer", KIND_DEFAULTS.get(kind, {}).get("optimizer"))
                messages.update(engine_errors(name, cluster, kind, optimizer))
                if machines > 1 and processes > 1:
                    messages.update(machines_errors(name, cluster, processes, machines))
    if processes > 1:
        per_machine = -(-processes // machines)
        devices, what = local_devices()
        if per_machine > devices:
            messages["processes"] = (f"{processes} processes on {machines} machine(s) is {per_machine} per machine, "
                                     f"more than the {devices} {what} of this machine.")
        batch = values.get("batch_size")
        if isinstance(batch, int) and batch < processes:
            messages["batch_size"] = f"batch size {batch} is smaller than the {processes} processes (each takes rows of it)."
        if values.get("reward") == "direct":
            messages["processes"] = "Direct RLAIF runs in one process (its labeler LLM scores in the worker): set processes to 1."
    return messages


KIND_DEFAULTS = {"sft": SFT_DEFAULTS, "reward_model": RM_DEFAULTS, "rl": RL_DEFAULTS}


def machines_errors(name, cluster, processes, machines):
    """Messages for a config of several machines: the job's worker launches machine 0, the config's
    ``main_process_ip``, with ``accelerate launch`` on GPUs; the others are started with
    ``--machine_rank`` (README: Training on several GPUs / machines)."""
    import torch

    if not torch.cuda.is_available():
        return {"accelerate_config": f"{name} spans {machines} machines, which needs accelerate launch on CUDA GPUs; "
                                     "on CPUs a job runs all its processes on this machine."}
    if not getattr(cluster, "main_process_ip", None) or not getattr(cluster, "main_process_port", None):
        return {"accelerate_config": f"{name}: set main_process_ip and main_process_port to this machine's address "
                                     "and a free port (the job's worker launches machine 0 here)."}
    if int(getattr(cluster, "machine_rank", 0) or 0) != 0:
        return {"accelerate_config": f"{name}: machine_rank must be 0 (the job's worker launches machine 0; the "
                                     "others start with --machine_rank, as the job's log says)."}
    if processes % machines:
        return {"processes": f"{processes} processes do not divide among the {machines} machines of {name}."}
    return {}


def engine_errors(name, cluster, kind, optimizer):
    """Messages (by field) for an Accelerate config's engine that this machine or this job cannot run:
    FSDP and DeepSpeed need CUDA (Accelerate runs CPU processes as DDP only), DeepSpeed must be
    installed and cannot train RL, the loops need FSDP 2 and whole frozen models on every process,
    and Adafactor cannot train sharded weights (rl/distributed.py, configs/accelerate/*.yaml)."""
    import importlib.util

    import torch

    from rl.distributed import ADAFACTOR_SHARDED
    from rl.reinforce import DEEPSPEED_RL

    engine = str(getattr(cluster, "distributed_type", "")).split(".")[-1].upper()
    if engine == "MEGATRON_LM":
        return {"accelerate_config": f"{name} uses Megatron-LM, which the training loops do not support; use "
                                     "configs/accelerate/fsdp.yaml to shard the models."}
    if engine not in ("FSDP", "DEEPSPEED"):
        return {}
    label = {"FSDP": "FSDP", "DEEPSPEED": "DeepSpeed"}[engine]
    missing = []
    if engine == "DEEPSPEED" and importlib.util.find_spec("deepspeed") is None:
        missing.append("DeepSpeed is not installed in this environment (pip install deepspeed)")
    if not torch.cuda.is_available():
        missing.append(f"{label} needs CUDA GPUs and this machine has none (Accelerate runs CPU processes as DDP "
                       "only: use no config, or configs/accelerate/multi_gpu.yaml)")
    if missing:
        return {"accelerate_config": f"{name}: " + "; ".join(missing) + "."}
    if engine == "DEEPSPEED" and kind == "rl":
        return {"accelerate_config": DEEPSPEED_RL}
    settings = (cluster.fsdp_config if engine == "FSDP" else cluster.deepspeed_config) or {}
    if engine == "FSDP" and int(settings.get("fsdp_version", 1)) != 2:
        return {"accelerate_config": f"{name}: the training loops run FSDP 2 only; set fsdp_version: 2."}
    if engine == "FSDP" and settings.get("fsdp_cpu_ram_efficient_loading"):
        return {"accelerate_config": f"{name}: set fsdp_cpu_ram_efficient_loading: false (with it, only the first "
                                     "process would load the frozen models' weights; the others keep them empty)."}
    if engine == "DEEPSPEED" and settings.get("zero3_init_flag"):
        return {"accelerate_config": f"{name}: set zero3_init_flag: false (with it, every model loaded is "
                                     "partitioned, the frozen ones too, which only a DeepSpeed engine can run)."}
    if optimizer == "adafactor":
        return {"optimizer": ADAFACTOR_SHARDED}
    return {}


def _launch(params, errors, kind):
    params["accelerate_config"] = params.get("accelerate_config") or ""
    for field, message in launch_errors(params, kind).items():
        errors.add(field, message)


def policy_format_error(value, *, inherit=False):
    """A message when ``value`` is not a policy format ('' too, where a job takes its policy's)."""
    if value in POLICY_FORMATS or (inherit and value == ""):
        return None
    return (f"policy format must be one of {', '.join(POLICY_FORMATS)}"
            + (" (or empty: the starting policy's)" if inherit else "") + f"; got {value!r}.")


def _policy_format(params, errors, *, inherit=False):
    params["policy_format"] = params.get("policy_format") or ("" if inherit else "raw")
    message = policy_format_error(params["policy_format"], inherit=inherit)
    if message:
        errors.add("policy_format", message)


def resolved_policy_format(fmt, folder):
    """``raw`` or ``chat``: ``fmt`` resolved with the tokenizer in ``folder`` (auto needs to look)."""
    from rl.formats import resolve_format

    if fmt == "raw":
        return fmt
    from rl.modeling import load_tokenizer

    return resolve_format(fmt, load_tokenizer(folder))


def _optimizer(params, errors):
    if params.get("optimizer") not in OPTIMIZERS:
        errors.add("optimizer", f"optimizer must be one of {', '.join(OPTIMIZERS)}.")


def _batch_vs_data(params, errors, n, what="prompts"):
    if isinstance(params.get("batch_size"), int) and n and params["batch_size"] > n:
        errors.add("batch_size", f"batch size {params['batch_size']} is larger than the data ({n} {what}).")
    ga = params.get("gradient_accumulation_steps")
    if isinstance(ga, int) and isinstance(params.get("batch_size"), int) and ga > params["batch_size"]:
        errors.add("gradient_accumulation_steps", "gradient accumulation steps cannot exceed the batch size.")


def validate_sft(params):
    params = {**SFT_DEFAULTS, **params}
    errors = _Errors()
    if params.get("policy_id") not in (None, ""):
        _policy(params, errors)
        params.pop("base_model", None)
    else:
        from evalsite.modelzoo import is_hf_folder

        if not params.get("base_model") or not is_hf_folder(params["base_model"]):
            errors.add("base_model", "Choose a starting policy or give a Hugging Face model folder "
                                     f"(not found: {params.get('base_model')!r}).")
    _new_policy_name(params, errors)
    _policy_format(params, errors)
    _numbers(params, errors, SFT_NUMBERS)
    _optimizer(params, errors)
    _launch(params, errors, "sft")
    ids = _prompt_ids(params, errors, need_reference=True)
    _batch_vs_data(params, errors, len(ids), "prompts with a reference")
    errors.raise_if_any()
    return params


def validate_sample(params):
    params = {**SAMPLE_DEFAULTS, **params}
    errors = _Errors()
    _policy(params, errors)
    _policy_format(params, errors, inherit=True)
    _numbers(params, errors, SAMPLE_NUMBERS)
    params["make_pairs"] = bool(params.get("make_pairs"))
    if params["make_pairs"] and isinstance(params.get("n"), int) and params["n"] < 2:
        errors.add("n", "Making comparison pairs needs at least 2 samples per prompt (n ≥ 2).")
    _prompt_ids(params, errors)
    errors.raise_if_any()
    return params


def validate_reward_model(params):
    from rl.models import RewardModel

    params = {**RM_DEFAULTS, **params}
    errors = _Errors()
    name = _name(params, errors, "reward model")
    if name and RewardModel.objects.filter(name=name).exists():
        errors.add("name", f"A reward model named “{name}” already exists.")
    if params.get("policy_id") not in (None, ""):
        _policy(params, errors)
        params.pop("base_model", None)
    else:
        from evalsite.modelzoo import is_hf_folder

        if not params.get("base_model") or not is_hf_folder(params["base_model"]):
            errors.add("policy_id", "Choose the policy to initialise from (the paper uses SFT) or give a model "
                                    f"folder (not found: {params.get('base_model')!r}).")
    _policy_format(params, errors, inherit=True)
    if params.get("human_label_field") not in ("human_preference", "judge_preference"):
        errors.add("human_label_field", "human_label_field must be 'human_preference' or 'judge_preference'.")
    if params.get("labels") not in ("human", "ai"):
        errors.add("labels", "labels must be 'human' (RLHF) or 'ai' (distilled RLAIF).")
    if params.get("labels") == "ai":
        try:
            params["label_config_ids"] = sorted({int(i) for i in params.get("label_config_ids") or []})
        except (TypeError, ValueError, OverflowError):
            errors.add("label_config_ids", "label configuration ids must be whole numbers.")
        if not params.get("label_config_ids"):
            errors.add("label_config_ids", "Choose the AI labeler configuration(s) whose soft labels to train on.")
    _numbers(params, errors, RM_NUMBERS)
    _optimizer(params, errors)
    _launch(params, errors, "reward_model")
    if params.get("dataset_id") not in (None, "") or params.get("prompt_ids"):
        _prompt_ids(params, errors)
    params["include_annotator_rankings"] = bool(params.get("include_annotator_rankings"))
    if not errors:
        from rl.data import preference_pairs

        try:
            train, held_out = preference_pairs(params)
        except ValidationError as e:
            errors.add("labels", " ".join(e.messages))
        else:
            if not train:
                errors.add("labels", "No labelled comparisons match: nothing to train on.")
            _batch_vs_data(params, errors, len(train), "training pairs")
    errors.raise_if_any()
    return params


def reward_model_format_error(rm, policy, fmt=""):
    """A message when ``rm`` read its inputs in another policy format than RL would prompt
    ``policy`` in (``fmt``, or '' for the policy's own): it would score text laid out otherwise."""
    try:
        run = resolved_policy_format(fmt or policy.policy_format, policy.checkpoint_dir)
    except ValueError as e:
        return str(e)
    if rm.policy_format == run:
        return None
    return (f"Reward model “{rm.name}” was trained on {rm.policy_format}-format inputs, but this run prompts policy "
            f"“{policy.name}” in {run} format: the formats must match. Train a reward model in {run} format, "
            f"or set policy_format to {rm.policy_format}.")


def validate_rl(params):
    from rl.models import RewardModel

    params = {**RL_DEFAULTS, **params}
    errors = _Errors()
    sft = _policy(params, errors)
    _new_policy_name(params, errors)
    _policy_format(params, errors, inherit=True)
    if params.get("reward") == "reward_model" and params.get("reward_model_id") in (None, ""):
        errors.add("reward_model_id", "Choose the reward model that scores the responses.")
    elif params.get("reward") == "reward_model":
        try:
            rm = RewardModel.objects.get(pk=int(params.get("reward_model_id")))
        except (TypeError, ValueError, OverflowError, RewardModel.DoesNotExist):
            errors.add("reward_model_id", f"Unknown reward model {params.get('reward_model_id')!r}.")
        else:
            params["reward_model_id"] = rm.pk
            if not Path(rm.checkpoint_dir).is_dir():
                errors.add("reward_model_id", f"The folder of reward model “{rm.name}” does not exist: "
                                              f"{rm.checkpoint_dir}.")
            elif sft is not None and "policy_format" not in errors and "policy_id" not in errors:
                message = reward_model_format_error(rm, sft, params["policy_format"])
                if message:
                    errors.add("reward_model_id", message)
    elif params.get("reward") == "direct":
        from evalsite.modelzoo import is_hf_folder

        if not params.get("labeler_model") or not is_hf_folder(params["labeler_model"]):
            errors.add("labeler_model", "Direct RLAIF needs the labeler LLM's Hugging Face folder "
                                        f"(not found: {params.get('labeler_model')!r}).")
    else:
        errors.add("reward", "reward must be 'reward_model' (RLHF / distilled RLAIF) or 'direct' (direct RLAIF).")
    _numbers(params, errors, RL_NUMBERS)
    _optimizer(params, errors)
    _launch(params, errors, "rl")
    ids = _prompt_ids(params, errors)
    _batch_vs_data(params, errors, len(ids))
    errors.raise_if_any()
    return params
