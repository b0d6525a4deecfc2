"""The experiment app's job kinds: the experiment itself, and two stages only experiments use."""
from django.core.exceptions import ValidationError

from evalsite.experiments import pipeline
from evalsite.experiments.models import Experiment
from evalsite.jobs.runtime import JobError, job_kind


def _experiment(params):
    try:
        return Experiment.objects.select_related("task").get(pk=int(params.get("experiment_id")))
    except (TypeError, ValueError, Experiment.DoesNotExist):
        raise ValidationError(f"Unknown experiment {params.get('experiment_id')!r}.")


def _validate_experiment(params):
    _experiment(params)
    return params


@job_kind(pipeline.EXPERIMENT, label="Experiment", resumable=True, validator=_validate_experiment,
          reruns_after_children=True, summarize=pipeline.summarize_stages, on_end=pipeline.experiment_ended)
def experiment_job(ctx):
    """Runs an experiment's stages level by level, each level's stages as child jobs."""
    return pipeline.run_next_level(ctx)


@job_kind(pipeline.JUDGE_PAIRS, label="Pairs of experiment arms for the AI judge", validator=_validate_experiment)
def judge_pairs_job(ctx):
    """Comparisons between every two arms' evaluation samples (what the AI judge labels)."""
    ids = pipeline.judge_pairs(_experiment(ctx.params))
    if not ids:
        raise JobError("The arms have no evaluation samples on common prompts to compare.")
    ctx.log(f"{len(ids)} comparisons between arms")
    return {"comparison_ids": ids}


@job_kind(pipeline.ROUND, label="Evaluation round of an experiment", validator=_validate_experiment)
def round_job(ctx):
    """Create and open the human evaluation round over the arms' evaluation samples."""
    round_id = pipeline.make_round(_experiment(ctx.params))
    ctx.log(f"evaluation round #{round_id} is open for annotators")
    return {"round_id": round_id}
