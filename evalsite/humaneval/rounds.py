"""Setting up rounds: items from prompts, the samples check, sampling jobs, open and close."""
import builtins
import random

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Count, Q
from django.utils import timezone

from evalsite import rawsql
from evalsite.humaneval.models import Assignment, EvalItem, EvalRound, Ranking
from evalsite.models import Sample
from evalsite.jobs import runtime as jobs
from rl.kinds import SAMPLE

SAMPLE_KIND = SAMPLE


def set_prompts(round, prompt_ids, seed=0):
    """Give a draft round one item per prompt, queued in a seeded random order."""
    if round.status != EvalRound.Status.DRAFT:
        raise ValidationError("The prompts of an opened round cannot change.")
    if Assignment.objects.filter(round=round).exists():
        raise ValidationError("Annotators already worked on this round; its prompts cannot change.")
    ids = list(dict.fromkeys(int(i) for i in prompt_ids))
    if not ids:
        raise ValidationError("Choose at least one prompt.")
    order = list(ids)
    random.Random(seed).shuffle(order)
    with transaction.atomic():
        EvalItem.objects.filter(round=round).delete()
        EvalItem.objects.bulk_create([EvalItem(round=round, prompt_id=pid, position=i) for i, pid in enumerate(order)])
    return len(order)


def missing_samples(round):
    """``{policy: [prompt_id, ...]}`` for every policy lacking its sample (round.sample_index) for a prompt."""
    prompt_ids = set(round.items.values_list("prompt_id", flat=True))
    missing = {}
    for policy in round.policies.order_by("name"):
        have = set(
            Sample.objects.filter(policy=policy, prompt_id__in=prompt_ids, index=round.sample_index)
            .values_list("prompt_id", flat=True)
        )
        lacking = sorted(prompt_ids - have)
        if lacking:
            missing[policy] = lacking
    return missing


def describe_missing(round, missing, limit=10):
    n_prompts = round.items.count()
    lines = []
    for policy, ids in missing.items():
        shown = ", ".join(str(i) for i in ids[:limit]) + (f", … ({len(ids) - limit} more)" if len(ids) > limit else "")
        lines.append(
            f"Policy “{policy.name}” has no sample #{round.sample_index} for {len(ids)} of {n_prompts} prompts "
            f"(prompt ids {shown})."
        )
    return lines


def sampling_available():
    try:
        jobs.get_kind(SAMPLE_KIND)
        return True
    except ValidationError:
        return False


def start_sampling(round, user=None, **generation):
    """Submit one ``sample`` job per policy with missing samples; returns the jobs."""
    missing = missing_samples(round)
    if not missing:
        return []
    if not sampling_available():
        raise ValidationError(
            "Sampling is not available in this installation yet (no 'sample' job kind is registered). "
            "Add the missing samples another way, e.g. by importing them."
        )
    unsampleable = [p.name for p in missing if not p.checkpoint_dir]
    if unsampleable:
        raise ValidationError(
            f"These policies have no checkpoint to sample from: {', '.join(unsampleable)}. "
            "Import their samples instead."
        )
    params = {"n": round.sample_index + 1, "temperature": 0.9, "top_p": 1.0, "max_new_tokens": 64, "seed": 0,
              "make_pairs": False, **generation}
    started = []
    with transaction.atomic():
        for policy, prompt_ids in missing.items():
            started.append(jobs.submit(
                SAMPLE_KIND, {**params, "policy_id": policy.pk, "prompt_ids": prompt_ids},
                name=f"Samples of {policy.name} for round “{round.name}”", user=user,
            ))
    return started


def open_round(round):
    """Attach each policy's sample to every item and open the round; refuses while samples are missing."""
    if round.status == EvalRound.Status.OPEN:
        return round
    if not round.items.exists():
        raise ValidationError("The round has no prompts.")
    policies = list(round.policies.all())
    if len(policies) < 2 and round.asks_rank:
        raise ValidationError("Ranking needs at least two policies.")
    if not policies:
        raise ValidationError("Choose at least one policy.")
    missing = missing_samples(round)
    if missing:
        raise ValidationError(["The round cannot open while samples are missing:"] + describe_missing(round, missing))
    with transaction.atomic():
        round = EvalRound.objects.select_for_update().get(pk=round.pk)
        if not Assignment.objects.filter(round=round).exists():
            # Samples are fixed when the round first opens; reopening keeps what annotators saw.
            through = EvalItem.samples.through
            items = dict(round.items.values_list("prompt_id", "pk"))
            through.objects.filter(evalitem__round=round).delete()
            rows = Sample.objects.filter(policy__in=policies, prompt_id__in=items, index=round.sample_index).values_list(
                "pk", "prompt_id"
            )
            through.objects.bulk_create([through(evalitem_id=items[prompt_id], sample_id=sid) for sid, prompt_id in rows])
        round.status = EvalRound.Status.OPEN
        round.opened_at = round.opened_at or timezone.now()
        round.closed_at = None
        round.metadata = {**round.metadata, "n_items": round.items.count()}
        round.save(update_fields=["status", "opened_at", "closed_at", "metadata"])
    _refresh_planner_statistics()
    return round


def _refresh_planner_statistics():
    """Let PostgreSQL see the items just added before annotators arrive.

    The queue finds the next free item by walking the round's items in queue order and
    stopping at the first with a free slot. On statistics older than a bulk insert the planner
    instead counts the slots of every item in the round (8 ms instead of 0.2 ms per "next" on
    3,000 items); autovacuum would catch up only a minute or more later.
    """
    rawsql.analyze(EvalItem, EvalItem.samples.through, Assignment)


def close_round(round):
    EvalRound.objects.filter(pk=round.pk).update(status=EvalRound.Status.CLOSED, closed_at=timezone.now())
    round.refresh_from_db()
    return round


def round_progress(round):
    now = timezone.now()
    items = round.items.count()
    live = Ranking.objects.filter(round=round, withdrawn_at__isnull=True)
    return {
        "items": items,
        "needed": items * round.overlap,
        "submitted": live.count(),
        "complete_items": round.items.filter(n_submitted__gte=round.overlap).count(),
        "in_progress": Assignment.objects.filter(round=round, status=Assignment.Status.LEASED, expires_at__gt=now).count(),
        "skipped": Assignment.objects.filter(round=round, status=Assignment.Status.SKIPPED).count(),
        "withdrawn": Ranking.objects.filter(round=round, withdrawn_at__isnull=False).count(),
    }


def annotator_counts(round):
    """One row per annotator who touched the round: submitted, skipped, in progress, median seconds."""
    now = timezone.now()
    rows = (
        Assignment.objects.filter(round=round).values("annotator_id", "annotator__username")
        .annotate(
            submitted=Count("id", filter=Q(status=Assignment.Status.SUBMITTED)),
            skipped=Count("id", filter=Q(status=Assignment.Status.SKIPPED)),
            in_progress=Count("id", filter=Q(status=Assignment.Status.LEASED, expires_at__gt=now)),
        )
        .order_by("annotator__username")
    )
    times = {}
    for uid, ms in Ranking.objects.filter(round=round, withdrawn_at__isnull=True, time_on_page_ms__isnull=False).values_list(
        "annotator_id", "time_on_page_ms"
    ):
        times.setdefault(uid, []).append(ms)
    out = []
    for r in rows:
        t = sorted(times.get(r["annotator_id"], []))
        out.append({
            "annotator": r["annotator__username"], "submitted": r["submitted"], "skipped": r["skipped"],
            "in_progress": r["in_progress"],
            "median_seconds": builtins.round(t[len(t) // 2] / 1000, 1) if t else None,
        })
    return out
