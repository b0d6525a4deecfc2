"""Annotator pages, mounted at /annotate/."""
from django.urls import path  # noqa: F401

app_name = "humaneval"
urlpatterns = []
