"""Job kinds of the training app: sft, sample, reward_model, rl (thin layers over the cores).

Each job reads its (validated) params, runs a plain-Python core, reports per-step metrics
(plotted live on the admin job page) and registers what it made -- a Policy or a
RewardModel -- in one transaction at the end. ``rl`` checkpoints into the job's work_dir
and, resumed after a cancel or a crash, continues from the last checkpoint.
"""
from dataclasses import asdict, fields
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.utils.text import slugify

from evalsite.jobs.runtime import JobCancelled, JobError, job_kind
from evalsite.models import Comparison, Policy, Prompt, Sample
from evalsite.models.core import pair_key
from evalsite.tasktext import cut_at_turn_markers
from rl import kinds, params as P
from rl.data import policy_inputs, preference_pairs, prompt_queryset
from rl.launch import run_launched


def _config(cls, params):
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in params.items() if k in names})


def _output_dir(prefix, name, job_id):
    return Path(settings.MODELS_DIR) / f"{prefix}-{slugify(name)[:60] or 'model'}-job{job_id}"


def _quiet_transformers():
    import transformers

    transformers.logging.set_verbosity_error()


def _resolve_format(fmt, folder):
    """``raw`` or ``chat`` for a job's ``policy_format`` with the tokenizer in ``folder``."""
    try:
        return P.resolved_policy_format(fmt, folder)
    except ValueError as e:
        raise JobError(f"policy format: {e}")


def _start_dir(params):
    if params.get("policy_id"):
        policy = Policy.objects.get(pk=params["policy_id"])
        return policy, policy.checkpoint_dir
    return None, params["base_model"]


# --- SFT ---------------------------------------------------------------------------------
@job_kind(kinds.SFT, label="Supervised fine-tuning", validator=P.validate_sft)
def sft_job(ctx):
    """Fine-tune a causal LM on the prompts' reference responses (loss on response tokens only)."""
    from rl.modeling import load_causal_lm, load_tokenizer, save_hf_folder
    from rl.sft import SFTConfig, train_sft

    _quiet_transformers()
    p = ctx.params
    parent, start = _start_dir(p)
    prompts = list(prompt_queryset(p).exclude(reference="").order_by("pk"))
    ctx.log(f"SFT of {start} on {len(prompts)} prompts with references")
    config = _config(SFTConfig, p)
    from rl.formats import response_end_ids

    fmt = _resolve_format(p.get("policy_format", "raw"), start)
    start_tokenizer = load_tokenizer(start)
    inputs, _, _ = policy_inputs(prompts, start_tokenizer, fmt)
    end_ids = response_end_ids(start_tokenizer, fmt)
    ctx.log(f"policy format: {fmt}")
    if config.processes == 1:
        tokenizer, model = start_tokenizer, load_causal_lm(start)

    def on_step(step, total, metrics):
        ctx.metric(step, **metrics)
        ctx.progress((step + 1) / total, f"step {step + 1}/{total}, loss {metrics['loss']:.4f}")

    if config.processes > 1:  # rl/launch.py: the processes train; this worker relays, saves and registers
        done = run_launched(ctx, "sft", {"config": asdict(config), "start": str(start),
                                         "prompts": inputs, "end_ids": end_ids,
                                         "responses": [x.reference for x in prompts]})
        losses, tokenizer, model = done["losses"], load_tokenizer(done["trained"]), load_causal_lm(done["trained"])
    else:
        losses = train_sft(model, tokenizer, inputs, [x.reference for x in prompts], config, on_step=on_step,
                           end_ids=end_ids)
    from rl.cards import sft_card_text

    base_model = (parent.base_model or parent.checkpoint_dir) if parent else start
    card = sft_card_text(p, job_id=ctx.job_id, base_model=base_model, parent=parent, prompts=prompts, losses=losses)
    out = save_hf_folder(model, tokenizer, _output_dir("policy", p["name"], ctx.job_id),
                         extra_files={"README.md": card})
    with transaction.atomic():
        policy, _ = Policy.objects.update_or_create(job_id=ctx.job_id, kind=Policy.Kind.SFT, defaults=dict(
            name=p["name"], base_model=base_model,
            checkpoint_dir=str(out), parent=parent, policy_format=fmt,
            metadata={"sft": {k: p[k] for k in P.SFT_DEFAULTS}, "n_examples": len(prompts),
                      "final_loss": losses[-1] if losses else None},
        ))
    ctx.set_result(policy_id=policy.pk)
    return {"policy_id": policy.pk, "steps": len(losses), "final_loss": losses[-1] if losses else None,
            "checkpoint_dir": str(out)}


