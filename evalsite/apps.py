from django.apps import AppConfig
from django.db.models.signals import post_migrate


class EvalsiteConfig(AppConfig):
    name = "evalsite"
    verbose_name = "RLAIF workbench"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        # Load the Celery app in every Django process so that tasks are sent to the
        # configured broker (not Celery's default amqp://).
        from . import celery  # noqa: F401
        from . import importjobs, preferencejobs  # noqa: F401  (register their job kinds)

        post_migrate.connect(_seed_tasks, sender=self)


def _seed_tasks(sender, apps=None, using="default", **kwargs):
    from evalsite.seed import seed_tasks

    if apps is None:  # flush: the database has every migration applied
        from evalsite.models import Task
    else:
        # The models as migrated so far (``migrate evalsite 0010`` leaves later columns out).
        try:
            Task = apps.get_model("evalsite", "Task")
        except LookupError:  # evalsite not migrated at all (``migrate auth``)
            return
    seed_tasks(Task, using=using)
