"""The three tasks of the paper. Seeded by migrations and again after every flush (post_migrate),
so tests that flush the database (transactional tests) find them too. Their texts are in
:mod:`evalsite.builtin_tasks`."""
from evalsite.builtin_tasks import BUILTIN_TASKS


def builtin_task_values(task):
    """A built-in TaskText as ``Task`` field values (the slug left out)."""
    return {
        "name": task.name, "builtin": True, "input_name": task.input_name, "response_noun": task.response_name,
        "preamble_base": task.preamble_base, "preamble_detailed": task.preamble_detailed, "ending": task.ending,
        "cot_instruction": task.cot_instruction, "direct_rubric": task.direct_rubric,
        "policy_template": task.policy_template, "turn_markers": list(task.turn_markers),
        "conversational": task.conversational, "instructions": task.rater_instructions,
    }


def seed_tasks(Task, using="default"):
    """Create the built-in tasks that are missing. Existing rows are left alone: their texts may
    have been edited in the admin (migration 0011 filled them in once)."""
    # Migration 0002 passes the model as it was then: write only the fields it has.
    have = {f.name for f in Task._meta.get_fields()}
    for slug, task in BUILTIN_TASKS.items():
        values = {k: v for k, v in builtin_task_values(task).items() if k in have}
        Task.objects.using(using).get_or_create(slug=slug, defaults=values)
