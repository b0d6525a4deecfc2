"""The stages of an RLAIF experiment and how they run.

Stages are ordinary Jobs (``sft``, ``sample``, ``label``, ``reward_model``, ``rl``, ...) whose
parameters come from the experiment and from what earlier stages produced. ``launch`` sends a
Celery canvas: a chain of *levels*, each level a group of stages that can run in parallel on
any workers::

    sft, label_alignment  ->  pairs, rm_human  ->  label_pairs  ->  rm_ai
      ->  rl_<arm> (each arm)  ->  eval_<arm> (each arm)  ->  judge_pairs  ->  judge_label  ->  round

Each level waits for all its stages (a chord). Each stage task runs its job *inside* the Celery task that holds it (``jobs.execute``), so a
stage never blocks a worker waiting for another worker. A stage whose job already succeeded is
skipped, so relaunching an experiment resumes it: finished stages are reused, a failed or
cancelled stage job is resumed (RL continues from its checkpoint).
"""
import hashlib
import itertools
import random
import time
from dataclasses import dataclass
from functools import partial
from typing import Callable

from celery import chain, chord, group
from django.db import transaction
from django.utils import timezone

from evalsite import jobs
from evalsite.models import Comparison, Experiment, Job, Policy, Prompt, Sample, pair_key


class StageFailed(Exception):
    pass


ARM_LABELS = dict(Experiment.ARMS)
RL_ARMS = ["rlhf", "rlaif_distilled", "rlaif_direct", "same_size"]
POLICY_KIND = {"rlhf": Policy.Kind.RLHF, "rlaif_distilled": Policy.Kind.RLAIF_DISTILLED,
               "rlaif_direct": Policy.Kind.RLAIF_DIRECT, "same_size": Policy.Kind.RLAIF_DISTILLED}


@dataclass
class Stage:
    name: str
    level: int
    kind: str
    label: str
    params: Callable  # (experiment) -> job params
    collect: Callable = None  # (experiment, job) -> artifacts dict


# ---- artifacts and splits ------------------------------------------------------------------
def record(exp_id, stage=None, job_id=None, **artifacts):
    """Write a stage's job id and artifacts; parallel stages update the same row, so lock it."""
    with transaction.atomic():
        exp = Experiment.objects.select_for_update().get(pk=exp_id)
        if stage is not None:
            exp.stages = {**exp.stages, stage: job_id}
        if artifacts:
            exp.artifacts = {**exp.artifacts, **artifacts}
        exp.save(update_fields=["stages", "artifacts"])
        return exp


def make_splits(exp):
    """Disjoint, seeded prompt sets for SFT (with references), RM pairs, RL and evaluation."""
    c = exp.config
    rng = random.Random(c.get("seed", 0))
    prompts = list(Prompt.objects.filter(dataset=exp.dataset).order_by("pk").values_list("pk", "reference"))
    rng.shuffle(prompts)
    with_ref = [pk for pk, ref in prompts if ref]
    sft = with_ref[: c["sft_prompts"]]
    rest = [pk for pk, _ in prompts if pk not in set(sft)]
    need = c["pair_prompts"] + c["rl_prompts"] + c["eval_prompts"]
    if "sft" in exp.arms and not sft:
        raise StageFailed(f"Dataset {exp.dataset} has no prompts with a reference response for SFT.")
    if len(rest) < need:
        # small datasets: reuse SFT prompts for the later stages rather than refuse
        rest = rest + [pk for pk in sft if pk not in set(rest)]
    if len(rest) < 3:
        raise StageFailed(f"Dataset {exp.dataset} has only {len(prompts)} prompts; the experiment needs more.")
    pairs = rest[: c["pair_prompts"]]
    rl = rest[c["pair_prompts"]: c["pair_prompts"] + c["rl_prompts"]] or pairs
    ev = rest[c["pair_prompts"] + c["rl_prompts"]: need] or rl
    return {"sft": sorted(sft), "pairs": sorted(pairs), "rl": sorted(rl), "eval": sorted(ev)}


