"""Experiment presets: budgets and the stages' settings. Plain data; a config overrides any key.

A stage's section (sft, pairs, reward_model, rl, eval) holds settings of its job kind and only
where they depart from the job's defaults (rl/config.py holds each setting's default, range and
help); the experiment's checks refuse a key that is no setting (pipeline.config_errors).

``demo`` fits a laptop CPU in about 15 minutes with SmolLM2-135M-Instruct: a few dozen prompts
per stage and a few RL steps, enough to see every stage work and every figure appear (not to
see RLAIF beat SFT). ``paper`` is the paper's setup (docs/method.md §3), for GPUs and real
datasets: its reward model and RL take the values the paper states, from rl/config.py.
"""
import copy

from rl.config import RewardModelConfig, RLConfig, paper_settings

PRESETS = {
    "demo": {
        "seed": 0,
        "policy_format": "raw",        # rl/formats.py: raw, chat or auto (README: Policy formats)
        # prompts per stage (disjoint, drawn from the dataset with a seeded shuffle)
        "sft_prompts": 24, "pair_prompts": 24, "rl_prompts": 16, "eval_prompts": 12,
        "alignment_comparisons": 64,   # dataset comparisons with human/judge labels to label
        "human_pairs": 48,             # labelled comparisons the RLHF reward model trains on
        "sft": {"batch_size": 4, "max_prompt_tokens": 384, "max_response_tokens": 48},
        "pairs": {"n": 2, "max_new_tokens": 40, "batch_size": 8, "max_prompt_tokens": 384},
        "labeler": {"preamble_variant": "base", "batch_size": 4, "max_prompt_tokens": 1024},
        "reward_model": {"epochs": 1, "batch_size": 4, "max_length": 384, "eval_fraction": 0.25, "optimizer": "adamw"},
        "rl": {"batch_size": 4, "epochs": 1, "max_prompt_tokens": 384, "max_response_tokens": 32, "save_every": 2},
        "eval": {"temperature": 0.7, "max_new_tokens": 40, "batch_size": 8, "max_prompt_tokens": 384},
        "round": {"overlap": 1, "question": "rank"},
    },
    "paper": {
        # docs/method.md §2-3: RM Adafactor lr 1e-5, batch 128/32, max input 1152, 2-3 epochs;
        # RL batch 128, lr 1e-5, 8 epochs, T = 0.9, beta = 0.05; ~2k rated inputs, 3 raters each.
        "seed": 0,
        "policy_format": "raw",        # the paper's: base models continue the text
        "sft_prompts": 10000, "pair_prompts": 10000, "rl_prompts": 4000, "eval_prompts": 2000,
        "alignment_comparisons": 2000, "human_pairs": 100000,
        "sft": {"batch_size": 32, "learning_rate": 1e-5, "max_prompt_tokens": 1024, "max_response_tokens": 128},
        "pairs": {"n": 2, "temperature": 1.0, "max_new_tokens": 128, "batch_size": 64, "max_prompt_tokens": 1024},
        "labeler": {"preamble_variant": "detailed", "batch_size": 16, "max_prompt_tokens": 4096},
        "reward_model": paper_settings(RewardModelConfig),
        "rl": {**paper_settings(RLConfig), "max_prompt_tokens": 1024, "max_response_tokens": 128},
        "eval": {"temperature": 0.7, "max_new_tokens": 128, "batch_size": 64, "max_prompt_tokens": 1024},
        "round": {"overlap": 3, "question": "rank"},
    },
}

DEFAULT_ARMS = ["sft", "rlhf", "rlaif_distilled", "rlaif_direct"]


def merged_config(preset, overrides=None):
    """The preset with ``overrides`` merged in (nested dicts merge key by key)."""
    if preset not in PRESETS:
        raise ValueError(f"Unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}.")
    config = copy.deepcopy(PRESETS[preset])
    for key, value in (overrides or {}).items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key].update(value)
        else:
            config[key] = value
    return config