# --- sampling ----------------------------------------------------------------------------
@job_kind(kinds.SAMPLE, label="Sample responses", resumable=True, validator=P.validate_sample)
def sample_job(ctx):
    """Generate ``n`` responses per prompt from a policy as Sample rows (existing ones are kept);
    with ``make_pairs``, samples 0 and 1 of each prompt become a Comparison for labeling."""
    from rl.modeling import load_causal_lm, load_tokenizer
    from rl.sampling import SamplingConfig, generate

    _quiet_transformers()
    p = ctx.params
    policy = Policy.objects.get(pk=p["policy_id"])
    prompts = list(prompt_queryset(p).order_by("pk"))
    n = p["n"]
    have = set(Sample.objects.filter(policy=policy, prompt__in=prompts, index__lt=n).values_list("prompt_id", "index"))
    todo = [(pr, k) for pr in prompts for k in range(n) if (pr.pk, k) not in have]
    ctx.log(f"{len(todo)} samples to make ({len(have)} already there) from {policy.name}")
    generation = {k: p[k] for k in ("temperature", "top_p", "max_new_tokens", "seed")}
    created = pairs = 0
    fmt = _resolve_format(p.get("policy_format") or policy.policy_format, policy.checkpoint_dir)
    if todo:
        tokenizer, model = load_tokenizer(policy.checkpoint_dir), load_causal_lm(policy.checkpoint_dir, trainable=False)
        config = _config(SamplingConfig, p)
        # Chunks of several batches: each chunk is written in its own transaction.
        chunk_rows = config.batch_size * 4
        done = 0
        for start in range(0, len(todo), chunk_rows):
            chunk = todo[start:start + chunk_rows]
            chunk_prompts = sorted({pr.pk: pr for pr, _ in chunk}.values(), key=lambda x: x.pk)
            position = {pr.pk: i for i, pr in enumerate(chunk_prompts)}
            inputs, stop_strings, stop_ids = policy_inputs(chunk_prompts, tokenizer, fmt)
            out = generate(model, tokenizer, inputs, config, prompt_keys=[x.pk for x in chunk_prompts],
                           only={(position[pr.pk], k) for pr, k in chunk}, stop_strings=stop_strings,
                           extra_stop_ids=stop_ids)
            with transaction.atomic():
                # A response ends at the task's first turn marker; PostgreSQL text cannot hold NUL,
                # which a byte-level model can emit.
                rows = [Sample(policy=policy, prompt=pr, index=k,
                               text=cut_at_turn_markers(out[position[pr.pk]][k].text, pr.dataset.task.text()).replace("\x00", ""),
                               token_count=len(out[position[pr.pk]][k].token_ids), job_id=ctx.job_id,
                               policy_format=fmt,
                               generation={**generation, "finished": out[position[pr.pk]][k].finished})
                        for pr, k in chunk]
                created += len(Sample.objects.bulk_create(rows, ignore_conflicts=True))
                if p["make_pairs"]:
                    pairs += _make_pairs(policy, chunk_prompts, ctx.job_id)
            done += len(chunk)
            ctx.progress(done / len(todo), f"{done}/{len(todo)} samples")
    if p["make_pairs"]:
        with transaction.atomic():
            pairs += _make_pairs(policy, prompts, ctx.job_id)
    return {"samples_created": created, "samples_existing": len(have), "pairs_created": pairs}


