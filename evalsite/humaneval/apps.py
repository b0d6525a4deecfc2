from django.apps import AppConfig


class HumanEvalConfig(AppConfig):
    """Human evaluation: rounds, the annotator queue, blinded rankings (mounted at /annotate/)."""

    name = "evalsite.humaneval"
    label = "humaneval"
    verbose_name = "Human evaluation"
    default_auto_field = "django.db.models.BigAutoField"
