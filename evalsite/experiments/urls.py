from django.urls import path

from evalsite.experiments import views

app_name = "experiments"
urlpatterns = [
    path("<int:pk>/", views.detail, name="detail"),
    path("<int:pk>.json", views.detail_json, name="detail-json"),
    path("<int:pk>/launch/", views.launch, name="launch"),
    path("<int:pk>/cancel/", views.cancel, name="cancel"),
]
