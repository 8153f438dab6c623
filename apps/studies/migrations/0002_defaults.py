from django.db import migrations

from apps.studies.defaults import install_defaults


def install(apps, schema_editor):
    install_defaults(apps.get_model)


class Migration(migrations.Migration):
    dependencies = [("studies", "0001_initial")]
    operations = [migrations.RunPython(install, migrations.RunPython.noop)]
