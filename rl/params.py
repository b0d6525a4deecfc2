"""Validation of the training jobs' parameters (used by Job.submit and by the admin forms).

Each ``validate_*`` returns cleaned params (defaults filled in, numbers typed) or raises a
ValidationError whose message dict names the bad fields, so forms can show them in place.
"""
from django.core.exceptions import ValidationError

from evalsite.models import Dataset, Policy, Prompt

SFT_DEFAULTS = {"learning_rate": 2e-5, "epochs": 1, "batch_size": 8, "gradient_accumulation_steps": 1,
                "max_prompt_tokens": 512, "max_response_tokens": 128, "optimizer": "adamw", "seed": 0}
SAMPLE_DEFAULTS = {"n": 1, "temperature": 0.9, "top_p": 1.0, "max_new_tokens": 64, "seed": 0, "make_pairs": False,
                   "batch_size": 16, "max_prompt_tokens": 1024}
# human_label_field: "judge_preference" trains the "human" reward model on a dataset's external AI
# judge (e.g. GPT-4 on TL;DR, which ships no human labels) as a stated stand-in for people.
RM_DEFAULTS = {"labels": "human", "label_config_ids": [], "include_annotator_rankings": True, "eval_fraction": 0.1,
               "human_label_field": "human_preference",
               "learning_rate": 1e-5, "epochs": 2, "batch_size": 32, "gradient_accumulation_steps": 1,
               "max_length": 1152, "optimizer": "adafactor", "seed": 0}
RL_DEFAULTS = {"reward": "reward_model", "beta": 0.05, "temperature": 0.9, "top_p": 1.0, "batch_size": 16,
               "learning_rate": 1e-5, "value_learning_rate": 0.0, "epochs": 8, "max_prompt_tokens": 512,
               "max_response_tokens": 64, "gradient_accumulation_steps": 1, "generation_batch_size": 0,
               "optimizer": "adafactor", "max_grad_norm": 1.0, "save_every": 25, "seed": 0}
OPTIMIZERS = ("adamw", "adafactor")


class _Errors(dict):
    def add(self, field, message):
        self.setdefault(field, []).append(message)

    def raise_if_any(self):
        if self:
            raise ValidationError(dict(self))


def _number(params, errors, field, kind, *, minimum=None, maximum=None, strict_min=False, strict_max=False):
    value = params.get(field)
    try:
        if isinstance(value, bool):
            raise ValueError
        value = kind(value)
        if kind is int and float(params.get(field)) != value:
            raise ValueError
        if kind is float and value != value:  # NaN
            raise ValueError
    except (TypeError, ValueError):
        errors.add(field, f"{field.replace('_', ' ')} must be {'a whole number' if kind is int else 'a number'} "
                          f"(got {params.get(field)!r}).")
        return
    if minimum is not None and (value <= minimum if strict_min else value < minimum):
        errors.add(field, f"{field.replace('_', ' ')} must be {'greater than' if strict_min else 'at least'} {minimum}.")
    elif maximum is not None and (value >= maximum if strict_max else value > maximum):
        errors.add(field, f"{field.replace('_', ' ')} must be {'less than' if strict_max else 'at most'} {maximum}.")
    params[field] = value


def _policy(params, errors, field="policy_id", *, need_checkpoint=True):
    pid = params.get(field)
    try:
        policy = Policy.objects.get(pk=int(pid))
    except (TypeError, ValueError, Policy.DoesNotExist):
        errors.add(field, f"Unknown policy {pid!r}.")
        return None
    params[field] = policy.pk
    if need_checkpoint and not policy.checkpoint_dir:
        errors.add(field, f"Policy “{policy.name}” has no checkpoint folder to load (it is {policy.get_kind_display()}).")
    return policy


def _prompt_ids(params, errors, *, need_reference=False):
    """Resolve ``prompt_ids`` or ``dataset_id`` to a sorted list of prompt ids (never empty)."""
    if params.get("prompt_ids"):
        try:
            wanted = sorted({int(i) for i in params["prompt_ids"]})
        except (TypeError, ValueError):
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
        except (TypeError, ValueError, Dataset.DoesNotExist):
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


def _new_policy_name(params, errors):
    name = str(params.get("name") or "").strip()
    if not name:
        errors.add("name", "Give the new policy a name.")
    elif Policy.objects.filter(name=name).exists():
        errors.add("name", f"A policy named “{name}” already exists.")
    params["name"] = name


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
    _number(params, errors, "learning_rate", float, minimum=0, strict_min=True, maximum=1)
    for field in ("epochs", "batch_size", "gradient_accumulation_steps", "max_prompt_tokens", "max_response_tokens"):
        _number(params, errors, field, int, minimum=1)
    _number(params, errors, "seed", int, minimum=0)
    _optimizer(params, errors)
    ids = _prompt_ids(params, errors, need_reference=True)
    _batch_vs_data(params, errors, len(ids), "prompts with a reference")
    errors.raise_if_any()
    return params


