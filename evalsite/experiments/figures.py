"""Key figures of an experiment, read from its stages' artifacts (for its page and the CLI)."""
import math

from evalsite import stats
from evalsite.models import Policy
from evalsite.jobs.models import JobMetric


def _clean(x):
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else x


def labeler_figures(exp):
    """Alignment with human / judge labels and position bias of the experiment's labeler."""
    from labeling.data import alignment_summary, label_frame

    out = {}
    cfg = exp.artifacts.get("alignment_config_id") or exp.labeler_config_id
    if not cfg:
        return out
    frame = label_frame([cfg])
    align_ids = set()
    if exp.stages.get("label_alignment"):
        from evalsite.jobs.models import Job

        job = Job.objects.filter(pk=exp.stages["label_alignment"]).first()
        align_ids = set(job.params.get("comparison_ids", [])) if job else set()
    if align_ids:
        out["alignment"] = alignment_summary(frame[frame["comparison_id"].isin(align_ids)])
    pair_ids = set(exp.artifacts.get("pair_comparison_ids", []))
    if pair_ids:
        out["sft_pairs"] = alignment_summary(frame[frame["comparison_id"].isin(pair_ids)])
    return out


def reward_model_figures(exp):
    from rl.models import RewardModel

    out = {}
    for key, label in (("rm_human_id", "RLHF reward model (human labels)"),
                       ("rm_ai_id", "Distilled RLAIF reward model (AI labels)"),
                       ("rm_same_size_id", "Same-size RLAIF reward model")):
        rm = RewardModel.objects.filter(pk=exp.artifacts.get(key)).first()
        if rm is None:
            continue
        m = rm.metrics or {}
        if (rm.metadata.get("config") or {}).get("human_label_field") == "judge_preference":
            label = "RLHF reward model (the dataset's AI-judge labels standing in for human ones)"
        out[key] = {"name": rm.name, "id": rm.pk, "n_train": rm.n_train_pairs, "n_eval": rm.n_eval_pairs,
                    "held_out": m.get("held_out"), "held_out_vs_human": m.get("held_out_vs_human"),
                    "train": m.get("train"), "label": label}
    return out


def rl_figures(exp):
    out = {}
    for name, job_id in exp.stages.items():
        if not name.startswith("rl_") or not job_id:
            continue
        rows = list(JobMetric.objects.filter(job_id=job_id).order_by("step").values_list("step", "values"))
        if not rows:
            continue
        first, last = rows[0][1], rows[-1][1]
        out[name[3:]] = {
            "job_id": job_id, "steps": len(rows),
            "reward_start": first.get("reward_mean"), "reward_end": last.get("reward_mean"),
            "kl_start": first.get("kl"), "kl_end": last.get("kl"),
            "curve": [{"step": s, "reward_mean": v.get("reward_mean"), "kl": v.get("kl")} for s, v in rows],
        }
    return out


def judge_figures(exp, n_boot=1000):
    """AI-judge win rates between arms (soft outcomes, prompt-bootstrap intervals)."""
    from labeling.data import label_frame

    ids = set(exp.artifacts.get("judge_comparison_ids", []))
    cfg = exp.labeler_config_id
    if not ids or not cfg:
        return []
    frame = label_frame([cfg])
    frame = frame[frame["comparison_id"].isin(ids)]
    outcomes = stats.ai_judge_outcomes(frame)
    if outcomes.empty:
        return []
    names = dict(Policy.objects.filter(pk__in=set(outcomes["policy_a"]) | set(outcomes["policy_b"]))
                 .values_list("pk", "name"))
    table = stats.win_rate_matrix(outcomes, n_boot=n_boot, names=names)
    sft = exp.artifacts.get("sft_policy_id")
    rows = []
    for r in table.itertuples(index=False):
        rows.append({"policy": r.policy_name, "opponent": r.opponent_name, "win_rate": _clean(float(r.win_rate)),
                     "ci_low": _clean(float(r.ci_low)), "ci_high": _clean(float(r.ci_high)), "n": float(r.n),
                     "p_value": _clean(float(r.p_value)), "vs_sft": int(r.opponent) == sft})
    return rows


def all_figures(exp):
    out = {}
    for key, fn in (("labeler", labeler_figures), ("reward_models", reward_model_figures), ("rl", rl_figures),
                    ("judge", judge_figures)):
        try:
            out[key] = fn(exp)
        except Exception as e:  # a figure that cannot be computed yet must not break the page
            out[key] = {"error": f"{type(e).__name__}: {e}"}
    return out
