from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from evalsite import views

urlpatterns = [
    path("", views.home, name="home"),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("jobs/", include("evalsite.jobs.urls")),
    path("annotate/", include("evalsite.humaneval.urls")),
    path("reports/", include("evalsite.reports.urls")),
    path("experiments/", include("evalsite.experiments.urls")),
    path("rl/", include("rl.urls")),
    path("admin/", admin.site.urls),
]