def ensure_labeler(exp, same_size=False):
    """The experiment's labeler config; made from the preset (labeler = the base model) when unset."""
    from labeling.models import LabelerConfig

    if exp.labeler_config_id and not same_size:
        return exp.labeler_config
    c = exp.config.get("labeler", {})
    name = f"{exp.name} · {'same-size ' if same_size else ''}labeler"
    fields = {"preamble_variant", "batch_size", "max_prompt_tokens", "chain_of_thought", "dtype", "threads"}
    config, _ = LabelerConfig.objects.get_or_create(name=name, defaults=dict(
        task=exp.task, backend="local", model_path=exp.base_policy.checkpoint_dir,
        **{k: v for k, v in c.items() if k in fields},
    ))
    if not same_size and not exp.labeler_config_id:
        Experiment.objects.filter(pk=exp.pk).update(labeler_config=config)
        exp.labeler_config = config
    return config


def preference_dataset(exp):
    return exp.preference_dataset or exp.dataset


def alignment_comparison_ids(exp):
    qs = (Comparison.objects.filter(prompt__dataset=preference_dataset(exp))
          .exclude(human_preference="", judge_preference="").order_by("pk"))
    return list(qs.values_list("pk", flat=True)[: exp.config.get("alignment_comparisons", 64)])


def human_pair_prompt_ids(exp):
    """Prompts of the preference dataset whose labelled comparisons train the RLHF reward model,
    a seeded sample within the ``human_pairs`` budget."""
    field = exp.config.get("human_label_field", "human_preference")
    ids = sorted(set(Comparison.objects.filter(prompt__dataset=preference_dataset(exp))
                     .exclude(**{field: ""}).values_list("prompt_id", flat=True)))
    random.Random(exp.config.get("seed", 0)).shuffle(ids)
    return sorted(ids[: exp.config.get("human_pairs", len(ids))])


def arm_policy_id(exp, arm):
    return exp.artifacts.get("sft_policy_id") if arm == "sft" else exp.artifacts.get(f"{arm}_policy_id")


# ---- stage parameters --------------------------------------------------------------------------
def _sft(exp):
    # the SFT policy's format: every later stage (pairs, reward models, RL, evaluation) takes it from there
    return {"policy_id": exp.base_policy_id, "name": f"{exp.name} · SFT",
            "prompt_ids": exp.artifacts["splits"]["sft"], "seed": exp.config.get("seed", 0),
            "policy_format": exp.config.get("policy_format", "raw"), **exp.config["sft"]}


def _pairs(exp):
    return {"policy_id": exp.artifacts["sft_policy_id"], "prompt_ids": exp.artifacts["splits"]["pairs"],
            "make_pairs": True, "seed": exp.config.get("seed", 0), **exp.config["pairs"]}


def _pair_comparison_ids(exp):
    sft = exp.artifacts["sft_policy_id"]
    return list(Comparison.objects.filter(
        sample_a__policy_id=sft, sample_b__policy_id=sft, prompt_id__in=exp.artifacts["splits"]["pairs"],
    ).order_by("pk").values_list("pk", flat=True))


def _label_alignment(exp):
    return {"config_id": ensure_labeler(exp).pk, "comparison_ids": alignment_comparison_ids(exp)}


def _label_pairs(exp, same_size=False):
    return {"config_id": ensure_labeler(exp, same_size=same_size).pk, "comparison_ids": _pair_comparison_ids(exp)}