def validate_sample(params):
    params = {**SAMPLE_DEFAULTS, **params}
    errors = _Errors()
    _policy(params, errors)
    _number(params, errors, "n", int, minimum=1, maximum=64)
    _number(params, errors, "temperature", float, minimum=0)
    _number(params, errors, "top_p", float, minimum=0, strict_min=True, maximum=1)
    _number(params, errors, "max_new_tokens", int, minimum=1, maximum=4096)
    _number(params, errors, "batch_size", int, minimum=1)
    _number(params, errors, "max_prompt_tokens", int, minimum=1)
    _number(params, errors, "seed", int, minimum=0)
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
    name = str(params.get("name") or "").strip()
    if not name:
        errors.add("name", "Give the reward model a name.")
    elif RewardModel.objects.filter(name=name).exists():
        errors.add("name", f"A reward model named “{name}” already exists.")
    params["name"] = name
    if params.get("policy_id") not in (None, ""):
        _policy(params, errors)
        params.pop("base_model", None)
    else:
        from evalsite.modelzoo import is_hf_folder

        if not params.get("base_model") or not is_hf_folder(params["base_model"]):
            errors.add("policy_id", "Choose the policy to initialise from (the paper uses SFT) or give a model "
                                    f"folder (not found: {params.get('base_model')!r}).")
    if params.get("human_label_field") not in ("human_preference", "judge_preference"):
        errors.add("human_label_field", "human_label_field must be 'human_preference' or 'judge_preference'.")
    if params.get("labels") not in ("human", "ai"):
        errors.add("labels", "labels must be 'human' (RLHF) or 'ai' (distilled RLAIF).")
    if params.get("labels") == "ai":
        try:
            params["label_config_ids"] = sorted({int(i) for i in params.get("label_config_ids") or []})
        except (TypeError, ValueError):
            errors.add("label_config_ids", "label configuration ids must be whole numbers.")
        if not params.get("label_config_ids"):
            errors.add("label_config_ids", "Choose the AI labeler configuration(s) whose soft labels to train on.")
    _number(params, errors, "eval_fraction", float, minimum=0, maximum=0.9)
    _number(params, errors, "learning_rate", float, minimum=0, strict_min=True, maximum=1)
    for field in ("epochs", "batch_size", "gradient_accumulation_steps", "max_length"):
        _number(params, errors, field, int, minimum=1)
    _number(params, errors, "seed", int, minimum=0)
    _optimizer(params, errors)
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


def validate_rl(params):
    from rl.models import RewardModel

    params = {**RL_DEFAULTS, **params}
    errors = _Errors()
    _policy(params, errors)
    _new_policy_name(params, errors)
    if params.get("reward") == "reward_model" and params.get("reward_model_id") in (None, ""):
        errors.add("reward_model_id", "Choose the reward model that scores the responses.")
    elif params.get("reward") == "reward_model":
        try:
            params["reward_model_id"] = RewardModel.objects.get(pk=int(params.get("reward_model_id"))).pk
        except (TypeError, ValueError, RewardModel.DoesNotExist):
            errors.add("reward_model_id", f"Unknown reward model {params.get('reward_model_id')!r}.")
    elif params.get("reward") == "direct":
        from evalsite.modelzoo import is_hf_folder

        if not params.get("labeler_model") or not is_hf_folder(params["labeler_model"]):
            errors.add("labeler_model", "Direct RLAIF needs the labeler LLM's Hugging Face folder "
                                        f"(not found: {params.get('labeler_model')!r}).")
    else:
        errors.add("reward", "reward must be 'reward_model' (RLHF / distilled RLAIF) or 'direct' (direct RLAIF).")
    _number(params, errors, "beta", float, minimum=0, maximum=1)
    _number(params, errors, "temperature", float, minimum=0, strict_min=True)
    _number(params, errors, "top_p", float, minimum=0, strict_min=True, maximum=1)
    _number(params, errors, "learning_rate", float, minimum=0, strict_min=True, maximum=1)
    _number(params, errors, "value_learning_rate", float, minimum=0, maximum=1)
    _number(params, errors, "max_grad_norm", float, minimum=0, strict_min=True)
    for field in ("batch_size", "epochs", "max_prompt_tokens", "max_response_tokens", "gradient_accumulation_steps",
                  "save_every"):
        _number(params, errors, field, int, minimum=1)
    _number(params, errors, "generation_batch_size", int, minimum=0)
    _number(params, errors, "seed", int, minimum=0)
    _optimizer(params, errors)
    ids = _prompt_ids(params, errors)
    _batch_vs_data(params, errors, len(ids))
    errors.raise_if_any()
    return params
