"""The stages of an RLAIF experiment and how they run.

Stages are ordinary jobs (``sft``, ``sample``, ``label``, ``reward_model``, ``rl``, ...) whose
parameters come from the experiment and from what earlier stages produced. They run in *levels*;
the stages of one level run in parallel on any workers::

    sft, label_alignment  ->  pairs, rm_human  ->  label_pairs  ->  rm_ai
      ->  rl_<arm> (each arm)  ->  eval_<arm> (each arm)  ->  judge_pairs  ->  judge_label  ->  round

An experiment is run by one job of kind ``experiment`` (:func:`run_next_level`): it submits the
next level's stages as its child jobs and hands over to them (the job runtime's fan-out), holding
no worker meanwhile; when they have all succeeded it is queued again and submits the level after.
A stage whose job already succeeded is skipped, so relaunching an experiment resumes it: finished
stages are reused, a failed or cancelled stage job is resumed (RL continues from its checkpoint).
"""
import hashlib
import itertools
import random
from dataclasses import dataclass
from typing import Callable

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from evalsite.jobs import runtime as jobs
from evalsite.models import Comparison, Policy, Prompt, Sample, pair_key
from evalsite.experiments.models import Experiment
from evalsite.jobs.models import Job
from labeling.kinds import LABEL
from rl import kinds as rl_kinds

EXPERIMENT = "experiment"
JUDGE_PAIRS = "experiment_judge_pairs"
ROUND = "experiment_round"


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


# The labeler's settings an experiment config may give (LabelerConfig fields; the labeler is the base
# model, run locally) and the evaluation round's.
LABELER_KEYS = ("preamble_variant", "batch_size", "max_prompt_tokens", "chain_of_thought", "dtype", "threads")
ROUND_KEYS = ("overlap", "question")