def _rm(exp, labels, same_size=False):
    p = {"policy_id": exp.artifacts["sft_policy_id"], "labels": labels, "seed": exp.config.get("seed", 0),
         **exp.config["reward_model"]}
    if labels == "human":
        p.update(name=f"{exp.name} · RM (human labels)", prompt_ids=human_pair_prompt_ids(exp))
        if exp.config.get("human_label_field"):
            p["human_label_field"] = exp.config["human_label_field"]
    else:
        config = ensure_labeler(exp, same_size=same_size)
        p.update(name=f"{exp.name} · RM ({'same-size ' if same_size else ''}AI labels)",
                 label_config_ids=[config.pk], prompt_ids=exp.artifacts["splits"]["pairs"])
    return p


def _rl(exp, arm):
    p = {"policy_id": exp.artifacts["sft_policy_id"], "name": f"{exp.name} · {arm}",
         "prompt_ids": exp.artifacts["splits"]["rl"], "seed": exp.config.get("seed", 0), **exp.config["rl"]}
    if arm == "rlaif_direct":
        p.update(reward="direct", labeler_model=str(ensure_labeler(exp).resolved_model_path()))
    else:
        rm_key = {"rlhf": "rm_human_id", "rlaif_distilled": "rm_ai_id", "same_size": "rm_same_size_id"}[arm]
        p.update(reward="reward_model", reward_model_id=exp.artifacts[rm_key])
    return p


def _eval(exp, arm):
    return {"policy_id": arm_policy_id(exp, arm), "prompt_ids": exp.artifacts["splits"]["eval"],
            "seed": exp.config.get("seed", 0) + 1, **exp.config["eval"]}


def _judge_pairs(exp):
    return {"experiment_id": exp.pk}


def _judge_label(exp):
    return {"config_id": ensure_labeler(exp).pk, "comparison_ids": exp.artifacts["judge_comparison_ids"]}


def _round(exp):
    return {"experiment_id": exp.pk}


# ---- what stages produce --------------------------------------------------------------------
def _result_key(key, artifact):
    return lambda exp, job: {artifact: job.result[key]}


def stages_for(exp):
    """The stages this experiment runs, in launch order (level, then name)."""
    arms = set(exp.arms)
    rl_arms = [a for a in RL_ARMS if a in arms]
    out = [
        Stage("sft", 0, "sft", "SFT", _sft, _result_key("policy_id", "sft_policy_id")),
        Stage("label_alignment", 0, "label", "AI labels on human/judge-labelled pairs (alignment)",
              _label_alignment, lambda exp, job: {"alignment_config_id": job.params["config_id"]}),
        Stage("pairs", 1, "sample", "Pairs sampled from SFT", _pairs,
              lambda exp, job: {"pair_comparison_ids": _pair_comparison_ids(exp)}),
    ]
    if not alignment_comparison_ids(exp):
        out = [s for s in out if s.name != "label_alignment"]
    if "rlhf" in arms:
        out.append(Stage("rm_human", 1, "reward_model", "Reward model on human preferences",
                         lambda e: _rm(e, "human"), _result_key("reward_model_id", "rm_human_id")))
    if arms & {"rlaif_distilled"}:
        out.append(Stage("label_pairs", 2, "label", "AI labels on SFT pairs", _label_pairs))
        out.append(Stage("rm_ai", 3, "reward_model", "Reward model on AI soft labels",
                         lambda e: _rm(e, "ai"), _result_key("reward_model_id", "rm_ai_id")))
    if "same_size" in arms:
        out.append(Stage("label_pairs_same_size", 2, "label", "Same-size AI labels on SFT pairs",
                         lambda e: _label_pairs(e, same_size=True)))
        out.append(Stage("rm_same_size", 3, "reward_model", "Reward model on same-size AI labels",
                         lambda e: _rm(e, "ai", same_size=True), _result_key("reward_model_id", "rm_same_size_id")))
    for arm in rl_arms:
        out.append(Stage(f"rl_{arm}", 4, "rl", f"RL: {ARM_LABELS[arm].split(':')[0]}",
                         lambda e, a=arm: _rl(e, a), _result_key("policy_id", f"{arm}_policy_id")))
    eval_arms = (["sft"] if "sft" in arms or rl_arms else []) + rl_arms
    for arm in eval_arms:
        out.append(Stage(f"eval_{arm}", 5, "sample", f"Evaluation samples: {arm}", lambda e, a=arm: _eval(e, a)))
    if len(eval_arms) >= 2:
        out.append(Stage("judge_pairs", 6, "experiment_judge_pairs", "Pairs of arms for the AI judge", _judge_pairs,
                         _result_key("comparison_ids", "judge_comparison_ids")))
        out.append(Stage("judge_label", 7, "label", "AI-judge labels between arms", _judge_label))
        out.append(Stage("round", 8, "experiment_round", "Evaluation round for humans", _round,
                         _result_key("round_id", "round_id")))
    return out


