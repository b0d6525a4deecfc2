from django.apps import AppConfig


class RlConfig(AppConfig):
    name = "rl"
    verbose_name = "Training"
    default_auto_field = "django.db.models.BigAutoField"
