"""Custom tasks from YAML files (``manage.py load_task FILE.yaml``).

A file holds one task: the fields in :data:`REQUIRED` and optionally those in :data:`OPTIONAL`.
The task with the file's slug is created or updated; anything wrong leaves the database as it
was, and every problem is reported at once.
"""
import yaml
from django.core.exceptions import ValidationError
from django.db import transaction

from evalsite.models import Task

# YAML field -> Task field
REQUIRED = {
    "slug": "slug", "name": "name", "input_name": "input_name", "response_name": "response_noun",
    "preamble_base": "preamble_base", "preamble_detailed": "preamble_detailed", "ending": "ending",
    "direct_rubric": "direct_rubric", "policy_template": "policy_template",
    "rater_instructions": "instructions",
}
OPTIONAL = {"turn_markers": "turn_markers", "cot_instruction": "cot_instruction", "conversational": "conversational"}
FIELDS = {**REQUIRED, **OPTIONAL}


class TaskFileError(ValueError):
    """A task file that cannot be loaded; the message lists every problem."""


def read_task_file(path):
    """The file's fields as a dict, checked for unknown and missing fields and their types."""
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except OSError as e:
        raise TaskFileError(f"cannot read {path}: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise TaskFileError(f"{path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise TaskFileError(f"{path} must hold one task: a mapping of fields ({', '.join(REQUIRED)}).")
    problems = []
    unknown = sorted(str(k) for k in set(data) - set(FIELDS))
    if unknown:
        problems.append(f"unknown field(s) {', '.join(unknown)}; a task file has {', '.join(FIELDS)}")
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        problems.append(f"missing field(s) {', '.join(missing)}")
    for key, value in data.items():
        if key in REQUIRED or key == "cot_instruction":
            if not isinstance(value, str) or not value.strip():
                problems.append(f"{key} must be non-empty text")
        elif key == "conversational" and not isinstance(value, bool):
            problems.append("conversational must be true or false")
    if problems:
        raise TaskFileError(f"{path}: " + "; ".join(problems) + ".")
    return data


@transaction.atomic
def load_task(data):
    """Create or update the task with ``data["slug"]`` from a task file's fields; returns (task, created).

    Refuses (:class:`TaskFileError`, nothing written) a name another task has, a built-in task's
    name under another slug, and texts the task could not be used with (``Task.clean``).
    """
    values = {FIELDS[k]: v for k, v in data.items()}
    slug = values.pop("slug")
    task = Task.objects.select_for_update().filter(slug=slug).first()
    created = task is None
    if created:
        task = Task(slug=slug)
    for name, value in values.items():
        setattr(task, name, value)
    try:
        task.full_clean()
    except ValidationError as e:
        problems = [f"{_yaml_name(field)}: {m}" if field != "__all__" else m
                    for field, messages in e.message_dict.items() for m in messages]
        raise TaskFileError(f"task {slug!r} cannot be {'created' if created else 'updated'}: "
                            + " ".join(problems)) from None
    task.save()
    return task, created


def _yaml_name(field):
    return {v: k for k, v in FIELDS.items()}.get(field, field)