def stage_by_name(exp, name):
    for s in stages_for(exp):
        if s.name == name:
            return s
    raise KeyError(f"Experiment {exp.pk} has no stage {name!r}")


# ---- running ---------------------------------------------------------------------------------
def _finish_label_run(run, exp_id):
    """A labeling run dispatches chunk jobs; take the queued ones here, wait for the rest."""
    from labeling.runs import CHUNK_KIND, sync_run

    while True:
        sync_run(run.pk)  # executing the run only dispatched its chunks: show it as running
        chunks = list(Job.objects.filter(parent=run, kind=CHUNK_KIND).values_list("pk", "status"))
        for pk, status in chunks:
            if status == Job.Status.QUEUED:
                jobs.execute(pk)
        sync_run(run.pk)
        run.refresh_from_db()
        if run.status in Job.FINISHED:
            return
        if Experiment.objects.filter(pk=exp_id, cancel_requested=True).exists():
            from labeling.runs import cancel_run

            cancel_run(run)
        time.sleep(1.0)


def _wait(job, exp_id):
    while True:
        # A stage job whose worker died must not be waited on forever: failed, and resumed here
        # when its kind resumes (the workers' sweep does the same; only one of them wins).
        jobs.fail_stale_and_resume(Job.objects.filter(pk=job.pk))
        job.refresh_from_db()
        if job.status == Job.Status.QUEUED:
            jobs.execute(job.pk)
            continue
        if job.status in Job.FINISHED:
            return job
        if Experiment.objects.filter(pk=exp_id, cancel_requested=True).exists():
            job.request_cancel()
        time.sleep(1.0)


def _fail(exp_id, status, message):
    Experiment.objects.filter(pk=exp_id).update(status=status, message=message[:500], finished_at=timezone.now())


def run_stage(exp_id, name):
    """Run (or reuse) one stage's job in this process. Raises StageFailed when it does not succeed."""
    exp = Experiment.objects.select_related("base_policy", "dataset", "task").get(pk=exp_id)
    if exp.cancel_requested:
        _fail(exp_id, Experiment.Status.CANCELLED, "cancelled")
        raise StageFailed("cancelled")
    stage = stage_by_name(exp, name)
    job = Job.objects.filter(pk=exp.stages.get(name)).first() if exp.stages.get(name) else None
    if job is None or job.status != Job.Status.SUCCEEDED:
        try:
            params = stage.params(exp)
        except Exception as e:
            _fail(exp_id, Experiment.Status.FAILED, f"Stage '{stage.label}' could not start: {e}")
            raise StageFailed(str(e)) from e
        if job is not None and job.status in (Job.Status.FAILED, Job.Status.CANCELLED):
            if all(job.params.get(k) == v for k, v in params.items()):
                job.resume()  # same work: continue it (RL from its checkpoint, labeling from its labels)
            else:
                job = None  # the experiment's settings changed since: a new job with the new parameters
        if job is None:
            try:
                with transaction.atomic():  # the job and the experiment's record of it, or neither
                    job = Job.submit(stage.kind, params, name=f"{exp.name}: {stage.label}", user=exp.created_by,
                                     send=False)
                    record(exp_id, name, job.pk)
            except Exception as e:
                text = "; ".join(getattr(e, "messages", [])) or str(e)
                _fail(exp_id, Experiment.Status.FAILED, f"Stage '{stage.label}' could not start: {text}")
                raise StageFailed(text) from e
        Experiment.objects.filter(pk=exp_id).update(message=f"running: {stage.label}")
        jobs.execute(job.pk)  # claims it unless another worker already did
        if stage.kind == "label":
            _finish_label_run(job, exp_id)
        job = _wait(job, exp_id)
    if job.status != Job.Status.SUCCEEDED:
        exp.refresh_from_db()
        status = Experiment.Status.CANCELLED if exp.cancel_requested else Experiment.Status.FAILED
        _fail(exp_id, status, f"Stage '{stage.label}' {job.status}: {job.error or job.message}")
        raise StageFailed(f"{name}: {job.error or job.status}")
    if stage.collect:
        record(exp_id, **stage.collect(exp, job))
    return job.pk


