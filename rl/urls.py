"""URLs of the rl app (researcher pages), mounted at /rl/."""
from django.urls import path

from rl import views

app_name = "rl"
urlpatterns = [
    path("", views.index, name="index"),
    path("start/<slug:kind>/", views.start, name="start"),
]
