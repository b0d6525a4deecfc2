"""Constraints of the core data model."""
import pytest
from django.db import IntegrityError, transaction

from evalsite.models import Comparison, Dataset, Policy, Prompt, Sample, Task, pair_key
from evalsite.jobs.models import Job

pytestmark = pytest.mark.django_db


@pytest.fixture
def prompt():
    ds = Dataset.objects.create(name="d", split="test", task=Task.objects.get(slug="summarization"))
    return Prompt.objects.create(dataset=ds, external_id="p1", context="A post.")


def test_three_tasks_are_seeded():
    assert sorted(Task.objects.values_list("slug", flat=True)) == ["harmless", "helpful", "summarization"]
    assert Task.objects.get(slug="summarization").response_noun == "summary"


def test_external_id_unique_within_dataset_only(prompt):
    other = Dataset.objects.create(name="d", split="train", task=prompt.dataset.task)
    Prompt.objects.create(dataset=other, external_id="p1", context="same id, other dataset")
    with pytest.raises(IntegrityError), transaction.atomic():
        Prompt.objects.create(dataset=prompt.dataset, external_id="p1", context="dup")


def test_dataset_name_split_unique(prompt):
    with pytest.raises(IntegrityError), transaction.atomic():
        Dataset.objects.create(name="d", split="test", task=prompt.dataset.task)


def test_comparison_key_makes_pairs_unique_and_order_matters(prompt):
    c = Comparison.objects.create(prompt=prompt, response_a="x", response_b="y")
    assert c.key == pair_key(prompt.pk, "x", "y")
    Comparison.objects.create(prompt=prompt, response_a="y", response_b="x")  # swapped is another pair
    with pytest.raises(IntegrityError), transaction.atomic():
        Comparison.objects.create(prompt=prompt, response_a="x", response_b="y")
    assert pair_key(1, "ab", "c") != pair_key(1, "a", "bc")  # separators keep parts apart


def test_human_preference_needs_a_source(prompt):
    with pytest.raises(IntegrityError), transaction.atomic():
        Comparison.objects.create(prompt=prompt, response_a="x", response_b="y", human_preference="first")
    Comparison.objects.create(prompt=prompt, response_a="x", response_b="y", human_preference="first",
                              human_source="dataset")


def test_judge_preference_needs_a_judge_name(prompt):
    with pytest.raises(IntegrityError), transaction.atomic():
        Comparison.objects.create(prompt=prompt, response_a="x", response_b="y", judge_preference="second")


def test_sample_unique_per_policy_prompt_index(prompt):
    pol = Policy.objects.create(name="sft", kind=Policy.Kind.SFT)
    Sample.objects.create(policy=pol, prompt=prompt, index=0, text="a")
    Sample.objects.create(policy=pol, prompt=prompt, index=1, text="b")
    with pytest.raises(IntegrityError), transaction.atomic():
        Sample.objects.create(policy=pol, prompt=prompt, index=0, text="c")


def test_policy_lineage(prompt):
    sft = Policy.objects.create(name="sft", kind=Policy.Kind.SFT)
    rl = Policy.objects.create(name="rlaif", kind=Policy.Kind.RLAIF_DISTILLED, parent=sft, reward_source="RM #1")
    assert list(sft.children.all()) == [rl]


def test_job_progress_and_status_are_checked():
    with pytest.raises(IntegrityError), transaction.atomic():
        Job.objects.create(kind="noop", progress=1.5)
    with pytest.raises(IntegrityError), transaction.atomic():
        Job.objects.create(kind="noop", status="exploded")


@pytest.mark.django_db(transaction=True)
def test_tasks_are_seeded_again_after_a_flush():
    """Transactional tests flush the database between tests; the paper's tasks must come back."""
    from django.core.management import call_command

    call_command("flush", interactive=False, verbosity=0)
    assert Task.objects.count() == 3


@pytest.mark.django_db
def test_pairs_of_samples_with_equal_text_are_distinct_comparisons(prompt):
    """Two policies may write the same text; each pair of samples is its own comparison."""
    p1 = Policy.objects.create(name="p1", kind=Policy.Kind.SFT)
    p2 = Policy.objects.create(name="p2", kind=Policy.Kind.RLHF)
    p3 = Policy.objects.create(name="p3", kind=Policy.Kind.RLAIF_DIRECT)
    s1, s2, s3 = (Sample.objects.create(policy=p, prompt=prompt, text="same words") for p in (p1, p2, p3))
    a = Comparison.objects.create(prompt=prompt, response_a="same words", response_b="same words", sample_a=s1, sample_b=s2)
    b = Comparison.objects.create(prompt=prompt, response_a="same words", response_b="same words", sample_a=s1, sample_b=s3)
    assert a.key != b.key
    assert a.key == pair_key(prompt.pk, "same words", "same words", s1.pk, s2.pk)