# Numbers of the experiment itself: prompt budgets, the seed (the evaluation stage uses seed + 1)
# and the round's overlap. The stages' own settings have their job kinds' bounds.
BUDGETS = ("sft_prompts", "pair_prompts", "rl_prompts", "eval_prompts", "alignment_comparisons", "human_pairs")
STAGE_KINDS = {"sft": "sft", "pairs": "sample", "reward_model": "reward_model", "rl": "rl", "eval": "sample"}


def config_errors(config):
    """Messages for the numbers in an experiment's config that its stages could not run with."""
    from rl import params as P

    sections = {
        "": {**{k: P.Bound(int, 0, 10**7) for k in BUDGETS}, "seed": P.Bound(int, 0, 2**63 - 2, high_text="2^63 − 2")},
        "round": {"overlap": P.Bound(int, 1, 100)},
        **{section: P.NUMBERS[kind] for section, kind in STAGE_KINDS.items()},
    }
    messages = []
    if "policy_format" in config and P.policy_format_error(config["policy_format"]):
        messages.append(P.policy_format_error(config["policy_format"]))
    for section, bounds in sections.items():
        values = config.get(section, {}) if section else config
        if not isinstance(values, dict):
            messages.append(f"{section}: expected an object of settings, found {type(values).__name__}.")
            continue
        messages += [f"{section}: {m}" if section else m for m in P.number_errors(values, bounds)]
        if STAGE_KINDS.get(section) in ("sft", "reward_model", "rl"):  # the launch section
            messages += [f"{section}: {m}" for m in P.launch_errors(values, STAGE_KINDS[section]).values()]
    return messages


def prepare(exp):
    """Checks and splits before anything runs; clear messages for what is wrong."""
    from django.core.exceptions import ValidationError

    errors = config_errors(exp.config)
    if not exp.base_policy.checkpoint_dir:
        errors.append(f"The base policy “{exp.base_policy}” has no model folder.")
    unknown = set(exp.arms) - set(ARM_LABELS)
    if unknown:
        errors.append(f"Unknown arms: {', '.join(sorted(unknown))}.")
    if not exp.arms:
        errors.append("Choose at least one arm.")
    if exp.dataset.task_id != exp.task_id:
        errors.append(f"Dataset {exp.dataset} is for task “{exp.dataset.task}”, not “{exp.task}”.")
    if "rlhf" in exp.arms:
        field = exp.config.get("human_label_field", "human_preference")
        if not Comparison.objects.filter(prompt__dataset=preference_dataset(exp)).exclude(**{field: ""}).exists():
            errors.append(f"RLHF needs comparisons with human preferences in {preference_dataset(exp)}; "
                          "choose a preference dataset that has them, or leave the RLHF arm out.")
    if errors:
        raise ValidationError(errors)
    if "splits" not in exp.artifacts:
        try:
            splits = make_splits(exp)
        except StageFailed as e:
            raise ValidationError(str(e))
        exp = record(exp.pk, splits=splits)
    return exp


