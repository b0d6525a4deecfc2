from django.apps import AppConfig


class RlConfig(AppConfig):
    name = "rl"
    verbose_name = "Training"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from . import jobs  # noqa: F401  (registers the sft, sample, reward_model and rl kinds)
