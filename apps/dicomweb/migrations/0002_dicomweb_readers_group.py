from django.db import migrations

from apps.dicomweb.permissions import READERS_GROUP


def install(apps, schema_editor):
    apps.get_model("auth", "Group").objects.get_or_create(name=READERS_GROUP)


class Migration(migrations.Migration):
    dependencies = [("dicomweb", "0001_stow_senders_group")]
    operations = [migrations.RunPython(install, migrations.RunPython.noop)]
