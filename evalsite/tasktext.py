"""How a task's input is shown to a policy. Plain Python, shared by sampling, SFT and RL.

Stored contexts are the bare input: a TL;DR post without the trailing "TL;DR:", or an HH
dialogue up to (not including) the final "\\n\\nAssistant:".
"""
import re

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


# Anthropic's dialogue markers and the chat roles they stand for (TRL's conversational format).
DIALOGUE_ROLES = {"Human": "user", "Assistant": "assistant"}
_DIALOGUE_SPEAKERS = {role: speaker for speaker, role in DIALOGUE_ROLES.items()}
_TURN = re.compile(r"(?:\A|\n\n)(Human|Assistant):")


def dialogue_messages(context):
    """An HH dialogue ("\\n\\nHuman: …\\n\\nAssistant: …") as chat messages: [{"role", "content"}].

    :func:`dialogue_text` gives the same text back for every dialogue whose turns start with
    "\\n\\nHuman: " or "\\n\\nAssistant: " (all of Anthropic's). A dialogue may also start with
    "Human:" without the blank lines (it comes back with them); other text before the first
    turn becomes a "system" message.
    """
    parts = _TURN.split(context)
    messages = [{"role": "system", "content": parts[0]}] if parts[0] else []
    for speaker, content in zip(parts[1::2], parts[2::2]):
        text = content[1:] if content.startswith(" ") else content
        messages.append({"role": DIALOGUE_ROLES[speaker], "content": text})
    return messages


def dialogue_text(messages):
    """Chat messages as an HH dialogue; the inverse of :func:`dialogue_messages`.

    Raises ValueError for a role other than user and assistant (system only first), or a
    message that is not {"role", "content"} with text content.
    """
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or "role" not in m:
            raise ValueError(f"message {i + 1} is not an object with 'role' and text 'content'")
        if m["role"] == "system" and i == 0:
            out.append(m["content"])
        elif m["role"] in _DIALOGUE_SPEAKERS:
            out.append(f"\n\n{_DIALOGUE_SPEAKERS[m['role']]}: {m['content']}")
        else:
            raise ValueError(f"message {i + 1} has role {m['role']!r}; expected user or assistant"
                             + (" (system only as the first message)" if m["role"] == "system" else ""))
    return "".join(out)
