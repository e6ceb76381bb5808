from django.contrib import admin

from .models import AuditEvent, Checkpoint, Comparison, Export, Job, Run


@admin.register(Run)
class RunAdmin(admin.ModelAdmin):
    list_display = ["name", "directory", "format", "last_scanned_at", "trusted"]
    search_fields = ["name", "directory"]


@admin.register(Checkpoint)
class CheckpointAdmin(admin.ModelAdmin):
    list_display = ["prefix", "run", "step", "status", "size_bytes", "saved_at", "pinned"]
    list_filter = ["status", "pinned", "run"]
    search_fields = ["prefix"]
    raw_id_fields = ["run", "meta_source", "source"]
    list_select_related = ["run"]


@admin.register(Export)
class ExportAdmin(admin.ModelAdmin):
    list_display = ["id", "checkpoint", "kind", "size_bytes", "verified", "created_at"]
    raw_id_fields = ["checkpoint"]
    list_select_related = ["checkpoint__run"]


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = ["id", "kind", "status", "progress", "run", "created_at", "ended_at"]
    list_filter = ["kind", "status"]
    raw_id_fields = ["run", "checkpoint", "retry_of"]


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    list_display = ["at", "action", "actor", "run", "summary", "bytes_freed"]
    list_filter = ["action"]


@admin.register(Comparison)
class ComparisonAdmin(admin.ModelAdmin):
    list_display = ["id", "a", "b", "created_at"]
    raw_id_fields = ["a", "b", "job"]
