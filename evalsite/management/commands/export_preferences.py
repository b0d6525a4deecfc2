"""manage.py export_preferences: AI labels and human rankings as a TRL preference dataset."""
import sys
from pathlib import Path

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from evalsite import preferences as P
from evalsite.jobs.runtime import JobError
from evalsite.management.commands.import_dataset import _messages
from evalsite.preferencejobs import DEFAULT_TOKEN_VAR, run_export, submit_export, validate_export_params


class Command(BaseCommand):
    help = (
        "Export preference data in TRL's format (prompt, chosen, rejected, with the soft label, its position "
        "diagnostics and the annotators' agreement; or prompt, completion, label from harmlessness flags) to a "
        ".parquet or .jsonl file or a datasets save_to_disk folder, with a dataset card (README) beside it. "
        "Runs here with a progress bar, or as a background job with --background."
    )

    def add_arguments(self, parser):
        parser.add_argument("--dataset", action="append", default=[], metavar="NAME[:SPLIT]",
                            help="a dataset (every split of that name without :SPLIT); repeat for more")
        parser.add_argument("--round", action="append", default=[], type=int, metavar="ID",
                            help="an evaluation round whose rankings to export; repeat for more")
        parser.add_argument("--labeler", default="", metavar="CONFIG",
                            help="only this labeler config's AI labels (each comparison's newest)")
        parser.add_argument("--run", type=int, default=None, metavar="JOB_ID",
                            help="only the AI labels of this labeling run")
        parser.add_argument("--source", required=True, choices=list(P.SOURCES),
                            help="; ".join(f"{k}: {v}" for k, v in P.SOURCES.items()))
        parser.add_argument("--type", default="preference", choices=list(P.TYPES),
                            help="; ".join(f"{k}: {v}" for k, v in P.TYPES.items()))
        parser.add_argument("--drop-ties", action="store_true", help="leave out labels of exactly 0.5")
        parser.add_argument("--drop-inconsistent", action="store_true",
                            help="leave out AI labels that picked the same slot in both orders")
        parser.add_argument("--min-confidence", type=float, default=0.0, metavar="X",
                            help="leave out labels with |p - 0.5| below X (0 to 0.5)")
        parser.add_argument("--to", required=True, metavar="PATH",
                            help="a .parquet or .jsonl file, or a folder (no suffix) for datasets' save_to_disk")
        parser.add_argument("--overwrite", action="store_true", help="replace PATH if it exists")
        parser.add_argument("--push-to-hub", default="", metavar="OWNER/NAME",
                            help=f"also push the dataset and its card to this Hugging Face Hub repository "
                                 f"(needs a token in ${DEFAULT_TOKEN_VAR})")
        parser.add_argument("--token-env", default=DEFAULT_TOKEN_VAR, metavar="NAME",
                            help=f"the environment variable holding the Hub token (default {DEFAULT_TOKEN_VAR})")
        parser.add_argument("--private", action="store_true", help="create the Hub repository private")
        parser.add_argument("--background", action="store_true",
                            help="queue a job for the Celery workers instead of writing the file here")

    def handle(self, *args, **opts):
        params = {
            "datasets": opts["dataset"], "round_ids": opts["round"], "labeler": opts["labeler"],
            "run_id": opts["run"], "source": opts["source"], "type": opts["type"],
            "drop_ties": opts["drop_ties"], "drop_inconsistent": opts["drop_inconsistent"],
            "min_confidence": opts["min_confidence"], "path": str(Path(opts["to"]).expanduser().absolute()),
            "overwrite": opts["overwrite"], "push_to_hub": opts["push_to_hub"], "token_env": opts["token_env"],
            "private": opts["private"],
        }
        try:
            if opts["background"]:
                job = submit_export(params)
                self.stdout.write(f"Queued job #{job.pk} ({job.name}); a worker will run it. "
                                  f"Follow it at /admin/jobs/job/{job.pk}/change/")
                return
            params = validate_export_params(params)
        except ValidationError as e:
            raise CommandError(" ".join(_messages(e)))
        try:
            result = self._run(params)
        except JobError as e:
            raise CommandError(str(e))
        removed = ", ".join(f"{k[len('removed_'):].replace('_', ' ')} {v}" for k, v in result.items()
                            if k.startswith("removed_") and v)
        self.stdout.write(self.style.SUCCESS(
            f"Wrote {result['rows']:,} rows to {result['path']} ({result['type']}, {result['format']}); "
            f"card: {result['card']}" + (f"; removed: {removed}" if removed else "")
            + (f"; pushed to {result['pushed_to']}" if result.get("pushed_to") else "")))

    def _run(self, params):
        from tqdm import tqdm

        # disable=None: a bar on a terminal, nothing in a log file.
        with tqdm(total=100, bar_format="{desc}: {bar} {n:.0f}%", file=sys.stderr, disable=None) as bar:
            def progress(fraction, message=None):
                bar.update(round(100 * fraction) - bar.n)
                if message:
                    bar.set_description_str(message[:60])

            return run_export(params, progress=progress, made_by="manage.py export_preferences")
