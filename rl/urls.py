"""URLs of the rl app (researcher pages), mounted at /rl/."""
from django.urls import path  # noqa: F401

app_name = "rl"
urlpatterns = []
