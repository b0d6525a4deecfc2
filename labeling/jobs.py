"""Job kinds of the labeling app: a labeling run and its chunks (see ``labeling.runs``)."""
import time

from django.core.exceptions import ValidationError
from django.db import transaction

from evalsite.jobs.runtime import JobError, job_kind

from . import runs

# One loaded model per worker process, shared by every chunk (and config) that uses it.
_BACKENDS = {}
_LABELERS = {}


def get_labeler(config):
    from .backends import BackendError, make_backend
    from .scoring import PreferenceLabeler

    key = (config.pk, config.updated_at.isoformat())
    if key not in _LABELERS:
        try:
            config.check_usable()  # the config may have changed since its run was started
            kind, options = config.backend_options()
        except ValidationError as e:
            raise JobError(e.messages[0]) from None
        except BackendError as e:
            raise JobError(f"Labeler config '{config.name}': {e}") from None
        bkey = (kind, tuple(sorted(options.items())))
        if bkey not in _BACKENDS:
            try:
                _BACKENDS[bkey] = make_backend(kind, **options)
            except BackendError as e:
                raise JobError(f"Labeler config '{config.name}': {e}") from None
        try:
            _LABELERS[key] = PreferenceLabeler(_BACKENDS[bkey], config.labeler_settings())
        except ValueError as e:
            raise JobError(f"Labeler config '{config.name}': {e}") from None
    return _LABELERS[key]


@job_kind(runs.RUN_KIND, label="AI labeling", resumable=True, validator=runs.validate_run_params,
          summarize=runs.summarize_run)
def label_run_job(ctx):
    """Label a set of comparisons with one labeler config, in chunk jobs that workers share."""
    return runs.dispatch(ctx)


@job_kind(runs.CHUNK_KIND, label="AI labeling chunk", resumable=True)
def label_chunk_job(ctx):
    """Label one chunk of a run's comparisons; skips what is already labeled, so retries are free."""
    from datetime import datetime

    from evalsite.models import Comparison

    from .backends import BackendError
    from .models import AILabel, LabelerConfig
    from .scoring import Pair

    p = ctx.params
    config = LabelerConfig.objects.select_related("task").filter(pk=p["config_id"]).first()
    if config is None:
        raise JobError(f"The labeler config {p['config_id']} was deleted.")
    ids = list(p["comparison_ids"])
    existing = AILabel.objects.filter(config=config, comparison_id__in=ids)
    if p.get("relabel") and p.get("run_created_at"):
        existing = existing.filter(created_at__gte=datetime.fromisoformat(p["run_created_at"]))
    done = set(existing.values_list("comparison_id", flat=True))
    todo = [i for i in ids if i not in done]
    ctx.progress(len(done) / len(ids), f"{len(done)}/{len(ids)} already labeled", force=True)
    labeler = get_labeler(config)
    step = max(1, config.batch_size) * 2
    fields = ["p_first", "p_slot1_order1", "p_slot1_order2", "label_mass", "mass_order1", "mass_order2",
              "rationales", "prompt_tokens", "completion_tokens", "generated_tokens", "truncated_tokens", "bounded",
              "p_first_low", "p_first_high", "unseen_mass", "latency_ms", "job"]
    drop_bounded = config.absent_labels == LabelerConfig.AbsentLabels.DROP
    labeled = dropped = bounded = prompt_tokens = completion_tokens = 0
    for start in range(0, len(todo), step):
        batch = list(Comparison.objects.filter(pk__in=todo[start:start + step]).select_related("prompt"))
        t = time.perf_counter()
        try:
            results = labeler.label([Pair(c.prompt.context, c.response_a, c.response_b) for c in batch])
        except (BackendError, ValueError) as e:
            raise JobError(f"Labeling with '{config.name}' failed: {e}") from None
        ms = 1000 * (time.perf_counter() - t) / max(1, len(batch))
        # Every request was paid for, a dropped pair's too.
        prompt_tokens += sum(r.prompt_tokens for r in results)
        completion_tokens += sum(r.completion_tokens for r in results)
        kept = [(c, r) for c, r in zip(batch, results) if not (drop_bounded and r.bounded)]
        dropped += len(batch) - len(kept)
        bounded += sum(r.bounded for _, r in kept)
        rows = [AILabel(comparison=c, config=config, p_first=r.p_first, p_slot1_order1=r.p_slot1_order1,
                        p_slot1_order2=r.p_slot1_order2, label_mass=r.label_mass, mass_order1=r.mass_order1,
                        mass_order2=r.mass_order2, rationales=r.rationales, prompt_tokens=r.prompt_tokens,
                        completion_tokens=r.completion_tokens, generated_tokens=r.generated_tokens,
                        truncated_tokens=r.truncated_tokens, bounded=r.bounded, p_first_low=r.p_first_low,
                        p_first_high=r.p_first_high, unseen_mass=r.unseen_mass, latency_ms=ms,
                        job_id=ctx.job_id) for c, r in kept]
        with transaction.atomic():
            if p.get("relabel"):
                AILabel.objects.bulk_create(rows, update_conflicts=True, unique_fields=["comparison", "config"],
                                            update_fields=fields)
            else:
                AILabel.objects.bulk_create(rows, ignore_conflicts=True)
        labeled += len(rows)
        n_done = len(done) + start + len(batch)
        ctx.metric(start // step, seconds_per_pair=ms / 1000,
                   label_mass=sum(r.label_mass for r in results) / max(1, len(results)))
        ctx.progress(n_done / len(ids), f"{n_done}/{len(ids)} labeled")
    return {"labeled": labeled, "skipped": len(done), "dropped": dropped, "bounded": bounded,
            "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens}
