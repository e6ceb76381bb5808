# Curves of scalar metrics read from trainers' TensorBoard event files, where reading each file
# stopped, and for each checkpoint the step its event-file metrics were logged at. Every run's
# directory stamp is cleared: a rescan of an unchanged directory only looks where event files were
# found before, so each run's next scan must list its directory once to find them.

import django.db.models.deletion
import django.utils.timezone
from django.db import migrations, models


def rescan_every_directory(apps, schema_editor):
    apps.get_model("dashboard", "Run").objects.update(directory_stamp="")


class Migration(migrations.Migration):

    dependencies = [
        ("dashboard", "0011_checkpoint_rotated_status"),
    ]

    operations = [
        migrations.RunPython(rescan_every_directory, migrations.RunPython.noop),
        migrations.AddField(
            model_name="checkpoint",
            name="metric_steps",
            field=models.JSONField(blank=True, null=True),
        ),
        migrations.CreateModel(
            name="EventFile",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("path", models.CharField(help_text="Relative to the run directory.", max_length=1024)),
                ("offset", models.BigIntegerField(default=0, help_text="Bytes read so far; the next read starts here.")),
                ("size", models.BigIntegerField(default=0, help_text="The file's size when it was last read.")),
                ("plugins", models.JSONField(blank=True, default=dict)),
                ("problems", models.JSONField(blank=True, default=list)),
                ("stuck", models.BooleanField(default=False)),
                ("points", models.BigIntegerField(default=0)),
                ("read_at", models.DateTimeField(default=django.utils.timezone.now)),
                ("run", models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name="event_files", to="dashboard.run")),
            ],
            options={
                "constraints": [models.UniqueConstraint(fields=("run", "path"), name="unique_event_file_per_run")],
            },
        ),
        migrations.CreateModel(
            name="MetricSeries",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("tag", models.CharField(max_length=255)),
                ("count", models.BigIntegerField(default=0)),
                ("chunk_count", models.PositiveIntegerField(default=0)),
                ("first_step", models.BigIntegerField(blank=True, null=True)),
                ("last_step", models.BigIntegerField(blank=True, null=True)),
                ("chart_steps", models.BinaryField(default=b"")),
                ("chart_values", models.BinaryField(default=b"")),
                ("updated_at", models.DateTimeField(default=django.utils.timezone.now)),
                ("run", models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name="metric_series", to="dashboard.run")),
            ],
            options={
                "ordering": ["tag"],
                "constraints": [models.UniqueConstraint(fields=("run", "tag"), name="unique_metric_tag_per_run")],
            },
        ),
        migrations.CreateModel(
            name="MetricChunk",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("seq", models.PositiveIntegerField()),
                ("count", models.PositiveIntegerField()),
                ("min_step", models.BigIntegerField()),
                ("max_step", models.BigIntegerField()),
                ("steps", models.BinaryField()),
                ("values", models.BinaryField()),
                ("series", models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name="chunks", to="dashboard.metricseries")),
            ],
            options={
                "indexes": [models.Index(fields=["series", "max_step"], name="metric_chunk_series_max_step")],
                "constraints": [models.UniqueConstraint(fields=("series", "seq"), name="unique_chunk_per_series")],
            },
        ),
    ]
