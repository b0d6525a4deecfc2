"""Annotator pages, mounted at /annotate/."""
from django.urls import path

from evalsite.humaneval import views

app_name = "humaneval"
urlpatterns = [
    path("", views.index, name="index"),
    path("r/<int:round_id>/next/", views.next_item, name="next"),
    path("r/<int:round_id>/undo/", views.undo, name="undo"),
    path("r/<int:round_id>/done/", views.done, name="done"),
    path("i/<str:token>/", views.item, name="item"),
    path("i/<str:token>/skip/", views.skip, name="skip"),
]
