"""Labeler prompts (docs/method.md §1): preamble, optional few-shot exemplars, the sample, the ending.

Plain Python, no Django. A :class:`PromptTemplate` holds every piece of text, so a researcher can
override any of them (``LabelerConfig.template_overrides``). A prompt is built in two parts:
``user`` (preamble + exemplars + sample, plus the chain-of-thought request when asked) and
``assistant`` (the text the model's answer starts with: ``Preferred Summary=`` or ``Rationale:``).
Plain models see ``user + "\\n\\n" + assistant``; instruct models see the user part inside their
chat template and the assistant part as the start of their reply, so the next token is the label
either way.

Chat APIs cannot start the model's reply for it, so a prompt also keeps its pieces
(:class:`PromptParts`) and :func:`chat_messages` lays them out as messages: the preamble as the
system message or user text, exemplars as earlier turns or inline, and the ending (``Preferred
Summary=``) at the end of the last user message, so the reply's first token is the label.

A template starts from its task's texts (:class:`~evalsite.tasktext.TaskText`); the built-in tasks'
preambles, the paper's *Base* and *Detailed* variants written in our own words, are in
:mod:`evalsite.builtin_tasks`.
"""
import string
from dataclasses import asdict, dataclass, field, fields, replace

from evalsite.builtin_tasks import BUILTIN_TASKS
from evalsite.tasktext import TaskText

TASKS = tuple(BUILTIN_TASKS)  # the paper's tasks; a custom task comes as a TaskText (Task.text())
VARIANTS = ("base", "detailed")

# The built-in tasks' texts (evalsite.builtin_tasks), by task and preamble variant.
PREAMBLES = {(slug, variant): t.preamble(variant) for slug, t in BUILTIN_TASKS.items() for variant in VARIANTS}
# What the chain-of-thought step asks for (docs/method.md §1, "Chain of thought").
COT_INSTRUCTIONS = {slug: t.cot_instruction for slug, t in BUILTIN_TASKS.items()}
# The score prompt of direct RLAIF (docs/method.md §2): one response, a 1-10 score.
SCORE_PREAMBLES = {slug: t.direct_rubric for slug, t in BUILTIN_TASKS.items()}


class TemplateError(ValueError):
    """A template override that cannot be used (unknown field or placeholder)."""


@dataclass(frozen=True)
class PromptTemplate:
    """All the text of a labeler prompt. Placeholders: ``{context_label}``, ``{noun}``, ``{context}``,
    ``{first}``, ``{second}`` (sample), ``{response}`` (score sample), ``{rationale}``."""

    preamble: str
    context_label: str = "Text"
    noun: str = "Summary"
    sample: str = "{context_label} - {context}\n{noun} 1 - {first}\n{noun} 2 - {second}"
    ending: str = "Preferred {noun}="
    cot_instruction: str = ""
    rationale_label: str = "Rationale:"
    exemplar_separator: str = "\n\n"
    score_preamble: str = ""
    score_sample: str = "{context_label} - {context}\n{noun} - {response}"
    score_ending: str = "Score="

    # Which placeholders each field may use; anything else is a typo we report.
    ALLOWED = {
        "preamble": set(), "context_label": set(), "noun": set(), "rationale_label": set(),
        "exemplar_separator": set(), "score_preamble": set(), "cot_instruction": {"noun"},
        "sample": {"context_label", "noun", "context", "first", "second"},
        "ending": {"noun"}, "score_sample": {"context_label", "noun", "context", "response"},
        "score_ending": {"noun"},
    }

    def fmt(self, name, **values):
        return getattr(self, name).format(context_label=self.context_label, noun=self.noun, **values)


def default_template(task, variant="base"):
    """The task's own texts: ``task`` is a :class:`~evalsite.tasktext.TaskText`, or a built-in's slug."""
    if not isinstance(task, TaskText):
        if task not in TASKS:
            raise TemplateError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
        task = BUILTIN_TASKS[task]
    if variant not in VARIANTS:
        raise TemplateError(f"unknown preamble variant {variant!r}; expected one of {', '.join(VARIANTS)}")
    return PromptTemplate(
        preamble=task.preamble(variant),
        context_label=task.input_name,
        noun=task.noun,
        ending=task.ending,
        cot_instruction=task.cot_instruction,
        score_preamble=task.direct_rubric,
    )


def context_keep(task):
    """Which end of a too-long context to keep (:func:`truncate_context`): a dialogue keeps its
    latest turns, other text its start. ``task``: a TaskText or a built-in's slug."""
    if isinstance(task, TaskText):
        return "end" if task.conversational else "start"
    return "start" if task == "summarization" else "end"


