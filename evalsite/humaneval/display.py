"""How an item's input is laid out for a human reader: dialogue turns, or a post with its title."""
import re

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


def layout(task_slug, context):
    """What the item template needs to show the input: ``{"kind": "dialogue"|"post", ...}``."""
    if task_slug != "summarization":
        turns = dialogue_turns(context)
        if turns:
            return {"kind": "dialogue", "turns": [{"speaker": s, "text": t} for s, t in turns]}
    return {"kind": "post", **post_parts(context)}
