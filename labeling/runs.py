"""Labeling runs: which comparisons a run covers, and how a run's status follows its chunks.

How a run works (and why):

* A ``label`` job (the *run*) resolves its set of comparisons, leaves out the ones this config
  already labeled, submits ``label_chunk`` child jobs of ``chunk_size`` comparisons each, and
  hands over to them (the job runtime's fan-out): it never blocks a worker waiting for its
  children, so any number of workers take the chunks in parallel, including the one that
  dispatched them.
* The runtime keeps the run's row in step with its chunks as each one ends; :func:`summarize_run`
  says how. The run shows ``running`` with the share of comparisons labeled while any chunk is
  queued or running, then ``succeeded``, ``failed`` (naming the failed chunks) or ``cancelled``.
  The run's result adds up its chunks' tokens (prompt and completion, as the server counted
  them), labels bounded or dropped because a label token was not among a server's top
  alternatives, and the cost at the config's prices.
* Idempotent: labels are unique per (comparison, config) and written with ``bulk_create``
  ignoring conflicts, a chunk skips what is already labeled, and re-running the run (``resume``)
  re-queues its failed or cancelled chunks and creates chunks only for comparisons no chunk
  covers. A killed chunk loses at most the batch it was scoring.
* Cancel: cancelling the run cancels its queued and running chunks (the job runtime cascades
  to children); the run becomes ``cancelled`` once they have stopped. Resume continues.
"""
from django.core.exceptions import ValidationError
from django.db import transaction

from evalsite.jobs import runtime as jobs
from evalsite.jobs.runtime import MAX_ID, id_list

from . import kinds

RUN_KIND = kinds.LABEL
CHUNK_KIND = kinds.LABEL_CHUNK
DEFAULT_CHUNK_SIZE = 64
# The largest id (and LIMIT) the databases take: a bigger number is refused here, not by the driver.


def comparison_queryset(params):
    """The comparisons a run's params select (a dataset, filters, explicit ids, policies)."""
    from evalsite.models import Comparison

    qs = Comparison.objects.all()
    if params.get("comparison_ids"):
        qs = qs.filter(pk__in=params["comparison_ids"])
    if params.get("dataset_id"):
        qs = qs.filter(prompt__dataset_id=params["dataset_id"])
    if params.get("policy_ids"):
        ids = params["policy_ids"]
        qs = qs.filter(sample_a__policy_id__in=ids, sample_b__policy_id__in=ids)
    if params.get("human_labeled_only"):
        qs = qs.filter(human_preference__in=["first", "second", "tie"])
    if params.get("prompt_ids"):
        qs = qs.filter(prompt_id__in=params["prompt_ids"])
    qs = qs.order_by("pk")
    if params.get("limit"):
        qs = qs[: int(params["limit"])]
    return qs


def validate_run_params(params):
    """Clean and check the params of a labeling run; clear messages for each problem."""
    from evalsite.models import Dataset, Policy

    from .models import LabelerConfig

    errors = {}
    p = dict(params)
    config = None
    try:
        config = LabelerConfig.objects.select_related("task").get(pk=int(p.get("config_id")))
    except (TypeError, ValueError):
        errors["config_id"] = "Choose a labeler config (config_id)."
    except LabelerConfig.DoesNotExist:
        errors["config_id"] = f"There is no labeler config with id {p.get('config_id')}."
    if config is not None:
        try:
            config.check_usable()
        except ValidationError as e:
            errors["config_id"] = e.messages[0]
        p["config_id"] = config.pk
    for name in ("comparison_ids", "policy_ids", "prompt_ids"):
        p[name] = id_list(p.get(name), name, errors)
    if p.get("dataset_id") not in (None, ""):
        try:
            p["dataset_id"] = int(p["dataset_id"])
            if not 1 <= p["dataset_id"] <= MAX_ID or not Dataset.objects.filter(pk=p["dataset_id"]).exists():
                errors["dataset_id"] = f"There is no dataset with id {p['dataset_id']}."
        except (TypeError, ValueError):
            errors["dataset_id"] = "dataset_id must be a whole number."
    else:
        p["dataset_id"] = None
    missing = set(p["policy_ids"]) - set(Policy.objects.filter(pk__in=p["policy_ids"]).values_list("pk", flat=True))
    if missing:
        errors["policy_ids"] = f"No policy with id {', '.join(map(str, sorted(missing)))}."
    try:
        p["chunk_size"] = int(p.get("chunk_size") or DEFAULT_CHUNK_SIZE)
        if not 1 <= p["chunk_size"] <= 100_000:
            raise ValueError
    except (TypeError, ValueError):
        errors["chunk_size"] = "chunk_size must be a whole number from 1 to 100000."
    try:
        p["limit"] = int(p["limit"]) if p.get("limit") not in (None, "") else None
        if p["limit"] is not None and not 1 <= p["limit"] <= MAX_ID:
            raise ValueError
    except (TypeError, ValueError):
        errors["limit"] = f"limit must be a whole number from 1 to {MAX_ID}."
    p["human_labeled_only"] = bool(p.get("human_labeled_only"))
    p["relabel"] = bool(p.get("relabel"))
    if not (p["comparison_ids"] or p["dataset_id"] or p["policy_ids"] or p["prompt_ids"] or p.get("all")):
        errors.setdefault("comparison_ids", "Say which comparisons to label: a dataset, comparison ids, "
                                            "policies or prompts.")
    if not errors:
        qs = comparison_queryset(p)
        if not qs.exists():
            errors["comparison_ids"] = "No comparisons match this selection, so there is nothing to label."
        elif config is not None:
            wrong = comparison_queryset({**p, "limit": None}).exclude(prompt__dataset__task=config.task).count()
            if wrong:
                errors["config_id"] = (f"{wrong} selected comparison(s) belong to another task than this config's "
                                       f"({config.task.slug}); pick a config for their task.")
    if errors:
        raise ValidationError(errors)
    return p


