"""Moving models into their own apps keeps the rows, content types and permissions of an existing database.

The human-evaluation models left the ``evalsite`` app for ``evalsite.humaneval`` (humaneval 0001,
evalsite 0013; state only, the tables stay). The test migrates the test database back to where a
database made before the move stands, writes rows with the models of that time, migrates forward
and reads everything back through today's models.
"""
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.contrib.contenttypes.models import ContentType
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

from evalsite.humaneval.models import Assignment, EvalItem, EvalRound, RankedResponse, Ranking

# Before the move: evalsite up to 0012 and no humaneval app (the other apps stay at their latest).
BEFORE_HUMANEVAL_MOVE = [("evalsite", "0012_policy_format"), ("humaneval", None)]
MOVED_MODELS = [EvalRound, EvalItem, Assignment, Ranking, RankedResponse]


def migrate(targets=None):
    """Migrate the test database to ``targets`` (all apps' latest when None); the executor used."""
    executor = MigrationExecutor(connection)
    executor.migrate(targets or executor.loader.graph.leaf_nodes())
    ContentType.objects.clear_cache()  # content types were renamed under the cache
    return executor


def content_types(app_label):
    names = [m._meta.model_name for m in MOVED_MODELS]
    return dict(ContentType.objects.filter(app_label=app_label, model__in=names).values_list("model", "pk"))


def make_rows(apps):
    """One of each human-evaluation row, and a group allowed to view rounds, with the models of ``apps``."""
    model = apps.get_model
    task = model("evalsite", "Task").objects.get(slug="harmless")
    dataset = model("evalsite", "Dataset").objects.create(name="before the move", split="test", task=task)
    prompt = model("evalsite", "Prompt").objects.create(dataset=dataset, external_id="p0", context="Human: hi")
    Policy, Sample = model("evalsite", "Policy"), model("evalsite", "Sample")
    policies = [Policy.objects.create(name=f"policy {c}", kind="other") for c in "ab"]
    samples = [Sample.objects.create(policy=p, prompt=prompt, index=0, text=f"response of {p.name}")
               for p in policies]
    annotator = model("auth", "User").objects.create(username="annotator before the move")

    rnd = model("evalsite", "EvalRound").objects.create(
        name="round before the move", title="Round", task=task, question="both", overlap=1, status="open",
        metadata={"seed": 7},
    )
    rnd.policies.set(policies)
    rnd.annotators.add(annotator)
    item = model("evalsite", "EvalItem").objects.create(round=rnd, prompt=prompt, position=3, n_submitted=1,
                                                        complete=True)
    item.samples.set(samples)
    now = timezone.now()
    assignment = model("evalsite", "Assignment").objects.create(
        round=rnd, item=item, annotator=annotator, token="token-before-the-move", order=[s.pk for s in samples],
        status="submitted", expires_at=now + timedelta(minutes=30), finished_at=now,
    )
    ranking = model("evalsite", "Ranking").objects.create(
        assignment=assignment, round=rnd, item=item, annotator=annotator, shown_order=assignment.order,
        comment="B is kinder", time_on_page_ms=4200, idempotency_key="key-before-the-move",
    )
    for position, (sample, rank, harmless) in enumerate(zip(samples, [2, 1], [False, True])):
        model("evalsite", "RankedResponse").objects.create(
            ranking=ranking, sample=sample, label="AB"[position], position=position, rank=rank, harmless=harmless,
        )

    ct = model("contenttypes", "ContentType").objects.get(app_label="evalsite", model="evalround")
    permission = model("auth", "Permission").objects.get(content_type=ct, codename="view_evalround")
    group = model("auth", "Group").objects.create(name="round viewers")
    group.permissions.add(permission)
    group.user_set.add(annotator)
    return {"round": rnd.pk, "item": item.pk, "assignment": assignment.pk, "ranking": ranking.pk,
            "samples": [s.pk for s in samples], "policies": [p.pk for p in policies], "prompt": prompt.pk,
            "annotator": annotator.pk, "permission": permission.pk, "content_type": ct.pk}


@pytest.mark.django_db(transaction=True)
def test_humaneval_rows_and_permissions_survive_the_move_to_their_app():
    moved_types = content_types("humaneval")
    assert len(moved_types) == len(MOVED_MODELS) and not content_types("evalsite")
    try:
        executor = migrate(BEFORE_HUMANEVAL_MOVE)
        # Going back gives the content types (the same rows) back to evalsite.
        assert content_types("evalsite") == moved_types and not content_types("humaneval")
        before = make_rows(executor.loader.project_state(BEFORE_HUMANEVAL_MOVE[:1]).apps)
    finally:
        migrate()

    assert content_types("humaneval") == moved_types and not content_types("evalsite")
    rnd = EvalRound.objects.get(pk=before["round"])
    assert (rnd.name, rnd.question, rnd.status, rnd.overlap, rnd.metadata) == (
        "round before the move", EvalRound.Question.BOTH, EvalRound.Status.OPEN, 1, {"seed": 7})
    assert sorted(rnd.policies.values_list("pk", flat=True)) == before["policies"]
    assert list(rnd.annotators.values_list("pk", flat=True)) == [before["annotator"]]

    item = rnd.items.get()
    assert (item.pk, item.prompt_id, item.position, item.n_submitted, item.complete) == (
        before["item"], before["prompt"], 3, 1, True)
    assert sorted(item.samples.values_list("pk", flat=True)) == before["samples"]

    assignment = Assignment.objects.get(item=item)
    assert (assignment.pk, assignment.token, assignment.order, assignment.status) == (
        before["assignment"], "token-before-the-move", before["samples"], Assignment.Status.SUBMITTED)

    ranking = Ranking.objects.get(assignment=assignment)
    assert (ranking.pk, ranking.round_id, ranking.annotator_id, ranking.comment, ranking.idempotency_key) == (
        before["ranking"], rnd.pk, before["annotator"], "B is kinder", "key-before-the-move")
    answers = list(ranking.responses.order_by("position").values_list("label", "sample_id", "rank", "harmless"))
    assert answers == [("A", before["samples"][0], 2, False), ("B", before["samples"][1], 1, True)]
    # The relations between the moved models and the ones that stayed work in queries both ways.
    assert list(EvalRound.objects.filter(items__rankings__responses__rank=1,
                                         policies__samples__eval_items=item).distinct()) == [rnd]

    # The group's permission is the same row, now on humaneval's round, and grants what it granted.
    permission = Group.objects.get(name="round viewers").permissions.get()
    assert permission.pk == before["permission"]
    assert permission.content_type == ContentType.objects.get_for_model(EvalRound)
    assert permission.content_type.pk == before["content_type"]
    annotator = get_user_model().objects.get(pk=before["annotator"])
    assert annotator.has_perm("humaneval.view_evalround") and not annotator.has_perm("humaneval.change_evalround")
    assert not Permission.objects.filter(content_type__app_label="evalsite", codename__endswith="_evalround").exists()
