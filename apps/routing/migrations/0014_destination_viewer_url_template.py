from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("routing", "0013_delivery_last_attempt")]

    operations = [
        migrations.AddField(
            model_name="destination",
            name="viewer_url_template",
            field=models.CharField(
                blank=True,
                help_text="The viewer page of a study delivered here, with {StudyInstanceUID} and/or "
                "{AccessionNumber}, e.g. https://viewer.example.org/viewer?StudyInstanceUIDs={StudyInstanceUID}; "
                "empty: no Open link.",
                max_length=500,
                verbose_name="viewer URL template",
            ),
        ),
    ]
