from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("routing", "0012_deliveryitem_sent_uid")]

    operations = [
        migrations.AddField(
            model_name="delivery",
            name="last_attempt_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="delivery",
            name="last_attempt_seconds",
            field=models.FloatField(blank=True, null=True),
        ),
    ]
