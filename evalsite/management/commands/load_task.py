"""manage.py load_task FILE.yaml: create or update a custom task from a YAML file."""
from django.core.management.base import BaseCommand, CommandError

from evalsite.taskfiles import FIELDS, REQUIRED, TaskFileError, load_task, read_task_file


class Command(BaseCommand):
    help = (
        "Create or update a task (matched by its slug) from a YAML file with the fields "
        f"{', '.join(REQUIRED)} and optionally {', '.join(k for k in FIELDS if k not in REQUIRED)}. "
        "policy_template must hold {input}. Nothing is written when anything is wrong."
    )

    def add_arguments(self, parser):
        parser.add_argument("path", help="the task's YAML file")

    def handle(self, *args, **opts):
        try:
            task, created = load_task(read_task_file(opts["path"]))
        except TaskFileError as e:
            raise CommandError(str(e))
        self.stdout.write(self.style.SUCCESS(
            f"{'Created' if created else 'Updated'} task {task.slug!r} ({task.name}). Import data for it with "
            f"manage.py import_dataset --task {task.slug} ..."
        ))
