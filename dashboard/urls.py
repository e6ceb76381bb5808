from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from . import views

urlpatterns = [
    path("", views.runs, name="runs"),
    path("runs/new/", views.run_new, name="run-new"),
    path("runs/<slug:name>/", views.run_detail, name="run"),
    path("runs/<slug:name>/chart.json", views.run_chart, name="run-chart"),
    path("runs/<slug:name>/scan/", views.run_scan, name="run-scan"),
    path("runs/<slug:name>/checkpoints/<int:pk>/", views.checkpoint_detail, name="checkpoint"),
    path("jobs/", views.job_list, name="jobs"),
    path("jobs/<int:pk>/", views.job_detail, name="job"),
    path("jobs/<int:pk>/progress/", views.job_progress, name="job-progress"),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/django-rq/", include("django_rq.urls")),
    path("admin/", admin.site.urls),
]
