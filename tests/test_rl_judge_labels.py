"""The RLHF reward model can train on a dataset's AI-judge labels where no human labels exist."""
import pytest
from django.core.exceptions import ValidationError

from evalsite.models import Comparison, Dataset, Prompt, Task
from rl.data import preference_rows
from rl.params import RM_DEFAULTS

pytestmark = pytest.mark.django_db


def test_judge_labels_stand_in_only_when_asked():
    ds = Dataset.objects.create(name="judged", split="t", task=Task.objects.get(slug="summarization"))
    p = Prompt.objects.create(dataset=ds, external_id="1", context="post")
    Comparison.objects.create(prompt=p, response_a="a", response_b="b", judge_preference="second", judge_name="GPT-4")
    Comparison.objects.create(prompt=p, response_a="c", response_b="d", human_preference="first", human_source="dataset")
    human = preference_rows({**RM_DEFAULTS, "dataset_id": ds.pk})
    assert [(r[1], r[3]) for r in human] == [("c", 1.0)]
    judge = preference_rows({**RM_DEFAULTS, "dataset_id": ds.pk, "human_label_field": "judge_preference"})
    assert [(r[1], r[3]) for r in judge] == [("a", 0.0)]


def test_unknown_label_field_is_refused():
    from rl.params import validate_reward_model

    with pytest.raises(ValidationError) as e:
        validate_reward_model({"name": "x", "labels": "human", "human_label_field": "gossip", "base_model": "/nope"})
    assert "human_label_field must be" in str(e.value)
