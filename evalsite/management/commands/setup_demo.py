import os

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.core.management.base import BaseCommand

DEMO_USERS = [
    # (username, password, group): printed at the end so a newcomer can log in. The researcher is
    # staff in the "researcher" group (created by migration 0010): its permissions, not a superuser's.
    ("researcher", "researcher-demo", "researcher"),
    ("annotator", "annotator-demo", "annotators"),
]


class Command(BaseCommand):
    help = "Migrate, prepare the default model, load the demo data and create demo accounts (idempotent)."

    def add_arguments(self, parser):
        parser.add_argument("--skip-model", action="store_true", help="Do not convert/register SmolLM2")
        parser.add_argument("--no-experiment", action="store_true", help="Do not create and launch the demo experiment")

    def handle(self, *args, **o):
        call_command("migrate", interactive=False, verbosity=0)
        self.stdout.write("database migrated")
        if not o["skip_model"]:
            call_command("prepare_default_model", stdout=self.stdout)
        try:
            call_command("load_demo_data", stdout=self.stdout)
        except Exception as e:  # the demo still starts; the message says what went wrong
            self.stderr.write(self.style.WARNING(f"demo data not loaded: {e}"))
        User = get_user_model()
        for username, password, group in DEMO_USERS:
            user, created = User.objects.get_or_create(username=username)
            if created:
                user.set_password(password)
                user.is_staff = group == "researcher"
                user.save()
            user.groups.add(Group.objects.get(name=group))  # both groups come with the migrations
        if not o["skip_model"] and not o["no_experiment"]:
            self._demo_experiment()
        url = os.environ.get("EVALSITE_URL", "http://127.0.0.1:8000/")
        self.stdout.write(self.style.SUCCESS("\nDemo ready. Log in at " + url))
        for username, password, group in DEMO_USERS:
            who = "researcher" if group == "researcher" else "annotator"
            self.stdout.write(f"  {who:10}  user: {username:11} password: {password}")

    def _demo_experiment(self):
        """The paper's comparison on the demo data, launched for the worker that `serve` starts."""
        from django.core.exceptions import ValidationError

        from evalsite.defaultmodel import ensure_default_model
        from evalsite.experiments import pipeline
        from evalsite.experiments.presets import DEFAULT_ARMS, merged_config
        from evalsite.models import Dataset, Task
        from evalsite.experiments.models import Experiment

        posts = Dataset.objects.filter(name="demo-summarization").first()
        prefs = Dataset.objects.filter(name="demo-summarization-comparisons").first()
        if posts is None:
            self.stderr.write("demo experiment skipped: the demo data is not loaded")
            return
        exp, created = Experiment.objects.get_or_create(name="Demo: RLAIF vs RLHF vs SFT on demo posts", defaults=dict(
            task=Task.objects.get(slug="summarization"), dataset=posts, preference_dataset=prefs,
            base_policy=ensure_default_model(log=lambda *_: None), preset="demo", arms=list(DEFAULT_ARMS),
            config=merged_config("demo", {"sft_prompts": 12, "pair_prompts": 12, "rl_prompts": 8,
                                          "eval_prompts": 8, "alignment_comparisons": 12}),
        ))
        if exp.status in (Experiment.Status.SUCCEEDED, Experiment.Status.RUNNING):
            self.stdout.write(f"demo experiment: {exp.get_status_display().lower()} (/experiments/{exp.pk}/)")
            return
        try:
            pipeline.launch(exp)
        except ValidationError as e:
            self.stderr.write(f"demo experiment not launched: {' '.join(e.messages)}")
            return
        self.stdout.write(f"demo experiment launched: it runs on the worker (about 15 minutes on a laptop CPU); "
                          f"watch it at /experiments/{exp.pk}/")
