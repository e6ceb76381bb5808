from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_not_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.templatetags.static import static
from django.urls import include, path
from django.views.decorators.http import require_safe

from dashboard.api.root import urlpatterns as api_urlpatterns
from dashboard.views import (
    aliases,
    compare,
    exports,
    jobs,
    live,
    retention,
    runs,
    saves,
    serving,
    tokens,
    webhooks,
)
from dashboard.views import checkpoints as checkpoint_actions


@require_safe
def favicon(request: HttpRequest) -> HttpResponse:
    # Browsers and feed readers ask for /favicon.ico whatever the page's <link rel="icon"> says.
    return redirect(static("dashboard/favicon.svg"), permanent=True)


urlpatterns = [
    path("", runs.runs, name="runs"),
    path("runs/new/", runs.run_new, name="run-new"),
    path("runs/<slug:name>/", runs.run_detail, name="run"),
    path("runs/<slug:name>/chart.json", runs.run_chart, name="run-chart"),
    path("runs/<slug:name>/changes/", live.run_changes, name="run-changes"),
    path("runs/<slug:name>/live/", live.run_live, name="run-live"),
    path("runs/<slug:name>/scan/", runs.run_scan, name="run-scan"),
    path("runs/<slug:name>/trust/", runs.run_trust, name="run-trust"),
    path("runs/<slug:name>/checkpoints/<int:pk>/", runs.checkpoint_detail, name="checkpoint"),
    path("runs/<slug:name>/checkpoints/<int:pk>/verify/", checkpoint_actions.checkpoint_verify,
         name="checkpoint-verify"),
    path("runs/<slug:name>/checkpoints/<int:pk>/freeze/", checkpoint_actions.checkpoint_freeze,
         name="checkpoint-freeze"),
    path("runs/<slug:name>/checkpoints/<int:pk>/partial-restore/", checkpoint_actions.checkpoint_partial_restore,
         name="checkpoint-partial-restore"),
    path("runs/<slug:name>/checkpoints/<int:pk>/make-latest/", checkpoint_actions.checkpoint_make_latest,
         name="checkpoint-make-latest"),
    path("runs/<slug:name>/checkpoints/<int:pk>/exports/", checkpoint_actions.checkpoint_exports,
         name="checkpoint-exports"),
    path("exports/", exports.export_list, name="exports"),
    path("exports/<int:pk>/", exports.export_detail, name="export"),
    path("exports/<int:pk>/download/", exports.export_download, name="export-download"),
    path("exports/<int:pk>/recheck/", exports.export_recheck, name="export-recheck"),
    path("runs/<slug:name>/save/", saves.save_new, name="run-save"),
    path("runs/<slug:name>/checkpoints/<int:pk>/resave/", saves.resave_new, name="checkpoint-resave"),
    path("runs/<slug:name>/steps/", compare.step_over_step, name="run-steps"),
    path("runs/<slug:name>/steps/start/", compare.step_over_step_start, name="run-steps-start"),
    path("compare/", compare.compare, name="compare"),
    path("compare/start/", compare.compare_start, name="compare-start"),
    path("compare/jobs/<int:pk>/status/", compare.compare_status, name="compare-status"),
    path("runs/<slug:name>/retention/", retention.retention_policy, name="run-retention"),
    path("runs/<slug:name>/prune/", retention.prune_preview, name="run-prune"),
    path("runs/<slug:name>/prune/now/", retention.prune_now, name="run-prune-now"),
    path("runs/<slug:name>/trash/<slug:batch>/restore/", retention.trash_restore, name="run-trash-restore"),
    path("runs/<slug:name>/checkpoints/<int:pk>/pin/", retention.checkpoint_pin, name="checkpoint-pin"),
    path("runs/<slug:name>/checkpoints/<int:pk>/alias/", aliases.checkpoint_alias, name="checkpoint-alias"),
    path("runs/<slug:name>/aliases/", aliases.run_aliases, name="run-aliases"),
    path("runs/<slug:name>/aliases/<slug:alias>/remove/", aliases.alias_remove, name="alias-remove"),
    path("runs/<slug:name>/serving/new/", serving.serving_new, name="serving-new"),
    path("serving/", serving.serving_list, name="serving"),
    path("serving/<int:pk>/", serving.serving_detail, name="serving-target"),
    path("serving/<int:pk>/publish/", serving.serving_publish, name="serving-publish"),
    path("serving/<int:pk>/prune/", serving.serving_prune, name="serving-prune"),
    path("audit/", retention.audit, name="audit"),
    path("tokens/", tokens.token_list, name="tokens"),
    path("tokens/<int:pk>/revoke/", tokens.token_revoke, name="token-revoke"),
    path("jobs/", jobs.job_list, name="jobs"),
    path("jobs/<int:pk>/", jobs.job_detail, name="job"),
    path("jobs/<int:pk>/progress/", jobs.job_progress, name="job-progress"),
    path("jobs/<int:pk>/cancel/", jobs.job_cancel, name="job-cancel"),
    path("jobs/<int:pk>/retry/", jobs.job_retry, name="job-retry"),
    path("favicon.ico", login_not_required(favicon), name="favicon"),
    path("webhooks/", webhooks.webhook_list, name="webhooks"),
    path("webhooks/new/", webhooks.webhook_new, name="webhook-new"),
    path("webhooks/<int:pk>/", webhooks.webhook_detail, name="webhook"),
    path("webhooks/<int:pk>/edit/", webhooks.webhook_edit, name="webhook-edit"),
    path("webhooks/<int:pk>/secret/", webhooks.webhook_secret, name="webhook-secret"),
    path("webhooks/<int:pk>/delete/", webhooks.webhook_delete, name="webhook-delete"),
    path("webhooks/<int:pk>/ping/", webhooks.webhook_ping, name="webhook-ping"),
    path("webhooks/<int:pk>/deliveries/<int:delivery_pk>/redeliver/", webhooks.webhook_redeliver,
         name="webhook-redeliver"),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/django-rq/", include("django_rq.urls")),
    path("admin/", admin.site.urls),
    *api_urlpatterns(),
]
