"""The "researcher" group: the model permissions the researcher pages and the admin check.

Being staff only lets someone into the admin; researchers are staff in this group. It may view,
add, change and delete the research models, and nothing of user and group management (who
annotates a round is chosen in the round's own admin form).
"""
from django.db import migrations

ACTIONS = ("view", "add", "change", "delete")
RESEARCH_MODELS = {
    "evalsite": ("task", "dataset", "prompt", "policy", "sample", "comparison", "job", "experiment",
                 "evalround", "ranking"),
    "labeling": ("labelerconfig", "ailabel"),
    "rl": ("rewardmodel",),
}


def create_group(apps, schema_editor):
    from django.contrib.auth.management import create_permissions

    db = schema_editor.connection.alias
    # On a fresh database the permissions are only created after all migrations (post_migrate).
    for label in RESEARCH_MODELS:
        app_config = apps.get_app_config(label)
        app_config.models_module = True  # create_permissions skips apps without a models module
        create_permissions(app_config, apps=apps, verbosity=0, using=db)
        app_config.models_module = None

    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    group, _ = Group.objects.using(db).get_or_create(name="researcher")
    for label, models in RESEARCH_MODELS.items():
        codenames = [f"{action}_{model}" for model in models for action in ACTIONS]
        perms = list(Permission.objects.using(db).filter(content_type__app_label=label, codename__in=codenames))
        if len(perms) != len(codenames):
            missing = set(codenames) - {p.codename for p in perms}
            raise RuntimeError(f"permissions missing for {label}: {', '.join(sorted(missing))}")
        group.permissions.add(*perms)


class Migration(migrations.Migration):
    dependencies = [
        ("evalsite", "0009_job_sent_at"),
        ("labeling", "0001_initial"),
        ("rl", "0001_initial"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]
    operations = [migrations.RunPython(create_group, migrations.RunPython.noop)]
