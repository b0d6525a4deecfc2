from django.urls import path

from evalsite.jobs import views

app_name = "jobs"
urlpatterns = [
    path("status.json", views.job_status, name="status"),
    path("<int:pk>.json", views.job_detail_json, name="detail-json"),
]
