"""manage.py import_dataset --format FORMAT PATH: import a dataset file as a Job."""
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from evalsite.importers import FORMATS
from evalsite.importjobs import run_import


class Command(BaseCommand):
    help = (
        "Import a dataset file (prompts, and preference pairs where the format has them) as a Job, in one "
        "transaction; importing the same file again creates no duplicates. Formats: "
        + "; ".join(f"{k} ({v})" for k, v in FORMATS.items())
    )

    def add_arguments(self, parser):
        parser.add_argument("path", help="the file to import (.jsonl, .jsonl.gz, .csv; for --format hf also "
                            ".parquet, a save_to_disk folder or a hub id)")
        parser.add_argument("--format", required=True, help=f"one of: {', '.join(FORMATS)}")
        parser.add_argument("--name", default="", help="dataset name (default: the file's name)")
        parser.add_argument("--split", default="", help="dataset split (default: train)")
        parser.add_argument("--task", default="", help="the task's slug: summarization, helpful, harmless or a "
                            "custom task's (manage.py load_task) (default: the format's: hh harmless, "
                            "tldr/openai-comparisons summarization; generic formats and hf need it)")
        parser.add_argument("--column-map", default="", metavar="FIELD=COLUMN,...",
                            help="hf format: read a field from another column, e.g. chosen=better,rejected=worse "
                            "(fields: prompt, chosen, rejected, completion, prompt_id, source, p_chosen, labeler)")
        parser.add_argument("--source", default="", help="where the data came from")
        parser.add_argument("--licence", "--license", dest="licence", default="", help="the data's licence")
        parser.add_argument("--description", default="")
        parser.add_argument("--background", action="store_true",
                            help="queue the job for the Celery workers instead of running it here")

    def handle(self, *args, **opts):
        params = {k: opts[k] for k in ("path", "format", "name", "split", "task", "source", "licence", "description",
                                       "column_map")}
        try:
            job = run_import(params, background=opts["background"], write=self.stdout.write)
        except ValidationError as e:
            raise CommandError(" ".join(_messages(e)))
        if opts["background"]:
            self.stdout.write(f"Queued job #{job.pk} ({job.name}); a worker will run it. "
                              f"Follow it at /admin/jobs/job/{job.pk}/change/")
            return
        if job.status != "succeeded":
            raise CommandError(f"Import failed (job #{job.pk}): {job.error or job.status}")
        r = job.result
        self.stdout.write(self.style.SUCCESS(
            f"Imported {r['dataset']} (job #{job.pk}): prompts created {r['prompts_created']}, existing "
            f"{r['prompts_existing']}; comparisons created {r['comparisons_created']}, existing "
            f"{r['comparisons_existing']}" + "".join(
                f"; {k.replace('_', ' ')} {v}" for k, v in r.items() if k.startswith("skipped_") and v)
        ))


def _messages(error):
    if hasattr(error, "message_dict"):
        return [f"{field}: {m}" if field != "__all__" else m
                for field, msgs in error.message_dict.items() for m in msgs]
    return error.messages
