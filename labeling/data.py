"""AI labels as data frames, and per-config alignment and position-bias summaries.

``label_frame`` is the contract other parts (reports, reward-model training) rely on. App layer,
not a core: it reads the database (the labeling cores are backends, prompts, scoring and direct).
"""
import numpy as np
import pandas as pd

from evalsite.stats import labeler_alignment, position_bias

LABEL_COLUMNS = ["comparison_id", "config_id", "config_name", "prompt_id", "p_first", "p_slot1_order1",
                 "p_slot1_order2", "label_mass", "human_preference", "judge_preference", "sample_a_id",
                 "sample_b_id", "policy_a_id", "policy_b_id"]


def label_frame(config_ids=None):
    """One row per AI label (see the brief's contract); NaN sample/policy ids where not from samples."""
    from .models import AILabel

    qs = AILabel.objects.all()
    if config_ids is not None:
        qs = qs.filter(config_id__in=list(config_ids))
    rows = qs.values_list(
        "comparison_id", "config_id", "config__name", "comparison__prompt_id", "p_first", "p_slot1_order1",
        "p_slot1_order2", "label_mass", "comparison__human_preference", "comparison__judge_preference",
        "comparison__sample_a_id", "comparison__sample_b_id", "comparison__sample_a__policy_id",
        "comparison__sample_b__policy_id").order_by("config_id", "comparison_id")
    df = pd.DataFrame.from_records(list(rows), columns=LABEL_COLUMNS)
    for col in ("sample_a_id", "sample_b_id", "policy_a_id", "policy_b_id"):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
    for col in ("p_first", "p_slot1_order1", "p_slot1_order2", "label_mass"):
        df[col] = df[col].astype(float)
    return df


def alignment_summary(df):
    """Alignment with humans and with the dataset's AI judge, position bias and label mass of one
    config's labels (a label_frame slice)."""
    out = {"n_labels": int(len(df))}
    if not len(df):
        return out
    out["human"] = labeler_alignment(df["p_first"].to_numpy(), df["human_preference"].fillna("").to_numpy())
    judged = df["judge_preference"].fillna("")
    out["judge"] = labeler_alignment(df["p_first"].to_numpy(), judged.to_numpy()) if (judged != "").any() else None
    out["position"] = position_bias(df["p_slot1_order1"].to_numpy(), df["p_slot1_order2"].to_numpy())
    out["mean_label_mass"] = float(np.mean(df["label_mass"]))
    out["low_mass_share"] = float(np.mean(df["label_mass"] < 0.5))
    return out


def config_summaries(config_ids=None):
    df = label_frame(config_ids)
    return {cid: alignment_summary(part) for cid, part in df.groupby("config_id")}


USAGE_COLUMNS = ["config_id", "config_name", "backend", "n_labels", "n_bounded", "prompt_tokens", "completion_tokens",
                 "price_prompt_per_mtok", "price_completion_per_mtok", "cost_usd"]


def usage_by_config(config_ids=None):
    """Per config: its labels, how many are bounded (a label token was not among a server's top
    alternatives), the tokens they took and their cost at the config's prices (NaN without prices)."""
    from django.db.models import Count, Q, Sum

    from .models import LabelerConfig

    qs = LabelerConfig.objects.all()
    if config_ids is not None:
        qs = qs.filter(pk__in=list(config_ids))
    rows = []
    for c in qs.annotate(n=Count("labels"), n_bounded=Count("labels", filter=Q(labels__bounded=True)),
                         prompt=Sum("labels__prompt_tokens"), completion=Sum("labels__completion_tokens")) \
            .filter(n__gt=0).order_by("pk"):
        prompt, completion = int(c.prompt or 0), int(c.completion or 0)
        rows.append({"config_id": c.pk, "config_name": c.name, "backend": c.get_backend_display(), "n_labels": c.n,
                     "n_bounded": c.n_bounded, "prompt_tokens": prompt, "completion_tokens": completion,
                     "price_prompt_per_mtok": float(c.price_prompt_per_mtok),
                     "price_completion_per_mtok": float(c.price_completion_per_mtok),
                     "cost_usd": c.cost(prompt, completion) if c.has_prices else np.nan})
    return pd.DataFrame(rows, columns=USAGE_COLUMNS)
