"""Dry run of a labeling run: how many requests and tokens it will take, and what it will cost."""
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from evalsite.models import Dataset
from labeling import runs
from labeling.backends import BackendError
from labeling.models import LabelerConfig


class Command(BaseCommand):
    help = ("Print how many requests and tokens labeling a selection with a labeler config will take, and its cost "
            "at the config's prices, without sending anything.")

    def add_arguments(self, parser):
        parser.add_argument("config", help="Labeler config name (or id)")
        parser.add_argument("--dataset", help="Dataset name (NAME or NAME:SPLIT when several splits share the name)")
        parser.add_argument("--comparison-ids", default="", help="Or explicit comparison ids, comma-separated")
        parser.add_argument("--human-labeled-only", action="store_true")
        parser.add_argument("--limit", type=int, help="At most this many comparisons")
        parser.add_argument("--relabel", action="store_true", help="Count comparisons this config already labeled too")

    def handle(self, *args, **o):
        config = _config(o["config"])
        params = {"config_id": config.pk, "comparison_ids": o["comparison_ids"], "limit": o["limit"],
                  "human_labeled_only": o["human_labeled_only"], "relabel": o["relabel"]}
        if o["dataset"]:
            params["dataset_id"] = _dataset(o["dataset"]).pk
        try:
            params = runs.validate_run_params(params)
            estimate = runs.estimate_run(params)
        except ValidationError as e:
            raise CommandError(" ".join(e.messages)) from None
        except (BackendError, ValueError) as e:
            raise CommandError(f"Labeler config '{config.name}': {e}") from None
        self.stdout.write(f"Dry run of '{config.name}' ({estimate['backend']}, {estimate['model'] or 'no model'}); "
                          "nothing was sent:")
        for line in runs.describe_estimate(estimate):
            self.stdout.write(f"  {line}")


def _config(name):
    config = LabelerConfig.objects.select_related("task").filter(name=name).first()
    if config is None and name.isdigit():
        config = LabelerConfig.objects.select_related("task").filter(pk=int(name)).first()
    if config is None:
        known = ", ".join(LabelerConfig.objects.values_list("name", flat=True)[:20]) or "none yet"
        raise CommandError(f"No labeler config named {name!r} (configs: {known}).")
    return config


def _dataset(text):
    name, _, split = text.partition(":")
    found = list(Dataset.objects.filter(name=name, **({"split": split} if split else {})))
    if not found:
        raise CommandError(f"No dataset named {text!r}.")
    if len(found) > 1:
        splits = ", ".join(f"{name}:{d.split}" for d in found)
        raise CommandError(f"Several datasets are named {name!r}; say which split: {splits}.")
    return found[0]
