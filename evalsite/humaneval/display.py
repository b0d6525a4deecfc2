"""How an item's input is laid out for a human reader: dialogue turns, or a post with its title."""
import re

from evalsite.tasktext import clean_response

_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):[ \t]?")
_POST_HEADER = re.compile(r"^SUBREDDIT:\s*(?P<sub>.*?)\s*\nTITLE:\s*(?P<title>.*?)\s*\nPOST:\s*", re.S)


def dialogue_turns(text):
    """``[("Human", "..."), ("Assistant", "..."), ...]`` for an HH dialogue, or None if it has no turns."""
    parts = _TURN.split(text)
    if len(parts) < 3:
        return None
    turns = []
    lead = parts[0].strip()
    if lead:
        turns.append(("Note", lead))
    for speaker, said in zip(parts[1::2], parts[2::2]):
        turns.append((speaker, said.strip()))
    return turns


def post_parts(text):
    """``{"subreddit", "title", "body"}`` for a Reddit TL;DR post; plain text gets only a body."""
    m = _POST_HEADER.match(text.lstrip())
    if not m:
        return {"subreddit": "", "title": "", "body": text.strip()}
    return {"subreddit": m["sub"], "title": m["title"], "body": text.lstrip()[m.end():].strip()}


def layout(task, context):
    """What the item template needs to show the input: ``{"kind": "dialogue"|"post", "heading", ...}``.

    ``task``: a TaskText (``Task.text()``). A conversational task's dialogue is shown as turns; other
    input as text, with a Reddit post's subreddit and title apart. The heading is the task's input
    name ("Conversation", "Question"), or "Post" for a Reddit post.
    """
    if task.conversational:
        turns = dialogue_turns(context)
        if turns:
            return {"kind": "dialogue", "heading": task.input_name, "turns": [{"speaker": s, "text": t} for s, t in turns]}
    parts = post_parts(context)
    return {"kind": "post", "heading": "Post" if parts["subreddit"] or parts["title"] else task.input_name, **parts}


def response_text(task, text):
    """A response as annotators see it: no chat-template tokens, nothing from the task's first turn
    marker on (sampling stores it so; this guards older or imported samples)."""
    return clean_response(text, task)