def _make_pairs(policy, prompts, job_id):
    """A Comparison of samples 0 and 1 for each prompt that has both (idempotent by content key)."""
    samples = {}
    for s in Sample.objects.filter(policy=policy, prompt__in=prompts, index__in=[0, 1]):
        samples[(s.prompt_id, s.index)] = s
    made = 0
    for pr in prompts:
        a, b = samples.get((pr.pk, 0)), samples.get((pr.pk, 1))
        if a is None or b is None:
            continue
        if Comparison.objects.filter(key=pair_key(pr.pk, a.text, b.text, a.pk, b.pk)).exists():
            continue
        Comparison.objects.create(prompt=pr, response_a=a.text, response_b=b.text, sample_a=a, sample_b=b,
                                  job_id=job_id, metadata={"policy_id": policy.pk, "made_from": "samples 0 and 1"})
        made += 1
    return made


# --- reward model --------------------------------------------------------------------------
@job_kind(kinds.REWARD_MODEL, label="Train a reward model", validator=P.validate_reward_model)
def reward_model_job(ctx):
    """Train a reward model on human (hard) or AI (soft) preference labels; register it."""
    from rl.cards import reward_model_card_text
    from rl.export import save_reward_model
    from rl.models import RewardModel
    from rl.reward_model import RewardModelConfig, RewardScorer, evaluate_pairs, pairwise_metrics, train_reward_model

    _quiet_transformers()
    p = ctx.params
    parent, start = _start_dir(p)
    from rl.modeling import load_tokenizer, seed_everything

    fmt = _resolve_format(p.get("policy_format") or (parent.policy_format if parent else "raw"), start)
    # the pairs' prompts as the policy reads them in that format: RL's reward model will read them so
    train, held_out = preference_pairs(p, load_tokenizer(start), fmt)
    if not train:
        raise JobError("No labelled comparisons to train on.")
    ctx.log(f"{len(train)} training pairs, {len(held_out)} held out; {p['labels']} labels; from {start}")
    config = _config(RewardModelConfig, p)
    if config.processes == 1:
        seed_everything(config.seed)  # the fresh head is drawn from the run's seed, as rl/launch.py draws it
        scorer = RewardScorer.from_folder(start, max_length=config.max_length)

    def on_step(step, total, metrics):
        ctx.metric(step, **metrics)
        ctx.progress((step + 1) / total, f"step {step + 1}/{total}, loss {metrics['loss']:.4f}")

    if config.processes > 1:  # rl/launch.py: the processes train; this worker evaluates, saves and registers
        done = run_launched(ctx, "reward_model", {"config": asdict(config), "start": str(start), "pairs": [
            [x.prompt, x.response_a, x.response_b, x.p_first] for x in train]})
        scorer = RewardScorer.from_folder(done["trained"], max_length=config.max_length)
    else:
        train_reward_model(scorer, train, config, on_step=on_step)
    metrics = {}
    if held_out:
        r_a = scorer.score([x.prompt for x in held_out], [x.response_a for x in held_out])
        r_b = scorer.score([x.prompt for x in held_out], [x.response_b for x in held_out])
        metrics["held_out"] = pairwise_metrics(r_a, r_b, [x.p_first for x in held_out])
        humans = [i for i, x in enumerate(held_out) if x.human is not None]
        if humans:
            metrics["held_out_vs_human"] = pairwise_metrics(r_a[humans], r_b[humans], [held_out[i].human for i in humans])
    metrics["train"] = evaluate_pairs(scorer, train[:512])
    dest = _output_dir("rm", p["name"], ctx.job_id)
    prompt_ids = {x.prompt_id for x in train + held_out}
    task_ids = set(Prompt.objects.filter(pk__in=prompt_ids).values_list("dataset__task_id", flat=True))
    fields = dict(
        name=p["name"], labels=p["labels"], checkpoint_dir=str(dest), base_model=start, base_policy=parent,
        policy_format=fmt,
        task_id=task_ids.pop() if len(task_ids) == 1 else None, label_config_ids=p.get("label_config_ids") or [], n_train_pairs=len(train),
        n_eval_pairs=len(held_out), metrics=metrics,
        metadata={"config": {k: p[k] for k in P.RM_DEFAULTS if k in p}},
    )
    # saved so that AutoModelForSequenceClassification (TRL, OpenRLHF, RewardBench) scores as we do
    card = reward_model_card_text(RewardModel(job_id=ctx.job_id, **fields), tokenizer=scorer.tokenizer,
                                  causal=scorer.causal, prompt_ids=prompt_ids)
    out = save_reward_model(scorer.model, scorer.tokenizer, dest, card)
    with transaction.atomic():
        rm, _ = RewardModel.objects.update_or_create(job_id=ctx.job_id, defaults=fields)
    ctx.set_result(reward_model_id=rm.pk)
    held = metrics.get("held_out") or {}
    if held:
        ctx.log(f"held-out accuracy {held['accuracy']:.3f} on {held['n']} pairs, ECE {held['ece']:.3f}")
    return {"reward_model_id": rm.pk, "metrics": metrics, "checkpoint_dir": str(out)}


