from django.db import migrations

from apps.dicomweb.permissions import STOW_SENDERS_GROUP


def install(apps, schema_editor):
    apps.get_model("auth", "Group").objects.get_or_create(name=STOW_SENDERS_GROUP)


class Migration(migrations.Migration):
    dependencies = [("auth", "0012_alter_user_first_name_max_length")]
    operations = [migrations.RunPython(install, migrations.RunPython.noop)]
