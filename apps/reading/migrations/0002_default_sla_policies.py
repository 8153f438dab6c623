from django.db import migrations

from apps.reading.defaults import DEFAULT_SLA_POLICIES


def install(apps, schema_editor):
    policy = apps.get_model("reading", "SlaPolicy")
    if not policy.objects.exists():
        policy.objects.bulk_create(policy(**row) for row in DEFAULT_SLA_POLICIES)


class Migration(migrations.Migration):
    dependencies = [("reading", "0001_initial")]
    operations = [migrations.RunPython(install, migrations.RunPython.noop)]