# --- RL ------------------------------------------------------------------------------------
def _reward_function(p, prompts, policy_texts, *, load=True):
    """(reward_fn(contexts, responses), contexts for the prompts, reward source text, policy kind).

    ``load=False`` (reward models only): in place of reward_fn, what launched processes need to
    load it (rl/launch.py); direct RLAIF runs in one process (rl/params.py says so).
    """
    from rl.models import RewardModel
    from rl.reward_model import RewardScorer

    if p["reward"] == "reward_model":
        rm = RewardModel.objects.get(pk=p["reward_model_id"])
        scorer = {"kind": "reward_model", "path": rm.checkpoint_dir,
                  "max_length": p["max_prompt_tokens"] + p["max_response_tokens"]} if not load else RewardScorer.from_folder(rm.checkpoint_dir, max_length=p["max_prompt_tokens"] + p["max_response_tokens"])
        # the reward model reads what the policy read, as in its training pairs
        return scorer, list(policy_texts), f"reward model #{rm.pk} “{rm.name}” ({rm.labels} labels)", \
            rm.policy_kind
    from labeling.direct import DirectScorer

    tasks = {x.dataset.task.slug: x.dataset.task for x in prompts}
    if len(tasks) != 1:
        raise JobError(f"Direct RLAIF scores one task at a time; the prompts mix {', '.join(sorted(tasks))}.")
    scorer = DirectScorer.from_pretrained(p["labeler_model"], tasks.popitem()[1].text())
    return scorer.rewards, [x.context for x in prompts], f"direct RLAIF: {p['labeler_model']}", Policy.Kind.RLAIF_DIRECT


def _train_rl_here(ctx, config, sft, prompts, contexts, reward_fn, source, inputs):
    """The RL loop in this worker process; returns the trainer."""
    from rl.reinforce import ReinforceTrainer

    work = ctx.work_dir
    resume = work / "checkpoint" if ReinforceTrainer.checkpoint_step(work) is not None else None
    texts, stop_strings, stop_ids = inputs
    trainer = ReinforceTrainer.from_sft(sft.checkpoint_dir, reward_fn, config, resume_from=resume,
                                        stop_strings=stop_strings, extra_stop_ids=stop_ids)
    total = trainer.total_steps(len(prompts))
    ctx.log(f"resuming at step {trainer.completed_steps}/{total} from {resume}" if resume
            else f"RL from {sft.name} on {len(prompts)} prompts, {total} steps; reward: {source}")

    def on_step(step, total, metrics, texts):
        ctx.metric(step, **metrics)
        if step % max(1, config.save_every) == 0:
            ctx.log(f"step {step}: reward {metrics['reward_mean']:.3f}, KL {metrics['kl']:.3f}; "
                    f"sample: {texts[0][:200]!r}")
        ctx.progress((step + 1) / total, f"step {step + 1}/{total}, reward {metrics['reward_mean']:.3f}, "
                                         f"KL {metrics['kl']:.3f}")

    try:
        trainer.train(texts, contexts, on_step=on_step, checkpoint_dir=work)
    except JobCancelled:
        if trainer.completed_steps != ReinforceTrainer.checkpoint_step(work):
            trainer.save_checkpoint(work)
        ctx.log(f"checkpoint at step {trainer.completed_steps} kept for resuming")
        raise
    return trainer


