"""Run an RLAIF experiment from a YAML file, with a progress bar (for scripted runs)."""
import json
import threading
import time
from pathlib import Path

import yaml
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from evalsite.experiments import figures, pipeline
from evalsite.experiments.presets import DEFAULT_ARMS, merged_config
from evalsite.models import Dataset, Policy, Task
from evalsite.experiments.models import Experiment

EXAMPLE = """\
name: tldr-demo
task: summarization          # summarization | helpful | harmless
dataset: tldr                # a dataset name (or name:split) imported with import_dataset
preference_dataset: null     # comparisons with human labels for RLHF (default: the dataset's)
base_model: default          # a policy name, a local HF folder, or 'default' (SmolLM2-135M-Instruct)
labeler: null                # an existing labeler config name (default: base model, preset settings)
preset: demo                 # demo | paper
arms: [sft, rlhf, rlaif_distilled, rlaif_direct]
config: {}                   # overrides, e.g. {rl_prompts: 32, rl: {beta: 0.1}}
"""


def _dataset(ref, field):
    name, _, split = str(ref).partition(":")
    qs = Dataset.objects.filter(name=name, **({"split": split} if split else {}))
    if qs.count() != 1:
        known = ", ".join(f"{d.name}:{d.split}" for d in Dataset.objects.all()[:20]) or "none"
        raise CommandError(f"{field}: {'no' if not qs.exists() else 'more than one'} dataset {ref!r} "
                           f"(say name:split). Known: {known}.")
    return qs.get()


def _base_policy(ref):
    from evalsite.defaultmodel import ModelNotFound, ensure_default_model, register_model

    if ref in (None, "default"):
        return ensure_default_model()
    policy = Policy.objects.filter(name=ref).first()
    if policy:
        return policy
    try:
        return register_model(Path(str(ref)).name or str(ref), str(ref))
    except ModelNotFound as e:
        raise CommandError(f"base_model: {e}")


class Command(BaseCommand):
    help = "Create (or resume) an experiment from a YAML file and run it, showing progress."

    def add_arguments(self, parser):
        parser.add_argument("config", nargs="?", help="YAML file (see --example)")
        parser.add_argument("--workers", action="store_true",
                            help="send the stages to Celery workers (parallel) instead of running them here")
        parser.add_argument("--example", action="store_true", help="print an example config and exit")

    def handle(self, *args, **o):
        if o["example"] or not o["config"]:
            self.stdout.write(EXAMPLE)
            return
        path = Path(o["config"])
        try:
            spec = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise CommandError(f"{path}: {e}")
        if not isinstance(spec, dict) or not spec.get("name") or not spec.get("dataset"):
            raise CommandError(f"{path}: needs at least 'name' and 'dataset' (see --example).")
        exp = self._experiment(spec)
        self.stdout.write(f"experiment #{exp.pk} “{exp.name}”: arms {', '.join(exp.arms)}; preset {exp.preset}")
        watcher = _ProgressBar(exp.pk)
        watcher.start()
        try:
            if o["workers"]:
                pipeline.launch(exp)
                while Experiment.objects.get(pk=exp.pk).status == Experiment.Status.RUNNING:
                    time.sleep(2)
            else:
                pipeline.run_inline(exp)
        except ValidationError as e:
            raise CommandError(" ".join(e.messages))
        finally:
            watcher.stop()
        exp.refresh_from_db()
        self.stdout.write(json.dumps(_finite(_summary(exp)), indent=2, default=str))
        if exp.status != Experiment.Status.SUCCEEDED:
            raise CommandError(f"experiment {exp.status}: {exp.message}")
        self.stdout.write(self.style.SUCCESS(f"done: /experiments/{exp.pk}/"))

    def _experiment(self, spec):
        from labeling.models import LabelerConfig

        task = Task.objects.filter(slug=spec.get("task", "summarization")).first()
        if task is None:
            raise CommandError(f"task: unknown {spec.get('task')!r}; choose summarization, helpful or harmless.")
        try:
            config = merged_config(spec.get("preset", "demo"), spec.get("config") or {})
        except ValueError as e:
            raise CommandError(str(e))
        fields = dict(
            task=task, dataset=_dataset(spec["dataset"], "dataset"),
            preference_dataset=_dataset(spec["preference_dataset"], "preference_dataset")
            if spec.get("preference_dataset") else None,
            base_policy=_base_policy(spec.get("base_model")), preset=spec.get("preset", "demo"),
            arms=list(spec.get("arms") or DEFAULT_ARMS), config=config,
        )
        if spec.get("labeler"):
            fields["labeler_config"] = LabelerConfig.objects.filter(name=spec["labeler"]).first()
            if fields["labeler_config"] is None:
                raise CommandError(f"labeler: no labeler config named {spec['labeler']!r}.")
        exp, created = Experiment.objects.get_or_create(name=spec["name"], defaults=fields)
        if not created:
            # The file is the truth: stages whose parameters it changed run again, the rest are reused.
            Experiment.objects.filter(pk=exp.pk).update(**fields)
            exp.refresh_from_db()
        return exp


def _finite(value):
    """NaN (e.g. an alignment with no human-labelled pairs) as null, so the output is valid JSON."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _summary(exp):
    f = figures.all_figures(exp)
    for r in (f.get("rl") or {}).values():
        if isinstance(r, dict):
            r.pop("curve", None)
    return {"status": exp.status, "message": exp.message, "artifacts": {k: v for k, v in exp.artifacts.items()
            if k != "splits" and not k.endswith("comparison_ids")}, "figures": f}


class _ProgressBar(threading.Thread):
    def __init__(self, exp_id):
        super().__init__(daemon=True)
        self.exp_id = exp_id
        self.done = threading.Event()

    def run(self):
        from django.db import connection

        bar = tqdm(total=100, unit="%", bar_format="{l_bar}{bar}| {n:.0f}% [{elapsed}] {postfix}")
        try:
            while True:
                exp = Experiment.objects.filter(pk=self.exp_id).first()  # (None: not committed yet)
                if exp is not None:
                    frac, _ = pipeline.progress(exp)
                    bar.n = round(100 * frac, 1)
                    bar.set_postfix_str(exp.message[:60], refresh=False)
                    bar.refresh()
                if self.done.wait(1.0):
                    break
        finally:
            bar.close()
            connection.close()

    def stop(self):
        self.done.set()
        self.join(timeout=5)
