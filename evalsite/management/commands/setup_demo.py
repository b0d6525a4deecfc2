import os

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.core.management.base import BaseCommand

DEMO_USERS = [
    # (username, password, is_staff): printed at the end so a newcomer can log in.
    ("researcher", "researcher-demo", True),
    ("annotator", "annotator-demo", False),
]


class Command(BaseCommand):
    help = "Migrate, prepare the default model, load the demo data and create demo accounts (idempotent)."

    def add_arguments(self, parser):
        parser.add_argument("--skip-model", action="store_true", help="Do not convert/register SmolLM2")

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
        annotators, _ = Group.objects.get_or_create(name="annotators")
        for username, password, staff in DEMO_USERS:
            user, created = User.objects.get_or_create(username=username)
            if created:
                user.set_password(password)
                user.is_staff = user.is_superuser = staff
                user.save()
            if not staff:
                user.groups.add(annotators)
        url = os.environ.get("EVALSITE_URL", "http://127.0.0.1:8000/")
        self.stdout.write(self.style.SUCCESS("\nDemo ready. Log in at " + url))
        for username, password, staff in DEMO_USERS:
            self.stdout.write(f"  {'researcher' if staff else 'annotator ':10}  user: {username:11} password: {password}")