def _launched_rl(ctx, config, sft, prompts, contexts, reward, source, inputs):
    """The RL loop on ``config.processes`` processes (rl/launch.py); returns what registering needs
    of a trainer (policy, tokenizer, completed steps), read from the final checkpoint."""
    from types import SimpleNamespace

    from rl.modeling import load_causal_lm, load_tokenizer
    from rl.reinforce import ReinforceTrainer

    ctx.log(f"RL from {sft.name} on {len(prompts)} prompts; reward: {source}")
    run_launched(ctx, "rl", {"config": asdict(config), "start": sft.checkpoint_dir, "reward": reward,
                             "prompts": inputs[0], "contexts": list(contexts),
                             "stop_strings": list(inputs[1]), "extra_stop_ids": list(inputs[2])})
    final = ctx.work_dir / "checkpoint"
    return SimpleNamespace(policy=load_causal_lm(final / "policy"), tokenizer=load_tokenizer(final / "policy"),
                           completed_steps=ReinforceTrainer.checkpoint_step(ctx.work_dir))


@job_kind(kinds.RL, label="RL (REINFORCE with value baseline)", resumable=True, validator=P.validate_rl)
def rl_job(ctx):
    """REINFORCE with a learned value baseline from an SFT policy (docs/method.md §3)."""
    from rl.modeling import save_hf_folder
    from rl.reinforce import RLConfig

    _quiet_transformers()
    p = ctx.params
    existing = Policy.objects.filter(job_id=ctx.job_id).first()
    if existing is not None:  # finished before, e.g. a crash right after registering the policy
        return {"policy_id": existing.pk}
    sft = Policy.objects.get(pk=p["policy_id"])
    prompts = list(prompt_queryset(p).order_by("pk"))
    config = _config(RLConfig, p)
    from rl.modeling import load_tokenizer
    from rl.models import RewardModel

    fmt = _resolve_format(p.get("policy_format") or sft.policy_format, sft.checkpoint_dir)
    if p["reward"] == "reward_model":  # validated at submit; the reward model's row may have changed since
        message = P.reward_model_format_error(RewardModel.objects.get(pk=p["reward_model_id"]), sft, fmt)
        if message:
            raise JobError(message)
    inputs = policy_inputs(prompts, load_tokenizer(sft.checkpoint_dir), fmt)
    ctx.log(f"policy format: {fmt}")
    reward_fn, contexts, source, kind = _reward_function(p, prompts, inputs[0], load=config.processes == 1)
    work = ctx.work_dir
    if config.processes > 1:  # rl/launch.py: the processes train and checkpoint; this worker relays and registers
        trainer = _launched_rl(ctx, config, sft, prompts, contexts, reward_fn, source, inputs)
    else:
        trainer = _train_rl_here(ctx, config, sft, prompts, contexts, reward_fn, source, inputs)
    from rl.cards import rl_card_text

    card = rl_card_text(p, job_id=ctx.job_id, arm=kind, base_model=sft.base_model or sft.checkpoint_dir, sft=sft,
                        prompts=prompts, reward_source=source, steps=trainer.completed_steps)
    out = save_hf_folder(trainer.policy, trainer.tokenizer, _output_dir("policy", p["name"], ctx.job_id),
                         extra_files={"README.md": card})
    with transaction.atomic():
        policy, _ = Policy.objects.update_or_create(job_id=ctx.job_id, defaults=dict(
            name=p["name"], kind=kind, base_model=sft.base_model or sft.checkpoint_dir, checkpoint_dir=str(out),
            parent=sft, reward_source=source[:300], policy_format=fmt,
            metadata={"rl": {k: p[k] for k in P.RL_DEFAULTS if k in p}, "steps": trainer.completed_steps,
                      "value_model_dir": str(work / "checkpoint" / "value")},
        ))
    ctx.set_result(policy_id=policy.pk)
    return {"policy_id": policy.pk, "steps": trainer.completed_steps, "checkpoint_dir": str(out)}
