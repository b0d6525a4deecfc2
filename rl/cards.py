"""Model cards from the database: what rl.export's card writers need, read from jobs and rows."""
from evalsite.models import Dataset
from evalsite.jobs.models import JobMetric
from rl import params as P
from rl.export import policy_card, reward_model_card


def _datasets(prompt_ids):
    rows = Dataset.objects.filter(prompts__pk__in=list(prompt_ids)).distinct().order_by("name", "split")
    return [{"name": d.name, "split": d.split, "source": d.source} for d in rows]


def _label_config_names(ids):
    if not ids:
        return []
    from labeling.models import LabelerConfig

    names = dict(LabelerConfig.objects.filter(pk__in=ids).values_list("pk", "name"))
    return [f"{names.get(i, '?')} (#{i})" for i in ids]


def reward_model_card_text(rm, *, tokenizer, causal, prompt_ids):
    """Card of a RewardModel row (saved or not yet): the job's data, labels and held-out metrics."""
    config = (rm.metadata or {}).get("config") or {}
    return reward_model_card({
        "name": rm.name, "labels": rm.labels, "base_model": rm.base_model,
        "task": rm.task.slug if rm.task_id else None, "datasets": _datasets(prompt_ids),
        "label_configs": _label_config_names(rm.label_config_ids), "n_train_pairs": rm.n_train_pairs,
        "n_eval_pairs": rm.n_eval_pairs, "metrics": rm.metrics, "config": config,
        "max_length": config.get("max_length"), "pad_token": tokenizer.pad_token, "job_id": rm.job_id,
        "causal": causal,
    })


def sft_card_text(params, *, job_id, base_model, parent, prompts, losses):
    return policy_card({
        "name": params["name"], "arm": "sft", "base_model": base_model,
        "parent": parent.name if parent else None, "datasets": _datasets(x.pk for x in prompts),
        "steps": len(losses), "final_loss": losses[-1] if losses else None,
        "config": {k: params[k] for k in P.SFT_DEFAULTS if k in params}, "job_id": job_id,
    })


def rl_card_text(params, *, job_id, arm, base_model, sft, prompts, reward_source, steps):
    """The final reward and KL are the last recorded step's (kept across resumes)."""
    last = JobMetric.objects.filter(job_id=job_id).order_by("-step").first()
    values = last.values if last else {}
    return policy_card({
        "name": params["name"], "arm": arm, "base_model": base_model, "parent": sft.name,
        "datasets": _datasets(x.pk for x in prompts), "reward_source": reward_source, "beta": params.get("beta"),
        "steps": steps, "final_reward": values.get("reward_mean"), "final_kl": values.get("kl"),
        "config": {k: params[k] for k in P.RL_DEFAULTS if k in params}, "job_id": job_id,
    })
