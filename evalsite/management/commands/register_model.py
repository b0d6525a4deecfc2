from django.core.management.base import BaseCommand, CommandError

from evalsite.defaultmodel import ModelNotFound, register_model
from evalsite.models import Policy


class Command(BaseCommand):
    help = "Register a local Hugging Face folder (or a hub id, downloaded when online) as a Policy."

    def add_arguments(self, parser):
        parser.add_argument("model", help="Local HF folder, or a hub id such as HuggingFaceTB/SmolLM2-360M-Instruct")
        parser.add_argument("--name", required=True, help="Policy name shown in the app")
        parser.add_argument("--kind", default=Policy.Kind.SFT, choices=Policy.Kind.values)
        parser.add_argument("--no-download", action="store_true", help="Fail instead of downloading a hub id")

    def handle(self, *args, **o):
        try:
            policy = register_model(o["name"], o["model"], kind=o["kind"], download=not o["no_download"],
                                    log=self.stdout.write)
        except ModelNotFound as e:
            raise CommandError(str(e))
        self.stdout.write(self.style.SUCCESS(f"Policy '{policy.name}' ({policy.kind}) -> {policy.checkpoint_dir}"))