def levels(exp):
    by_level = {}
    for s in stages_for(exp):
        by_level.setdefault(s.level, []).append(s.name)
    return [by_level[k] for k in sorted(by_level)]


def launch(exp):
    """Send the experiment's canvas to the workers (finished stages will be skipped)."""
    from evalsite.experiments.tasks import experiment_done, experiment_stage

    exp = prepare(exp)
    Experiment.objects.filter(pk=exp.pk).update(status=Experiment.Status.RUNNING, cancel_requested=False,
                                                message="queued", started_at=timezone.now(), finished_at=None)
    # Built from the end: a level of several stages is a chord whose body (the rest) starts only
    # when all of them have finished (a group chained to a group would not wait for all).
    rest = experiment_done.si(exp.pk)
    for names in reversed(levels(exp)):
        sigs = [experiment_stage.si(exp.pk, n) for n in names]
        rest = chain(sigs[0], rest) if len(sigs) == 1 else chord(group(sigs), rest)
    transaction.on_commit(partial(_send_canvas, exp.pk, rest))
    return exp


def _send_canvas(exp_id, canvas):
    from kombu.exceptions import OperationalError

    try:
        canvas.apply_async()
    except OperationalError as e:  # the broker is unreachable: nothing was sent, nothing runs
        _fail(exp_id, Experiment.Status.FAILED, f"The job broker could not be reached ({e}); nothing was started. "
                                                "Relaunch once it is back.")


def run_inline(exp, on_stage=None):
    """Run every stage in this process, in order (the command line's default; no workers needed)."""
    exp = prepare(exp)
    Experiment.objects.filter(pk=exp.pk).update(status=Experiment.Status.RUNNING, cancel_requested=False,
                                                started_at=timezone.now(), finished_at=None)
    names = [n for level in levels(exp) for n in level]
    for i, name in enumerate(names):
        if on_stage:
            on_stage(i, len(names), name)
        run_stage(exp.pk, name)
    mark_done(exp.pk)
    return names


def mark_done(exp_id):
    Experiment.objects.filter(pk=exp_id).update(status=Experiment.Status.SUCCEEDED, message="all stages finished",
                                                finished_at=timezone.now())


def cancel(exp):
    """Stop everything that is running; queued stages of the canvas stop when they start."""
    Experiment.objects.filter(pk=exp.pk).update(cancel_requested=True)
    for job in Job.objects.filter(pk__in=[j for j in exp.stages.values() if j], status__in=["queued", "running"]):
        if job.kind == "label":
            from labeling.runs import cancel_run

            cancel_run(job)
        else:
            job.request_cancel()
    if not Job.objects.filter(pk__in=[j for j in exp.stages.values() if j], status__in=["queued", "running"]).exists():
        _fail(exp.pk, Experiment.Status.CANCELLED, "cancelled")


def fail_if_stalled(exp, after_seconds=None):
    """A running experiment with no stage at work for a while lost its canvas (a worker died
    holding it): show it as failed, so that 'relaunch' continues from the finished stages."""
    from datetime import timedelta

    from django.conf import settings

    if exp.status != Experiment.Status.RUNNING:
        return False
    ids = [j for j in exp.stages.values() if j]
    if Job.objects.filter(pk__in=ids, status__in=[Job.Status.QUEUED, Job.Status.RUNNING]).exists():
        return False
    after = timedelta(seconds=after_seconds if after_seconds is not None else 2 * settings.JOB_STALE_AFTER_SECONDS)
    times = [t for t in Job.objects.filter(pk__in=ids).values_list("finished_at", flat=True) if t]
    last = max(times + [exp.started_at] if exp.started_at else times, default=None)
    if last is None or timezone.now() - last < after:
        return False
    n = Experiment.objects.filter(pk=exp.pk, status=Experiment.Status.RUNNING).update(
        status=Experiment.Status.FAILED, finished_at=timezone.now(),
        message="No stage has run for a while: the worker holding this experiment stopped. Relaunch to continue "
                "from the finished stages.")
    return bool(n)


