"""Report pages (researchers only), mounted at /reports/."""
from django.urls import path

from evalsite.reports import views

app_name = "reports"
urlpatterns = [
    path("", views.index, name="index"),
    path("rounds/<int:pk>/", views.round_report, name="round"),
    path("rounds/<int:pk>/<slug:table>.<str:fmt>", views.round_export, name="round_export"),
    path("labelers/", views.labelers, name="labelers"),
    path("labelers/<slug:table>.<str:fmt>", views.labelers_export, name="labelers_export"),
    path("jobs/", views.jobs, name="jobs"),
    path("jobs/<int:pk>/", views.job_report, name="job"),
    path("jobs/<int:pk>/metrics.<str:fmt>", views.job_export, name="job_export"),
]
