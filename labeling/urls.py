"""URLs of the labeling app (researcher pages), mounted at /labeling/."""
from django.urls import path  # noqa: F401

app_name = "labeling"
urlpatterns = []
