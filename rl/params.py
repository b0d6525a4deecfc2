"""Validation of the training jobs' parameters (used by the job runtime's submit and by the admin forms).

App layer, not a core: it checks the training settings against their dataclasses (rl/config.py)
and what the parameters name against the database (policies, prompts, datasets, reward models,
labels). Each ``validate_*`` returns cleaned params (defaults filled in, numbers typed) or raises
a ValidationError whose message dict names the bad fields, so forms can show them in place.
"""
from pathlib import Path

from django.core.exceptions import ValidationError

from evalsite.models import Dataset, Policy, Prompt
from rl import kinds
from rl.config import RewardModelConfig, RLConfig, SamplingConfig, SFTConfig, check_settings, setting_defaults

# A job's params are its training settings (rl/config.py: their defaults come from there) and what
# it works on (policy, prompts, labels: the defaults written here).
# human_label_field: "judge_preference" trains the "human" reward model on a dataset's external AI
# judge (e.g. GPT-4 on TL;DR, which ships no human labels) as a stated stand-in for people.
SFT_DEFAULTS = setting_defaults(SFTConfig)
SAMPLE_DEFAULTS = {**setting_defaults(SamplingConfig), "make_pairs": False}
RM_DEFAULTS = {"labels": "human", "label_config_ids": [], "include_annotator_rankings": True,
               "human_label_field": "human_preference", **setting_defaults(RewardModelConfig)}
RL_DEFAULTS = {"reward": "reward_model", **setting_defaults(RLConfig)}


class _Errors(dict):
    def add(self, field, message):
        self.setdefault(field, []).append(message)

    def raise_if_any(self):
        if self:
            raise ValidationError(dict(self))


def _settings(params, errors, config):
    """Type and check the training settings of ``config`` in ``params`` (ranges, choices; empty
    texts and choices take their defaults)."""
    checked, messages = check_settings(config, params)
    params.update(checked)
    for field, texts in messages.items():
        for text in texts:
            errors.add(field, text)


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
    """Messages for a training job's launch section (``processes``, ``accelerate_config``), beyond
    their types and ranges (rl/config.py): a config file that is missing or not Accelerate's, an
    engine this machine or the loop cannot run, more processes per machine than this machine has
    devices, fewer rows per step than processes.
    ``kind`` (sft, reward_model, rl) supplies the job's default optimizer and what only RL refuses."""
    from rl.launch import resolve_config

    messages = {}
    processes = values.get("processes", 1)
    if not isinstance(processes, int) or isinstance(processes, bool):
        return messages  # check_settings says what is wrong with it
    machines = 1
    name = values.get("accelerate_config") or ""
    if not isinstance(name, str):
        return messages  # check_settings says what is wrong with it
    if name:
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


KIND_DEFAULTS = {kinds.SFT: SFT_DEFAULTS, kinds.REWARD_MODEL: RM_DEFAULTS, kinds.RL: RL_DEFAULTS}


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

    from rl.distributed import ADAFACTOR_SHARDED, engine as engine_of
    from rl.reinforce import DEEPSPEED_RL

    engine = engine_of(cluster)
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
    if engine == "DEEPSPEED" and kind == kinds.RL:
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


def resolved_policy_format(fmt, folder):
    """``raw`` or ``chat``: ``fmt`` resolved with the tokenizer in ``folder`` (auto needs to look)."""
    from rl.formats import resolve_format

    if fmt == "raw":
        return fmt
    from rl.modeling import load_tokenizer

    return resolve_format(fmt, load_tokenizer(folder))


def _batch_vs_data(params, errors, n, what="prompts"):
    if isinstance(params.get("batch_size"), int) and n and params["batch_size"] > n:
        errors.add("batch_size", f"batch size {params['batch_size']} is larger than the data ({n} {what}).")
    ga = params.get("gradient_accumulation_steps")
    if isinstance(ga, int) and isinstance(params.get("batch_size"), int) and ga > params["batch_size"]:
        errors.add("gradient_accumulation_steps", "gradient accumulation steps cannot exceed the batch size.")


def _starting_model(params, errors, field, message):
    """What training starts from: a policy (``policy_id``), or else a Hugging Face folder (``base_model``)."""
    if params.get("policy_id") not in (None, ""):
        _policy(params, errors)
        params.pop("base_model", None)
        return
    from evalsite.modelzoo import is_hf_folder

    if not params.get("base_model") or not is_hf_folder(params["base_model"]):
        errors.add(field, f"{message} (not found: {params.get('base_model')!r}).")


def validate_sft(params):
    params = {**SFT_DEFAULTS, **params}
    errors = _Errors()
    _starting_model(params, errors, "base_model", "Choose a starting policy or give a Hugging Face model folder")
    _new_policy_name(params, errors)
    _settings(params, errors, SFTConfig)
    _launch(params, errors, kinds.SFT)
    ids = _prompt_ids(params, errors, need_reference=True)
    _batch_vs_data(params, errors, len(ids), "prompts with a reference")
    errors.raise_if_any()
    return params


def validate_sample(params):
    params = {**SAMPLE_DEFAULTS, **params}
    errors = _Errors()
    _policy(params, errors)
    _settings(params, errors, SamplingConfig)
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
    _starting_model(params, errors, "policy_id",
                    "Choose the policy to initialise from (the paper uses SFT) or give a model folder")
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
    _settings(params, errors, RewardModelConfig)
    _launch(params, errors, kinds.REWARD_MODEL)
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
    _settings(params, errors, RLConfig)
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
    _launch(params, errors, kinds.RL)
    ids = _prompt_ids(params, errors)
    _batch_vs_data(params, errors, len(ids))
    errors.raise_if_any()
    return params
