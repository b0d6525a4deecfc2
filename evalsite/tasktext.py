"""How a task's input is shown to a policy. Plain Python, shared by sampling, SFT and RL.

Stored contexts are the bare input: a TL;DR post without the trailing "TL;DR:", or an HH
dialogue up to (not including) the final "\\n\\nAssistant:".
"""

SUMMARIZATION_SUFFIX = "\n\nTL;DR:"
ASSISTANT_TURN = "\n\nAssistant:"


def policy_prompt(task_slug, context):
    """The text a policy continues: the post + "TL;DR:" or the dialogue + "Assistant:"."""
    if task_slug == "summarization":
        return context.rstrip() + SUMMARIZATION_SUFFIX
    return context.rstrip() + ASSISTANT_TURN


def split_dialogue(text):
    """Split an HH dialogue into (context, final assistant response) at the last Assistant turn.

    Returns None when the text has no Assistant turn.
    """
    i = text.rfind(ASSISTANT_TURN)
    if i < 0:
        return None
    return text[:i], text[i + len(ASSISTANT_TURN):].strip()
