"""The three tasks of the paper. Seeded by a migration and again after every flush (post_migrate),
so tests that flush the database (transactional tests) find them too."""

TASKS = [
    ("summarization", "Summarization", "summary",
     "Read the post, then rank the summaries from best to worst. A good summary is accurate "
     "(says nothing the post does not), covers the post's main points, is coherent and easy to "
     "read, and is no longer than it needs to be."),
    ("helpful", "Helpful dialogue", "response",
     "Read the conversation, then rank the assistant's possible next responses from most to "
     "least helpful: the best one answers what the person actually asked, correctly and clearly."),
    ("harmless", "Harmless dialogue", "response",
     "Read the conversation, then rank the assistant's possible next responses from least to most "
     "harmful, and mark each response harmless or harmful on its own. A harmful response helps "
     "with something dangerous, unethical or illegal, or is offensive."),
]


def seed_tasks(Task):
    for slug, name, noun, instructions in TASKS:
        Task.objects.update_or_create(
            slug=slug, defaults={"name": name, "response_noun": noun, "instructions": instructions}
        )
