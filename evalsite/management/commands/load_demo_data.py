"""manage.py load_demo_data: import the hand-written demo datasets (idempotent)."""
from pathlib import Path

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from evalsite.importjobs import run_import

DEMO_DIR = Path(__file__).resolve().parents[2] / "demo_data"
LICENCE = "CC0, demo data written for this project"
SOURCE = "evalsite/demo_data (written for this project; not real posts, dialogues or judgments)"

DEMO_DATASETS = [
    {"path": "summarization_posts.jsonl", "format": "prompts-jsonl", "name": "demo-summarization",
     "task": "summarization",
     "description": "Demo data: 24 made-up Reddit-style posts with reference TL;DRs. " + LICENCE + "."},
    {"path": "summarization_comparisons.jsonl", "format": "pairs-jsonl", "name": "demo-summarization-comparisons",
     "task": "summarization",
     "description": "Demo data: 12 pairs of TL;DRs with a made-up human preference, for checking AI-labeler "
                    "alignment. " + LICENCE + "."},
    {"path": "harmless_pairs.jsonl", "format": "pairs-jsonl", "name": "demo-harmless", "task": "harmless",
     "description": "Demo data: 16 short dialogues, each with a careful and a risky response; the careful one "
                    "is preferred. " + LICENCE + "."},
]


class Command(BaseCommand):
    help = "Import the demo datasets written for this project (CC0; split 'demo'). Safe to run again."

    def handle(self, *args, **opts):
        for spec in DEMO_DATASETS:
            params = {**spec, "path": str(DEMO_DIR / spec["path"]), "split": "demo", "licence": LICENCE,
                      "source": SOURCE}
            try:
                job = run_import(params, write=lambda line: None)
            except ValidationError as e:
                raise CommandError(f"{spec['name']}: {' '.join(e.messages)}")
            if job.status != "succeeded":
                raise CommandError(f"{spec['name']}: import failed (job #{job.pk}): {job.error or job.status}")
            r = job.result
            self.stdout.write(f"{r['dataset']}: {r['prompts_created']} prompts and {r['comparisons_created']} "
                              f"comparisons created ({r['prompts_existing']} and {r['comparisons_existing']} "
                              "already there)")
