from django.apps import AppConfig


class JobsConfig(AppConfig):
    name = "evalsite.jobs"
    label = "jobs"
    verbose_name = "Jobs"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from . import noop  # noqa: F401  (registers the "noop" kind)
