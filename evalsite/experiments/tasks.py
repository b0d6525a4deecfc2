"""Celery tasks of the experiment canvas, and the two job kinds only experiments use."""
from celery import shared_task
from django.core.exceptions import ValidationError

from evalsite.experiments import pipeline
from evalsite.jobs import JobError, job_kind
from evalsite.models import Experiment


@shared_task(name="evalsite.experiment_stage", acks_late=True)
def experiment_stage(exp_id, stage):
    """One stage of an experiment; raising stops the rest of the chain (the experiment shows why)."""
    return pipeline.run_stage(exp_id, stage)


@shared_task(name="evalsite.experiment_done")
def experiment_done(exp_id):
    pipeline.mark_done(exp_id)


def _experiment(params):
    try:
        return Experiment.objects.select_related("task").get(pk=int(params.get("experiment_id")))
    except (TypeError, ValueError, Experiment.DoesNotExist):
        raise ValidationError(f"Unknown experiment {params.get('experiment_id')!r}.")


def _validate_experiment(params):
    _experiment(params)
    return params


@job_kind("experiment_judge_pairs", label="Pairs of experiment arms for the AI judge", validator=_validate_experiment)
def judge_pairs_job(ctx):
    """Comparisons between every two arms' evaluation samples (what the AI judge labels)."""
    ids = pipeline.judge_pairs(_experiment(ctx.params))
    if not ids:
        raise JobError("The arms have no evaluation samples on common prompts to compare.")
    ctx.log(f"{len(ids)} comparisons between arms")
    return {"comparison_ids": ids}


@job_kind("experiment_round", label="Evaluation round of an experiment", validator=_validate_experiment)
def round_job(ctx):
    """Create and open the human evaluation round over the arms' evaluation samples."""
    round_id = pipeline.make_round(_experiment(ctx.params))
    ctx.log(f"evaluation round #{round_id} is open for annotators")
    return {"round_id": round_id}
