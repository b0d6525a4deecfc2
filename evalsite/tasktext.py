"""How a task's input is shown to a policy. Plain Python, shared by sampling, SFT and RL.

Stored contexts are the bare input: a TL;DR post without the trailing "TL;DR:", or an HH
dialogue up to (not including) the final "\\n\\nAssistant:".
"""
import re
import string
from dataclasses import dataclass

SUMMARIZATION_SUFFIX = "\n\nTL;DR:"
ASSISTANT_TURN = "\n\nAssistant:"
INPUT_PLACEHOLDER = "{input}"


@dataclass(frozen=True)
class TaskText:
    """Everything the plain-Python cores need to know about a task: what its input and responses
    are called, the labeler's and the direct scorer's texts, and how a policy is prompted.

    The app builds one from a ``Task`` row (``Task.text()``); the built-in tasks' values are in
    :mod:`evalsite.builtin_tasks`. ``response_name`` is lower case as in running text ("summary");
    the labeler capitalizes it ("Summary 1 - ..."). ``ending`` and ``cot_instruction`` may use
    ``{noun}``. ``policy_template`` holds ``{input}``, replaced by the stored context.
    """

    slug: str
    name: str = ""
    input_name: str = "Text"
    response_name: str = "response"
    preamble_base: str = ""
    preamble_detailed: str = ""
    ending: str = "Preferred {noun}="
    cot_instruction: str = ""
    direct_rubric: str = ""
    policy_template: str = INPUT_PLACEHOLDER
    turn_markers: tuple = ()
    conversational: bool = False
    rater_instructions: str = ""

    @property
    def noun(self):
        """The response name as the labeler writes it: "Summary 1 - ...", "Preferred Summary="."""
        return self.response_name[:1].upper() + self.response_name[1:]

    def preamble(self, variant):
        """The Base or Detailed preamble; a task without a Detailed one uses its Base one."""
        if variant == "detailed":
            return self.preamble_detailed or self.preamble_base
        return {"base": self.preamble_base}[variant]


def _placeholders(text):
    return {f for _, f, _, _ in string.Formatter().parse(text) if f is not None}


def validate_task_texts(*, policy_template, ending="", cot_instruction="", turn_markers=()):
    """Problems with a task's texts as {field: message}; empty when it can be used."""
    errors = {}
    if INPUT_PLACEHOLDER not in (policy_template or ""):
        errors["policy_template"] = (f"The policy template must hold {INPUT_PLACEHOLDER}, where the prompt's "
                                     f"input goes; got {policy_template!r}.")
    for name, text in (("ending", ending), ("cot_instruction", cot_instruction)):
        try:
            bad = _placeholders(text or "") - {"noun"}
        except ValueError as e:
            errors[name] = f"{e} (write a literal brace as {{{{ or }}}})."
            continue
        if bad:
            errors[name] = (f"Unknown placeholder(s) {', '.join('{%s}' % b for b in sorted(bad))}; "
                            "only {noun} (the response name) may be used.")
    if not isinstance(turn_markers, (list, tuple)) or not all(isinstance(m, str) and m for m in turn_markers):
        errors["turn_markers"] = "Turn markers must be a list of non-empty strings."
    return errors


def as_task_text(task):
    """``task`` itself when it is a :class:`TaskText`, else the built-in task with that slug."""
    if isinstance(task, TaskText):
        return task
    from evalsite.builtin_tasks import BUILTIN_TASKS  # a slug: one of the paper's tasks

    if task not in BUILTIN_TASKS:
        raise ValueError(f"unknown task {task!r}: pass its TaskText (Task.text()), not a slug")
    return BUILTIN_TASKS[task]


def policy_prompt(task, context):
    """The text a policy continues: the task's ``policy_template`` with ``{input}`` replaced by the
    context (the built-ins: the post + "TL;DR:" or the dialogue + "Assistant:").

    ``task`` is a :class:`TaskText`, or a built-in task's slug.
    """
    return as_task_text(task).policy_template.replace(INPUT_PLACEHOLDER, context.rstrip())


def cut_at_turn_markers(response, task):
    """A sampled response up to the first of the task's ``turn_markers`` (text that ends a response,
    e.g. the start of the next speaker's turn); unchanged when the task has none."""
    cut = len(response)
    for marker in as_task_text(task).turn_markers:
        i = response.find(marker)
        if marker and 0 <= i < cut:
            cut = i
    return response[:cut]


# Chat-template and special tokens a response must not show: <|im_end|>, <|eot_id|>, <end_of_turn>, </s>
_TEMPLATE_TOKEN = re.compile(r"<\|[A-Za-z0-9_]+\|>|<(?:end|start)_of_turn>|</s>")


def clean_response(text, task=None):
    """A response as people see it: cut at the task's first turn marker, without chat-template
    tokens. Sampling stores responses clean already; this guards what older or imported rows hold."""
    if task is not None:
        text = cut_at_turn_markers(text, task)
    return _TEMPLATE_TOKEN.sub("", text).strip()


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