def _already_labeled(config_id, ids):
    from .models import AILabel

    done = set()
    for start in range(0, len(ids), 5000):
        done.update(AILabel.objects.filter(config_id=config_id, comparison_id__in=ids[start:start + 5000])
                    .values_list("comparison_id", flat=True))
    return done


def dispatch(ctx):
    """The run's own step: split the selection into chunk jobs (idempotent on resume)."""
    from evalsite.jobs.models import Job

    p = ctx.params
    ids = list(comparison_queryset(p).values_list("pk", flat=True))
    done = set() if p.get("relabel") else _already_labeled(p["config_id"], ids)
    children = list(Job.objects.filter(parent_id=ctx.job_id, kind=CHUNK_KIND))
    covered = set()
    resumed = 0
    for child in children:
        covered.update(child.params.get("comparison_ids", []))
        if child.status in (Job.Status.FAILED, Job.Status.CANCELLED):
            resumed += jobs.resume(child)
    todo = [i for i in ids if i not in done and i not in covered]
    size = int(p.get("chunk_size") or DEFAULT_CHUNK_SIZE)
    created = 0
    with transaction.atomic():  # all chunk rows or none; messages go out on commit
        for start in range(0, len(todo), size):
            n = len(children) + created + 1
            jobs.submit(CHUNK_KIND, {"config_id": p["config_id"], "comparison_ids": todo[start:start + size],
                                    "relabel": bool(p.get("relabel")), "run_created_at": ctx.job.created_at.isoformat()},
                       name=f"{ctx.job.name or 'labeling'} - chunk {n}", parent=ctx.job, user=ctx.job.created_by)
            created += 1
    ctx.log(f"{len(ids)} comparisons selected, {len(ids) - len(done)} to label without an earlier label; "
            f"{created} new chunk(s), {resumed} resumed, {len(children)} existing")
    return ctx.wait_for_children(
        f"{len(children) + created} chunk(s) dispatched", dispatched=len(children) + created, total=len(ids),
        already_labeled=len(done & set(ids)), new_chunks=created, resumed_chunks=resumed)


def summarize_run(run, chunks, fields):
    """A run's status, progress and message from its chunks (the job runtime's fan-out hook)."""
    from evalsite.jobs.models import Job

    total = int(run.result.get("total", 0))
    pre = int(run.result.get("already_labeled", 0))
    done = pre + sum(len(c["params"].get("comparison_ids", [])) * (1.0 if c["status"] == Job.Status.SUCCEEDED
                                                                   else c["progress"]) for c in chunks)
    fields["progress"] = min(1.0, done / total) if total else 1.0
    n = len(chunks)
    status = fields.get("status", Job.Status.RUNNING)
    totals = run_totals(run, chunks)
    if status == Job.Status.RUNNING:
        active = sum(c["status"] in (Job.Status.QUEUED, Job.Status.RUNNING) for c in chunks)
        fields["message"] = f"{n - active}/{n} chunks done, {int(done)}/{total} comparisons labeled"
    elif status == Job.Status.FAILED:
        failed = [c for c in chunks if c["status"] == Job.Status.FAILED]
        fields.update(message="chunks failed", result={**run.result, **totals},
                      error=f"{len(failed)} of {n} chunk job(s) failed (#{', #'.join(str(c['pk']) for c in failed)}); "
                            f"the first said: {failed[0]['error']} "
                            "Finished labels are kept; resume this job to retry the failed chunks.")
    elif status == Job.Status.CANCELLED:
        fields.update(message=f"cancelled: {int(done)}/{total} comparisons labeled", result={**run.result, **totals})
    else:
        fields.update(message=(f"{total} comparisons labeled in {n} chunk(s)" if n else
                               f"nothing to label: all {total} comparisons already had labels")
                      + describe_totals(totals), result={**run.result, **totals})
    return fields


