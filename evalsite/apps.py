from django.apps import AppConfig


class EvalsiteConfig(AppConfig):
    name = "evalsite"
    verbose_name = "RLAIF workbench"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        # Load the Celery app in every Django process so that tasks are sent to the
        # configured broker (not Celery's default amqp://).
        from . import celery  # noqa: F401
        from . import signals  # noqa: F401
