"""The human-evaluation models leave the ``evalsite`` app for ``evalsite.humaneval`` (label humaneval).

State only: the tables stay, now owned by humaneval's models (humaneval 0001, which this depends
on, created them in its state and renamed their content types). Deleted in reverse order of
their foreign keys, so that no model left in the state points at a deleted one. No other model
has a foreign key to these, so none needs an AlterField to the new app.
"""
from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ("evalsite", "0012_policy_format"),
        ("humaneval", "0001_initial"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.DeleteModel(name="RankedResponse"),
                migrations.DeleteModel(name="Ranking"),
                migrations.DeleteModel(name="Assignment"),
                migrations.DeleteModel(name="EvalItem"),
                migrations.DeleteModel(name="EvalRound"),
            ],
        ),
    ]
