from django.db import migrations

from evalsite.seed import seed_tasks


def seed(apps, schema_editor):
    seed_tasks(apps.get_model("evalsite", "Task"))


class Migration(migrations.Migration):
    dependencies = [("evalsite", "0001_initial")]
    operations = [migrations.RunPython(seed, migrations.RunPython.noop)]
