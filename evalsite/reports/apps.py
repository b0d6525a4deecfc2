from django.apps import AppConfig


class ReportsConfig(AppConfig):
    """Report pages (win rates, labeler alignment, training curves); no models of its own."""

    name = "evalsite.reports"
    label = "reports"
    verbose_name = "Reports"
