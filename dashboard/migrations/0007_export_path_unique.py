# One Export row per file. Two freezes of one checkpoint could both insert a row for the same path,
# after which every later freeze of those outputs failed (MultipleObjectsReturned). Existing
# duplicates are folded into the newest row first: it describes the file that is on disk now
# (the last writer's os.replace won).

from django.db import migrations, models


def keep_newest_row_per_path(apps, schema_editor):
    Export = apps.get_model("dashboard", "Export")
    duplicated = (
        Export.objects.values("path").annotate(rows=models.Count("id")).filter(rows__gt=1).values_list("path", flat=True)
    )
    for path in list(duplicated):
        rows = list(Export.objects.filter(path=path).order_by("-created_at", "-id").values_list("id", flat=True))
        Export.objects.filter(id__in=rows[1:]).delete()


class Migration(migrations.Migration):

    dependencies = [
        ("dashboard", "0006_export_file_mtime"),
    ]

    operations = [
        migrations.RunPython(keep_newest_row_per_path, migrations.RunPython.noop),
        migrations.AddConstraint(
            model_name="export",
            constraint=models.UniqueConstraint(fields=("path",), name="unique_export_path"),
        ),
    ]
