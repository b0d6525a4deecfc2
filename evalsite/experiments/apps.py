from django.apps import AppConfig


class ExperimentsConfig(AppConfig):
    name = "evalsite.experiments"
    label = "experiments"
    verbose_name = "Experiments"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from . import jobs  # noqa: F401  (registers the experiment kinds)