def fail_stalled_experiments():
    """The workers' sweep: every running experiment that lost its canvas is shown as failed."""
    return [exp.pk for exp in Experiment.objects.filter(status=Experiment.Status.RUNNING) if fail_if_stalled(exp)]


def progress(exp):
    """(fraction done, [(stage, job or None)]) for the experiment page."""
    rows, total = [], 0.0
    job_by_id = {j.pk: j for j in Job.objects.filter(pk__in=[v for v in exp.stages.values() if v])}
    stages = stages_for(exp) if "splits" in exp.artifacts else []
    for s in stages:
        job = job_by_id.get(exp.stages.get(s.name))
        rows.append((s, job))
        total += 1.0 if job and job.status == Job.Status.SUCCEEDED else (job.progress if job else 0.0)
    return (total / len(stages) if stages else 0.0), rows


# ---- the two stage kinds of this module --------------------------------------------------------
def judge_pairs(exp):
    """Comparisons between every two arms' evaluation samples on each evaluation prompt.

    Which arm goes first is a seeded coin per (prompt, pair of arms), so position is no
    giveaway; the labeler scores both orders anyway.
    """
    arms = ["sft"] + [a for a in RL_ARMS if a in exp.arms]
    policies = {a: arm_policy_id(exp, a) for a in arms if arm_policy_id(exp, a)}
    samples = {(s.policy_id, s.prompt_id): s for s in Sample.objects.filter(
        policy_id__in=policies.values(), prompt_id__in=exp.artifacts["splits"]["eval"], index=0)}
    ids = []
    with transaction.atomic():
        for prompt_id in exp.artifacts["splits"]["eval"]:
            for a, b in itertools.combinations(sorted(policies), 2):
                sa, sb = samples.get((policies[a], prompt_id)), samples.get((policies[b], prompt_id))
                if sa is None or sb is None:
                    continue
                if hashlib.sha256(f"{exp.pk}:{prompt_id}:{a}:{b}".encode()).digest()[0] % 2:
                    sa, sb = sb, sa
                first, second = (b, a) if sa.policy_id == policies[b] else (a, b)
                c = Comparison.objects.filter(key=pair_key(prompt_id, sa.text, sb.text, sa.pk, sb.pk)).first()
                if c is None:
                    c = Comparison.objects.create(
                        prompt_id=prompt_id, response_a=sa.text, response_b=sb.text, sample_a=sa, sample_b=sb,
                        metadata={"experiment": exp.pk, "arms": [first, second]},
                    )
                ids.append(c.pk)
    return ids


def make_round(exp):
    from evalsite.humaneval import rounds
    from evalsite.models import EvalRound

    c = exp.config.get("round", {})
    question = c.get("question", "rank")
    if exp.task.slug == "harmless" and question == "rank":
        question = "both"
    arms = [a for a in ["sft"] + RL_ARMS if arm_policy_id(exp, a)]
    rnd = EvalRound.objects.filter(metadata__experiment=exp.pk).first()
    if rnd is None:
        rnd = EvalRound.objects.create(
            name=f"{exp.name} · evaluation", title="Which response is best?", task=exp.task, question=question,
            overlap=c.get("overlap", 3), created_by=exp.created_by, metadata={"experiment": exp.pk},
        )
        rnd.policies.set([arm_policy_id(exp, a) for a in arms])
        rounds.set_prompts(rnd, exp.artifacts["splits"]["eval"], seed=exp.config.get("seed", 0))
    if rnd.status == EvalRound.Status.DRAFT:
        rounds.open_round(rnd)
    return rnd.pk
