from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from dashboard.views import jobs, runs

urlpatterns = [
    path("", runs.runs, name="runs"),
    path("runs/new/", runs.run_new, name="run-new"),
    path("runs/<slug:name>/", runs.run_detail, name="run"),
    path("runs/<slug:name>/chart.json", runs.run_chart, name="run-chart"),
    path("runs/<slug:name>/scan/", runs.run_scan, name="run-scan"),
    path("runs/<slug:name>/checkpoints/<int:pk>/", runs.checkpoint_detail, name="checkpoint"),
    path("jobs/", jobs.job_list, name="jobs"),
    path("jobs/<int:pk>/", jobs.job_detail, name="job"),
    path("jobs/<int:pk>/progress/", jobs.job_progress, name="job-progress"),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/django-rq/", include("django_rq.urls")),
    path("admin/", admin.site.urls),
]
