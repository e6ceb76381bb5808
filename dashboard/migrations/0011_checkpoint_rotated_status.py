# Checkpoints the trainer's own rotation deleted read as rotated (with when), not missing; and the
# run page's change stamp reads each run's newest recorded_at through an index.

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('dashboard', '0010_serving_targets'),
    ]

    operations = [
        migrations.AddField(
            model_name='checkpoint',
            name='gone_at',
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AlterField(
            model_name='checkpoint',
            name='status',
            field=models.CharField(choices=[('present', 'present'), ('incomplete', 'incomplete'), ('corrupt', 'corrupt'), ('verified', 'verified'), ('pruned', 'pruned'), ('missing', 'missing'), ('rotated', 'rotated')], default='present', max_length=16),
        ),
        migrations.AddIndex(
            model_name='checkpoint',
            index=models.Index(fields=['run', 'recorded_at'], name='checkpoint_run_recorded'),
        ),
    ]