def make_template(task, variant="base", overrides=None):
    """The default template with researcher overrides applied and checked."""
    template = default_template(task, variant)
    overrides = dict(overrides or {})
    known = {f.name for f in fields(PromptTemplate)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TemplateError(f"unknown template field(s) {', '.join(unknown)}; editable fields: {', '.join(sorted(known))}")
    for name, text in overrides.items():
        if not isinstance(text, str):
            raise TemplateError(f"template field {name!r} must be text")
        try:
            used = {f for _, f, _, _ in string.Formatter().parse(text) if f is not None}
        except ValueError as e:
            raise TemplateError(f"template field {name!r}: {e} (write a literal brace as {{{{ or }}}})") from None
        bad = used - PromptTemplate.ALLOWED[name]
        if bad:
            allowed = ", ".join("{%s}" % a for a in sorted(PromptTemplate.ALLOWED[name])) or "none"
            raise TemplateError(f"template field {name!r} uses unknown placeholder(s) "
                                f"{', '.join('{%s}' % b for b in sorted(bad))}; allowed: {allowed}")
    return replace(template, **overrides)


@dataclass(frozen=True)
class Exemplar:
    """A few-shot example: context, two responses, the preferred one (1 or 2), optional rationale."""

    context: str
    first: str
    second: str
    label: int
    rationale: str = ""

    @classmethod
    def from_dict(cls, d):
        missing = [k for k in ("context", "first", "second", "label") if k not in d]
        if missing:
            raise TemplateError(f"exemplar is missing {', '.join(missing)}")
        label = int(d["label"])
        if label not in (1, 2):
            raise TemplateError(f"exemplar label must be 1 or 2, not {d['label']!r}")
        return cls(str(d["context"]), str(d["first"]), str(d["second"]), label, str(d.get("rationale") or ""))

    def to_dict(self):
        return asdict(self)


@dataclass(frozen=True)
class PromptParts:
    """The pieces of a prompt, for laying it out as chat messages (:func:`chat_messages`).

    ``exemplar_turns``: the exemplars as (role, text) messages, each answered by the assistant;
    ``exemplar_block``: the same exemplars as one block of text. ``question``: the sample (with the
    chain-of-thought request when asked). ``ending``: what the reply must start with (the label
    follows it). Chain of thought, step 2: ``rationale`` is the model's own reply to ``question``
    followed by ``rationale_request``, replayed as its turn before the ending is asked.
    """

    preamble: str
    question: str
    ending: str
    exemplar_turns: tuple = ()
    exemplar_block: str = ""
    rationale: str | None = None
    rationale_request: str = ""
    separator: str = "\n\n"


@dataclass(frozen=True)
class LabelPrompt:
    """One prompt: the user part and the start of the answer (see the module docstring)."""

    user: str
    assistant: str
    parts: PromptParts | None = field(default=None, compare=False, repr=False)

    def plain(self):
        return f"{self.user}\n\n{self.assistant}"


PREAMBLE_ROLES = ("system", "user")
EXEMPLAR_LAYOUTS = ("turns", "inline")


def chat_messages(prompt, preamble_role="system", exemplars="turns"):
    """A :class:`LabelPrompt` as chat messages ``[{"role": ..., "content": ...}]``.

    The preamble is the system message (``preamble_role="system"``) or starts the first user
    message (``"user"``); exemplars are earlier user/assistant turns (``"turns"``) or text before the
    sample (``"inline"``). The ending closes the last user message, so the first token of the reply
    is the label: with ``"user"`` and ``"inline"`` the one user message is ``prompt.plain()``.
    """
    if preamble_role not in PREAMBLE_ROLES:
        raise TemplateError(f"preamble role must be one of {', '.join(PREAMBLE_ROLES)}, not {preamble_role!r}")
    if exemplars not in EXEMPLAR_LAYOUTS:
        raise TemplateError(f"exemplars must be laid out as one of {', '.join(EXEMPLAR_LAYOUTS)}, not {exemplars!r}")
    p = prompt.parts
    if p is None:  # a prompt built by hand: one user message
        return [{"role": "user", "content": prompt.plain()}]
    messages = [{"role": "system", "content": p.preamble}] if preamble_role == "system" else []
    lead = [p.preamble] if preamble_role == "user" else []  # text that starts the first user message

    def add(role, text):
        nonlocal lead
        if role == "user" and lead:
            text, lead = p.separator.join(lead + [text]), []
        messages.append({"role": role, "content": text})

    if exemplars == "turns":
        for role, text in p.exemplar_turns:
            add(role, text)
    elif p.exemplar_block:
        lead.append(p.exemplar_block)
    if p.rationale is None:
        add("user", f"{p.question}\n\n{p.ending}")
    else:
        add("user", f"{p.question}\n\n{p.rationale_request}")
        add("assistant", p.rationale)
        add("user", p.ending)
    return messages


@dataclass
class PromptBuilder:
    template: PromptTemplate
    exemplars: list = field(default_factory=list)
    chain_of_thought: bool = False

    def exemplar_turns(self):
        """The exemplars as chat turns: the sample asked, the label (after its rationale) answered."""
        t = self.template
        turns = []
        for ex in self.exemplars:
            sample = t.fmt("sample", context=ex.context, first=ex.first, second=ex.second)
            if self.chain_of_thought and ex.rationale:
                turns += [("user", f"{sample}\n\n{t.fmt('cot_instruction')}\n\n{t.rationale_label}"),
                          ("assistant", ex.rationale.strip()), ("user", t.fmt("ending"))]
            else:
                turns.append(("user", f"{sample}\n\n{t.fmt('ending')}"))
            turns.append(("assistant", str(ex.label)))
        return tuple(turns)

    def _parts(self, context, first, second, ending, *, cot=False, rationale=None):
        t = self.template
        sample = t.fmt("sample", context=context, first=first, second=second)
        if cot:
            sample += "\n\n" + t.fmt("cot_instruction")
        return PromptParts(preamble=t.preamble, question=sample, ending=ending,
                           exemplar_turns=self.exemplar_turns(), exemplar_block=self.exemplar_block(),
                           rationale=rationale, rationale_request=t.rationale_label if cot else "",
                           separator=t.exemplar_separator)

    def exemplar_block(self):
        t = self.template
        blocks = []
        for ex in self.exemplars:
            text = t.fmt("sample", context=ex.context, first=ex.first, second=ex.second)
            if self.chain_of_thought and ex.rationale:
                text += f"\n{t.fmt('cot_instruction')}\n{t.rationale_label} {ex.rationale.strip()}"
            text += f"\n{t.fmt('ending')}{ex.label}"
            blocks.append(text)
        return t.exemplar_separator.join(blocks)

    def user_text(self, context, first, second, *, cot=False):
        t = self.template
        parts = [t.preamble]
        if self.exemplars:
            parts.append(self.exemplar_block())
        sample = t.fmt("sample", context=context, first=first, second=second)
        if cot:
            sample += "\n\n" + t.fmt("cot_instruction")
        parts.append(sample)
        return t.exemplar_separator.join(parts)

    def label_prompt(self, context, first, second, rationale=None):
        """The scoring prompt; with ``rationale`` (chain of thought, step 2) it is inserted first."""
        t = self.template
        if rationale is None:
            return LabelPrompt(self.user_text(context, first, second), t.fmt("ending"),
                               self._parts(context, first, second, t.fmt("ending")))
        return LabelPrompt(self.user_text(context, first, second, cot=True),
                           f"{t.rationale_label} {rationale.strip()}\n{t.fmt('ending')}",
                           self._parts(context, first, second, t.fmt("ending"), cot=True, rationale=rationale.strip()))

    def rationale_prompt(self, context, first, second):
        """Chain of thought, step 1: ask for an explanation instead of the label."""
        return LabelPrompt(self.user_text(context, first, second, cot=True), self.template.rationale_label,
                           self._parts(context, first, second, self.template.rationale_label, cot=True))

    def score_prompt(self, context, response):
        t = self.template
        sample = t.fmt("score_sample", context=context, response=response)
        return LabelPrompt(f"{t.score_preamble}\n\n{sample}", t.fmt("score_ending"),
                           PromptParts(preamble=t.score_preamble, question=sample, ending=t.fmt("score_ending")))


def clean_rationale(text, template):
    """Cut a generated rationale where the model starts writing the answer itself."""
    stop = template.fmt("ending")
    for marker in (stop, stop.rstrip("="), "\n\n\n"):
        i = text.find(marker)
        if i >= 0:
            text = text[:i]
    return text.strip()


def truncate_context(context, overflow_tokens, count_tokens, keep="start"):
    """Shorten ``context`` until ``overflow_tokens`` fewer tokens remain (by ``count_tokens``).

    Posts keep their start (``keep="start"``); dialogues keep their end (the latest turns matter
    most). Returns (new_context, tokens_removed). Responses and the ending are never touched.
    """
    if overflow_tokens <= 0:
        return context, 0
    n = count_tokens(context)
    target = max(0, n - overflow_tokens)
    if target == 0:
        return "", n
    marker = " [...]" if keep == "start" else "[...] "
    lo, hi = 0, len(context)  # binary search on characters for the longest piece that fits
    while lo < hi:
        mid = (lo + hi + 1) // 2
        piece = context[:mid] + marker if keep == "start" else marker + context[len(context) - mid:]
        if count_tokens(piece) <= target:
            lo = mid
        else:
            hi = mid - 1
    piece = context[:lo] + marker if keep == "start" else marker + context[len(context) - lo:]
    return piece, n - count_tokens(piece)