TOTAL_KEYS = ("labeled", "dropped", "bounded", "prompt_tokens", "completion_tokens")


def run_totals(run, chunks):
    """The finished chunks' labels, dropped and bounded labels, tokens, and their cost at the config's prices."""
    from .models import LabelerConfig

    totals = {key: sum(int((c["result"] or {}).get(key, 0)) for c in chunks) for key in TOTAL_KEYS}
    config = LabelerConfig.objects.filter(pk=run.params.get("config_id")).first()
    if config is not None and config.has_prices:
        totals["cost_usd"] = round(config.cost(totals["prompt_tokens"], totals["completion_tokens"]), 6)
    return totals


def describe_totals(totals):
    """The part of a run's message that says what it used."""
    text = ""
    if totals.get("dropped"):
        text += f"; {totals['dropped']} dropped (a label token was not among the server's top alternatives)"
    if totals.get("bounded"):
        text += f"; {totals['bounded']} bounded labels (a label token was not among the top alternatives)"
    if totals.get("prompt_tokens") or totals.get("completion_tokens"):
        text += f"; {totals['prompt_tokens']:,} prompt + {totals['completion_tokens']:,} completion tokens"
        if "cost_usd" in totals:
            text += f" (${totals['cost_usd']:.4f})"
    return text


ESTIMATE_SAMPLE = 1000  # pairs rendered for an estimate; a larger selection is scaled up from them


def estimate_run(params, sample=ESTIMATE_SAMPLE):
    """What a run with these (validated) params will take, before it starts: comparisons to label,
    requests, prompt and completion tokens, and their cost at the config's prices.

    Prompts are rendered and counted as the run will (a server config without a local tokenizer
    estimates tokens from characters); with more than ``sample`` comparisons to label, an evenly
    spread sample of them is counted and scaled up. Chain-of-thought figures are upper bounds
    (rationales as long as allowed), and re-asks are not counted.
    """
    from evalsite.models import Comparison

    from .backends import token_counter
    from .models import LabelerConfig
    from .scoring import Pair, PreferenceLabeler

    config = LabelerConfig.objects.select_related("task").get(pk=params["config_id"])
    ids = list(comparison_queryset(params).values_list("pk", flat=True))
    done = set() if params.get("relabel") else _already_labeled(config.pk, ids)
    todo = [i for i in ids if i not in done]
    step = max(1, len(todo) / sample) if todo else 1
    picked = sorted({todo[int(k * step)] for k in range(min(len(todo), sample))})
    kind, options = config.backend_options(with_api_key=False)
    labeler = PreferenceLabeler(token_counter(kind, **options), config.labeler_settings())
    pairs = [Pair(c.prompt.context, c.response_a, c.response_b)
             for c in Comparison.objects.filter(pk__in=picked).select_related("prompt").order_by("pk")]
    counted = labeler.estimate(pairs)
    scale = len(todo) / len(pairs) if pairs else 0.0
    out = {"selected": len(ids), "already_labeled": len(done), "to_label": len(todo), "counted": len(pairs),
           "backend": config.get_backend_display(), "model": config.server_model or config.model_path,
           "tokens_exact": kind == "local" or bool(config.model_path)}
    for key in ("requests", "prompt_tokens", "completion_tokens"):
        out[key] = int(round(counted[key] * scale))
    out["cost_usd"] = config.cost(out["prompt_tokens"], out["completion_tokens"]) if config.has_prices else None
    return out


def describe_estimate(e):
    """An estimate as lines of text (the dry run's output, the admin's summary)."""
    what = "forward passes" if e["backend"].startswith("Local") else "requests"
    lines = [f"{e['selected']} comparisons selected, {e['already_labeled']} already labeled by this config, "
             f"{e['to_label']} to label",
             f"{e['requests']:,} {what}, {e['prompt_tokens']:,} prompt tokens, {e['completion_tokens']:,} "
             "completion tokens" + ("" if e["tokens_exact"] else " (tokens estimated from characters: give the "
                                                                 "config a local tokenizer folder to count them)")]
    if e["counted"] < e["to_label"]:
        lines.append(f"counted on {e['counted']} of the {e['to_label']} comparisons and scaled up")
    lines.append("cost: no prices on this config" if e["cost_usd"] is None else f"cost: ${e['cost_usd']:.4f}")
    return lines