def ensure_labeler(exp, same_size=False):
    """The experiment's labeler config; made from the preset (labeler = the base model) when unset."""
    from labeling.models import LabelerConfig

    if exp.labeler_config_id and not same_size:
        return exp.labeler_config
    c = exp.config.get("labeler", {})
    name = f"{exp.name} · {'same-size ' if same_size else ''}labeler"
    config, _ = LabelerConfig.objects.get_or_create(name=name, defaults=dict(
        task=exp.task, backend="local", model_path=exp.base_policy.checkpoint_dir,
        **{k: v for k, v in c.items() if k in LABELER_KEYS},
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
        Stage("sft", 0, rl_kinds.SFT, "SFT", _sft, _result_key("policy_id", "sft_policy_id")),
        Stage("label_alignment", 0, LABEL, "AI labels on human/judge-labelled pairs (alignment)",
              _label_alignment, lambda exp, job: {"alignment_config_id": job.params["config_id"]}),
        Stage("pairs", 1, rl_kinds.SAMPLE, "Pairs sampled from SFT", _pairs,
              lambda exp, job: {"pair_comparison_ids": _pair_comparison_ids(exp)}),
    ]
    if not alignment_comparison_ids(exp):
        out = [s for s in out if s.name != "label_alignment"]
    if "rlhf" in arms:
        out.append(Stage("rm_human", 1, rl_kinds.REWARD_MODEL, "Reward model on human preferences",
                         lambda e: _rm(e, "human"), _result_key("reward_model_id", "rm_human_id")))
    if arms & {"rlaif_distilled"}:
        out.append(Stage("label_pairs", 2, LABEL, "AI labels on SFT pairs", _label_pairs))
        out.append(Stage("rm_ai", 3, rl_kinds.REWARD_MODEL, "Reward model on AI soft labels",
                         lambda e: _rm(e, "ai"), _result_key("reward_model_id", "rm_ai_id")))
    if "same_size" in arms:
        out.append(Stage("label_pairs_same_size", 2, LABEL, "Same-size AI labels on SFT pairs",
                         lambda e: _label_pairs(e, same_size=True)))
        out.append(Stage("rm_same_size", 3, rl_kinds.REWARD_MODEL, "Reward model on same-size AI labels",
                         lambda e: _rm(e, "ai", same_size=True), _result_key("reward_model_id", "rm_same_size_id")))
    for arm in rl_arms:
        out.append(Stage(f"rl_{arm}", 4, rl_kinds.RL, f"RL: {ARM_LABELS[arm].split(':')[0]}",
                         lambda e, a=arm: _rl(e, a), _result_key("policy_id", f"{arm}_policy_id")))
    eval_arms = (["sft"] if "sft" in arms or rl_arms else []) + rl_arms
    for arm in eval_arms:
        out.append(Stage(f"eval_{arm}", 5, rl_kinds.SAMPLE, f"Evaluation samples: {arm}", lambda e, a=arm: _eval(e, a)))
    if len(eval_arms) >= 2:
        out.append(Stage("judge_pairs", 6, JUDGE_PAIRS, "Pairs of arms for the AI judge", _judge_pairs,
                         _result_key("comparison_ids", "judge_comparison_ids")))
        out.append(Stage("judge_label", 7, LABEL, "AI-judge labels between arms", _judge_label))
        out.append(Stage("round", 8, ROUND, "Evaluation round for humans", _round,
                         _result_key("round_id", "round_id")))
    return out


def stage_by_name(exp, name):
    for s in stages_for(exp):
        if s.name == name:
            return s
    raise KeyError(f"Experiment {exp.pk} has no stage {name!r}")


# ---- running ---------------------------------------------------------------------------------
def _fail(exp_id, status, message):
    Experiment.objects.filter(pk=exp_id).update(status=status, message=message[:500], finished_at=timezone.now())


def _stage_job(exp, stage, parent):
    """The stage's job, to wait for: reused while queued or running, resumed when it failed or was
    cancelled with the same parameters, else a new one (the experiment's settings changed since)."""
    job = Job.objects.filter(pk=exp.stages.get(stage.name)).first() if exp.stages.get(stage.name) else None
    try:
        params = stage.params(exp)
        if job is not None and job.status in (Job.Status.FAILED, Job.Status.CANCELLED):
            if all(job.params.get(k) == v for k, v in params.items()):
                Job.objects.filter(pk=job.pk).update(parent=parent)
                jobs.resume(job, send=bool(parent.celery_task_id))  # same work: continue it (RL from its checkpoint, labeling from its labels)
                return job
            job = None
        if job is not None:  # queued or running, from an earlier attempt of this experiment
            Job.objects.filter(pk=job.pk).update(parent=parent)
            return job
        job = jobs.submit(stage.kind, params, name=f"{exp.name}: {stage.label}", user=exp.created_by,
                          parent=parent, send=bool(parent.celery_task_id))
    except (ValidationError, StageFailed, KeyError) as e:
        text = "; ".join(getattr(e, "messages", [])) or str(e)
        raise jobs.JobError(f"Stage '{stage.label}' could not start: {text}") from e
    record(exp.pk, stage.name, job.pk)
    return job


def run_next_level(ctx):
    """The ``experiment`` job: collect what finished stages made, then start the first level with
    stages left and wait for them; the job runtime queues this again once they have succeeded."""
    exp = Experiment.objects.select_related("base_policy", "dataset", "task").get(pk=ctx.params["experiment_id"])
    Experiment.objects.filter(pk=exp.pk).update(status=Experiment.Status.RUNNING, job=ctx.job, finished_at=None)
    for level in levels(exp):
        todo = []
        for name in level:
            stage = stage_by_name(exp, name)
            job = Job.objects.filter(pk=exp.stages.get(name)).first() if exp.stages.get(name) else None
            if job is not None and job.status == Job.Status.SUCCEEDED:
                if stage.collect:
                    exp = record(exp.pk, **stage.collect(exp, job))
            else:
                todo.append(stage)
        if todo:
            with transaction.atomic():  # all of the level's stage jobs, or none
                for stage in todo:
                    _stage_job(exp, stage, ctx.job)
            labels = ", ".join(s.label for s in todo)
            Experiment.objects.filter(pk=exp.pk).update(message=f"running: {labels}"[:500])
            ctx.log(f"level {level}: waiting for {labels}")
            return ctx.wait_for_children(f"running: {labels}")
    return {"stages": exp.stages}


def summarize_stages(parent, children, fields):
    """An experiment's job: its failure names the stage that failed (and says why)."""
    failed = [c for c in children if c["status"] == Job.Status.FAILED]
    if fields.get("status") == Job.Status.FAILED and failed:
        fields["error"] = "; ".join(f"Stage '{c['name'].split(': ', 1)[-1]}' failed: {c['error']}" for c in failed)
    return fields


def experiment_ended(job):
    """Mirror the ``experiment`` job's end on the experiment."""
    exp = Experiment.objects.filter(job=job).first()
    if exp is None:
        return
    if job.status == Job.Status.SUCCEEDED:
        _fail(exp.pk, Experiment.Status.SUCCEEDED, "all stages finished")
    elif job.status == Job.Status.CANCELLED or exp.cancel_requested:
        _fail(exp.pk, Experiment.Status.CANCELLED, "cancelled")
    else:
        _fail(exp.pk, Experiment.Status.FAILED, job.error or job.message or "failed")


# Numbers of the experiment itself: prompt budgets, the seed (the evaluation stage uses seed + 1)
# and the round's overlap. The stages' sections hold settings of their job kinds (rl/config.py).
BUDGETS = ("sft_prompts", "pair_prompts", "rl_prompts", "eval_prompts", "alignment_comparisons", "human_pairs")
STAGE_KINDS = {"sft": rl_kinds.SFT, "pairs": rl_kinds.SAMPLE, "reward_model": rl_kinds.REWARD_MODEL,
               "rl": rl_kinds.RL, "eval": rl_kinds.SAMPLE}
# the rest of a config: every stage's seed, the SFT policy's format, the RLHF reward model's labels,
# the labeler's settings (LabelerConfig fields, ensure_labeler) and the evaluation round's
OTHER_KEYS = ("seed", "policy_format", "human_label_field", "labeler", "round")


def config_errors(config):
    """Messages for what in an experiment's config its stages could not run with: unknown keys,
    numbers out of range, values that are not among a setting's choices."""
    from rl import params as P
    from rl.config import JOB_CONFIGS, Bound, SFTConfig, number_errors, settings_errors

    sections = {
        "": {**{k: Bound(int, 0, 10**7) for k in BUDGETS}, "seed": Bound(int, 0, 2**63 - 2, high_text="2^63 − 2")},
        "round": {"overlap": Bound(int, 1, 100)},
        **{section: JOB_CONFIGS[kind] for section, kind in STAGE_KINDS.items()},
    }
    messages = []
    unknown = [repr(k) for k in config if k not in {*BUDGETS, *STAGE_KINDS, *OTHER_KEYS}]
    if unknown:
        messages.append(f"Unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; an experiment config "
                        f"has {', '.join([*BUDGETS, *STAGE_KINDS, *OTHER_KEYS])}.")
    if "policy_format" in config:  # the SFT policy's, which the later stages take from it
        messages += settings_errors(SFTConfig, {"policy_format": config["policy_format"]})
    for section, bounds in sections.items():
        values = config.get(section, {}) if section else config
        if not isinstance(values, dict):
            messages.append(f"{section}: expected an object of settings, found {type(values).__name__}.")
            continue
        if isinstance(bounds, dict):
            messages += [f"{section}: {m}" if section else m for m in number_errors(values, bounds)]
        else:  # a stage's section: settings of its job kind
            messages += [f"{section}: {m}" for m in settings_errors(bounds, values)]
        if STAGE_KINDS.get(section) in (rl_kinds.SFT, rl_kinds.REWARD_MODEL, rl_kinds.RL):  # the launch section
            messages += [f"{section}: {m}" for m in P.launch_errors(values, STAGE_KINDS[section]).values()]
    return messages + _labeler_and_round_errors(config)


def _labeler_and_round_errors(config):
    """Unknown keys and invalid values in the ``labeler`` and ``round`` sections, checked as the
    models they become (a LabelerConfig, an EvalRound) check them."""
    from evalsite.humaneval.models import EvalRound
    from labeling.models import LabelerConfig

    labeler, round_ = config.get("labeler", {}), config.get("round", {})
    messages = []
    if not isinstance(labeler, dict):
        messages.append(f"labeler: expected an object of settings, found {type(labeler).__name__}.")
        labeler = {}
    if not isinstance(round_, dict):  # reported with the round's numbers (config_errors)
        round_ = {}
    for section, values, keys in (("labeler", labeler, LABELER_KEYS), ("round", round_, ROUND_KEYS)):
        unknown = [repr(k) for k in values if k not in keys]
        if unknown:
            messages.append(f"{section}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                            f"it takes {', '.join(keys)}.")
    given = {k: v for k, v in labeler.items() if k in LABELER_KEYS}
    try:
        LabelerConfig(**given).clean_fields(exclude=[f.name for f in LabelerConfig._meta.fields if f.name not in given])
    except ValidationError as e:
        messages += [f"labeler: {field.replace('_', ' ')}: {' '.join(errs)}" for field, errs in e.message_dict.items()]
    question = round_.get("question")
    if question is not None and question not in EvalRound.Question.values:
        messages.append(f"round: question must be one of {', '.join(EvalRound.Question.values)}; got {question!r}.")
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


def _queued_job(exp, *, send):
    """Mark the experiment running and queue its job: the earlier one again (finished stages are
    reused) or a new one; a job already queued or running is left as it is. ``send=False`` leaves
    it for ``run_here``."""
    Experiment.objects.filter(pk=exp.pk).update(status=Experiment.Status.RUNNING, cancel_requested=False,
                                                message="queued", started_at=timezone.now(), finished_at=None)
    job = exp.job
    if job is not None and not job.is_finished:
        return job
    if job is None or not jobs.resume(job, succeeded_too=True, send=send):
        job = jobs.submit(EXPERIMENT, {"experiment_id": exp.pk}, name=f"Experiment: {exp.name}",
                          user=exp.created_by, send=send)
        Experiment.objects.filter(pk=exp.pk).update(job=job)
    return job


def launch(exp):
    """Queue the experiment's job for the workers (finished stages are reused)."""
    exp = prepare(exp)
    with transaction.atomic():
        _queued_job(exp, send=True)
    exp.refresh_from_db()
    return exp


def run_inline(exp):
    """Run every stage in this process, level by level (the command line's default; no workers needed)."""
    exp = prepare(exp)
    jobs.run_here(_queued_job(exp, send=False).pk)
    exp.refresh_from_db()
    return exp


def cancel(exp):
    """Stop everything that is running; the experiment shows as cancelled once its stages stopped."""
    Experiment.objects.filter(pk=exp.pk).update(cancel_requested=True)
    exp.refresh_from_db()
    if exp.job is not None and not exp.job.is_finished:
        jobs.cancel(exp.job)
    else:
        _fail(exp.pk, Experiment.Status.CANCELLED, "cancelled")


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
    from evalsite.humaneval.models import EvalRound

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
