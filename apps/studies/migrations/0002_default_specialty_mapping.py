from django.db import migrations

from apps.studies.defaults import DEFAULT_SPECIALTY_MAPPING


def install(apps, schema_editor):
    mapping = apps.get_model("studies", "SpecialtyMapping")
    if not mapping.objects.exists():
        mapping.objects.bulk_create(mapping(**row) for row in DEFAULT_SPECIALTY_MAPPING)


class Migration(migrations.Migration):
    dependencies = [("studies", "0001_initial")]
    operations = [migrations.RunPython(install, migrations.RunPython.noop)]
