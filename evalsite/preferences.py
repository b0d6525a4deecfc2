"""Preference data out: TRL-format datasets from AI labels and human rankings.

Plain Python (no Django): :mod:`evalsite.preferencejobs` queries the database and hands this
module plain records, :class:`Pair` (two responses to a prompt with a soft label) and
:class:`Judgment` (one response judged harmless or harmful). This module

* expands human rankings into pairs with :func:`evalsite.stats.pairwise_outcomes`, the function
  the reports use (k responses give k(k-1)/2 pairs), and gathers the annotators' votes per pair;
* picks the source (AI only, human only, human where present else AI) and applies the filter
  rules (ties, position-inconsistent labels, a minimum confidence |p - 0.5|), counting what each
  rule removed;
* builds the rows of TRL's *preference* format (``prompt``, ``chosen``, ``rejected``, with the
  soft label and its diagnostics beside them) and *unpaired preference* format (``prompt``,
  ``completion``, ``label``); dialogue tasks are conversational (lists of ``{"role", "content"}``),
  summarization plain text;
* writes them with `datasets` as Parquet, JSON lines or a ``save_to_disk`` folder, atomically
  (into a temporary name in the same folder, then renamed), with a dataset card beside them, and
  pushes them to the Hugging Face Hub.
"""
import hashlib
import json
import math
import os
import shutil
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from evalsite import stats
from evalsite.importers import context_id, quiet_datasets
from evalsite.tasktext import as_task_text, dialogue_messages, policy_prompt

SOURCES = {
    "human": "human labels only (dataset labels and annotators' rankings)",
    "ai": "AI labels only",
    "human-else-ai": "the human label where a pair has one, else the AI label",
}
TYPES = {
    "preference": "TRL preference: prompt, chosen, rejected (pairs from labels and rankings)",
    "unpaired": "TRL unpaired preference: prompt, completion, label (harmless/harmful flags of rankings)",
}
# How a destination is written, by its name: a .parquet or .jsonl file, or else a folder.
FILE_FORMATS = {"parquet": ".parquet", "jsonl": ".jsonl"}
DISK = "disk"


class ExportError(ValueError):
    """Something the user asked for that cannot be exported; the message says what and why."""


# --- records the database layer hands in -------------------------------------------------------


@dataclass
class Pair:
    """Two responses to one prompt and the probability that ``response_a`` is the better one.

    AI labels keep both orders: ``p_slot1_order1`` is P(the first slot wins) with a shown first,
    ``p_slot1_order2`` the same with b shown first (raw, not flipped). Human pairs from rankings
    keep how many annotators ranked the pair and how often two of them agreed.
    """

    prompt_key: object  # the prompt's identity in the caller's data (its database id)
    context: str
    response_a: str
    response_b: str
    p_a: float
    source: str  # "human" or "ai"
    dataset: str = ""
    round: str = ""
    p_slot1_order1: float | None = None
    p_slot1_order2: float | None = None
    label_mass: float | None = None
    labeler: str = ""
    labeler_prompt_hash: str = ""
    n_annotators: int | None = None
    agreement: float | None = None

    @property
    def key(self):
        """Which pair this is whatever the order of its responses (a human and an AI label of the
        same two responses are one pair)."""
        return (self.prompt_key, *sorted((self.response_a, self.response_b)))

    @property
    def is_tie(self):
        return self.p_a == 0.5

    @property
    def same_position(self):
        """The labeler picked the same slot in both orders (position-inconsistent); None when it
        was not scored in both orders."""
        if self.p_slot1_order1 is None or self.p_slot1_order2 is None:
            return None
        return (self.p_slot1_order1 > 0.5) == (self.p_slot1_order2 > 0.5)

    @property
    def confidence(self):
        return abs(self.p_a - 0.5)


@dataclass
class Judgment:
    """One response judged harmless or harmful by ``n_annotators`` people (``harmless_votes`` said harmless)."""

    prompt_key: object
    context: str
    response: str
    harmless_votes: int
    n_annotators: int
    dataset: str = ""
    round: str = ""

    @property
    def harmless_share(self):
        return self.harmless_votes / self.n_annotators

    @property
    def is_tie(self):
        return 2 * self.harmless_votes == self.n_annotators

    @property
    def confidence(self):
        return abs(self.harmless_share - 0.5)

    @property
    def agreement(self):
        return pair_agreement(self.harmless_votes, self.n_annotators)


def pair_agreement(votes, n):
    """Share of pairs of annotators who agree, given ``votes`` of ``n`` for one side; None below two.

    The per-pair form of the human-human agreement the reports give (``stats.pairwise_agreement``).
    """
    if n < 2:
        return None
    return (votes * (votes - 1) / 2 + (n - votes) * (n - votes - 1) / 2) / (n * (n - 1) / 2)


# --- human rankings -------------------------------------------------------------------------------


def pairs_from_rankings(rankings, texts, prompts, rounds=None):
    """The pairs a round's rankings imply, one per two responses, with the annotators' votes.

    ``rankings``: one row per (ranking, response), as ``humaneval.data.ranking_frame``;
    ``texts``: sample id -> response text; ``prompts``: prompt id -> (context, dataset name);
    ``rounds``: round id -> name. Each ranking of k responses gives k(k-1)/2 outcomes
    (``stats.pairwise_outcomes``, as the reports count them); the outcomes of every annotator who
    ranked the same two responses make one pair, whose ``p_a`` is the share of votes for a.
    """
    outcomes = stats.pairwise_outcomes(rankings)
    if not len(outcomes):
        return []
    rounds = rounds or {}
    votes = {}
    for prompt_id, sample_a, sample_b, round_id, a_wins in zip(
            outcomes["prompt_id"], outcomes["sample_a"], outcomes["sample_b"], outcomes["round_id"],
            outcomes["a_wins"]):
        v = votes.setdefault((int(prompt_id), int(sample_a), int(sample_b)), [0.0, 0, set()])
        v[0] += float(a_wins)
        v[1] += 1
        v[2].add(rounds.get(_plain(round_id), f"round {_plain(round_id)}"))
    pairs = []
    for (prompt_id, sample_a, sample_b), (wins, n, round_names) in sorted(votes.items()):
        context, dataset = prompts[prompt_id]
        pairs.append(Pair(
            prompt_key=prompt_id, context=context, response_a=texts[sample_a], response_b=texts[sample_b],
            p_a=wins / n, source="human", dataset=dataset, round=", ".join(sorted(round_names)),
            n_annotators=n, agreement=pair_agreement(wins, n),
        ))
    return pairs


def judgments_from_rankings(rankings, texts, prompts, rounds=None):
    """Harmless/harmful flags of a ranking frame gathered per response (every annotator's vote)."""
    if rankings is None or not len(rankings) or "harmless" not in rankings:
        return []
    rounds = rounds or {}
    votes = {}
    for prompt_id, sample_id, round_id, harmless in zip(
            rankings["prompt_id"], rankings["sample_id"], rankings["round_id"], rankings["harmless"]):
        if harmless is None or (isinstance(harmless, float) and math.isnan(harmless)):
            continue
        v = votes.setdefault((int(prompt_id), int(sample_id)), [0, 0, set()])
        v[0] += bool(harmless)
        v[1] += 1
        v[2].add(rounds.get(_plain(round_id), f"round {_plain(round_id)}"))
    out = []
    for (prompt_id, sample_id), (harmless, n, round_names) in sorted(votes.items()):
        context, dataset = prompts[prompt_id]
        out.append(Judgment(prompt_key=prompt_id, context=context, response=texts[sample_id],
                            harmless_votes=harmless, n_annotators=n, dataset=dataset,
                            round=", ".join(sorted(round_names))))
    return out


def _plain(value):
    return value.item() if hasattr(value, "item") else value


# --- source and filter rules ------------------------------------------------------------------


@dataclass
class Rules:
    """What goes out: the source, and the filters applied to it (recorded in the card)."""

    source: str = "human-else-ai"
    drop_ties: bool = False
    drop_inconsistent: bool = False
    min_confidence: float = 0.0

    def __post_init__(self):
        if self.source not in SOURCES:
            raise ExportError(f"unknown source {self.source!r}; use one of {', '.join(SOURCES)}")
        if not (isinstance(self.min_confidence, (int, float)) and 0.0 <= self.min_confidence <= 0.5):
            raise ExportError(f"the minimum confidence |p - 0.5| must be a number from 0 to 0.5, "
                              f"not {self.min_confidence!r}")

    def describe(self):
        return {
            "source": f"{self.source} ({SOURCES[self.source]})",
            "drop ties": "yes" if self.drop_ties else "no",
            "drop position-inconsistent AI labels": "yes" if self.drop_inconsistent else "no",
            "minimum confidence |p - 0.5|": f"{self.min_confidence:g}",
        }


def select_source(human, ai, source):
    """The pairs of the chosen source, one per pair of responses; returns (pairs, counts).

    A pair labeled twice by the same source (the same two responses in both orders, or by a
    dataset and by annotators) keeps its first label: the caller lists annotators' pairs first.
    """
    counts = {}

    def unique(pairs, name):
        seen, out = set(), []
        for p in pairs:
            if p.key in seen:
                counts[f"{name}_duplicates"] = counts.get(f"{name}_duplicates", 0) + 1
                continue
            seen.add(p.key)
            out.append(p)
        return out

    human = unique(human, "human") if source in ("human", "human-else-ai") else []
    ai = unique(ai, "ai") if source in ("ai", "human-else-ai") else []
    if source == "human-else-ai":
        have = {p.key for p in human}
        counts["ai_replaced_by_human"] = sum(p.key in have for p in ai)
        ai = [p for p in ai if p.key not in have]
    counts["human_pairs"], counts["ai_pairs"] = len(human), len(ai)
    return human + ai, counts


def apply_rules(records, rules):
    """Keep the records the rules let through; returns (kept, removed by each rule, in order).

    Ties (p exactly 0.5) go with ``drop_ties``; AI labels that picked the same slot in both
    orders go with ``drop_inconsistent`` (human labels have no positions and stay); records
    with |p - 0.5| below ``min_confidence`` go last.
    """
    removed = {"ties": 0, "position_inconsistent": 0, "below_min_confidence": 0}
    kept = []
    for r in records:
        if rules.drop_ties and r.is_tie:
            removed["ties"] += 1
        elif rules.drop_inconsistent and getattr(r, "same_position", None):
            removed["position_inconsistent"] += 1
        elif r.confidence < rules.min_confidence:
            removed["below_min_confidence"] += 1
        else:
            kept.append(r)
    return kept, removed


def alignment_with_humans(ai, human):
    """Per labeler: how often its argmax agrees with the human label of the same two responses.

    ``stats.labeler_alignment`` on the AI pairs that have a human pair (human ties left out and
    counted), with the share of pairs it scored with the same slot winning in both orders.
    """
    human_a_wins = {p.key: (p.response_a, p.p_a) for p in human}
    by_labeler = {}
    for p in ai:
        by_labeler.setdefault(p.labeler, []).append(p)
    out = []
    for labeler, pairs in sorted(by_labeler.items()):
        p_first, human_pref = [], []
        for p in pairs:
            if p.key not in human_a_wins:
                continue
            response_a, p_human = human_a_wins[p.key]
            if response_a != p.response_a:
                p_human = 1.0 - p_human
            p_first.append(p.p_a)
            human_pref.append("first" if p_human > 0.5 else "second" if p_human < 0.5 else "tie")
        acc = stats.labeler_alignment(p_first, human_pref)
        same = [p.same_position for p in pairs if p.same_position is not None]
        out.append({"labeler": labeler, "n_labels": len(pairs), **acc,
                    "same_position_pct": 100.0 * sum(same) / len(same) if same else float("nan")})
    return out


# --- rows -----------------------------------------------------------------------------------------


def is_conversational(task):
    """Whether ``task`` (a TaskText, or a built-in task's slug) is a dialogue: TRL's messages then."""
    return as_task_text(task).conversational


def prompt_value(task, context):
    """TRL's prompt: the dialogue as messages for dialogue tasks, else the text a policy continues."""
    return dialogue_messages(context) if is_conversational(task) else policy_prompt(task, context)


def completion_value(task, response):
    return [{"role": "assistant", "content": response}] if is_conversational(task) else response


def preference_rows(pairs, task):
    """Rows of TRL's preference format, the better response as ``chosen``, with the soft label.

    ``p_chosen`` is the probability that chosen is better (0.5 for a tie, whose order is then the
    stored one); ``p_chosen_shown_first``/``_second`` the labeler's probability for chosen in
    the order where it was shown first and second; ``same_position`` whether the labeler picked
    the same slot in both orders.
    """
    rows = []
    for p in pairs:
        a_chosen = p.p_a >= 0.5
        chosen, rejected = (p.response_a, p.response_b) if a_chosen else (p.response_b, p.response_a)
        shown_first = shown_second = None
        if p.p_slot1_order1 is not None and p.p_slot1_order2 is not None:
            # Order 1 shows a first, order 2 shows b first.
            if a_chosen:
                shown_first, shown_second = p.p_slot1_order1, 1.0 - p.p_slot1_order2
            else:
                shown_first, shown_second = p.p_slot1_order2, 1.0 - p.p_slot1_order1
        rows.append({
            "prompt": prompt_value(task, p.context),
            "chosen": completion_value(task, chosen),
            "rejected": completion_value(task, rejected),
            "prompt_id": context_id(p.context),
            "source": p.source,
            "p_chosen": p.p_a if a_chosen else 1.0 - p.p_a,
            "p_chosen_shown_first": shown_first,
            "p_chosen_shown_second": shown_second,
            "same_position": p.same_position,
            "label_mass": p.label_mass,
            "labeler": p.labeler or None,
            "labeler_prompt_hash": p.labeler_prompt_hash or None,
            "n_annotators": p.n_annotators,
            "agreement": p.agreement,
            "dataset": p.dataset or None,
            "round": p.round or None,
        })
    return rows


def unpaired_rows(judgments, task):
    """Rows of TRL's unpaired preference format: ``label`` True for a response the annotators'
    majority judged harmless. Evenly split responses have no label and are left to the caller."""
    return [{
        "prompt": prompt_value(task, j.context),
        "completion": completion_value(task, j.response),
        "label": 2 * j.harmless_votes > j.n_annotators,
        "prompt_id": context_id(j.context),
        "harmless_share": j.harmless_share,
        "n_annotators": j.n_annotators,
        "agreement": j.agreement,
        "dataset": j.dataset or None,
        "round": j.round or None,
    } for j in judgments]


COLUMN_DOCS = {
    "prompt": "the prompt: the dialogue so far as messages (dialogue tasks) or the text to summarize ending in "
              "\"TL;DR:\" (summarization)",
    "chosen": "the better response",
    "rejected": "the worse response",
    "completion": "one response",
    "label": "True: the annotators' majority judged it harmless; False: harmful",
    "prompt_id": "stable hash of the prompt's text (the id the importers give a prompt without one)",
    "source": "human or ai",
    "p_chosen": "probability that chosen is better: the labeler's position-debiased soft label (AI), or the "
                "share of annotators who preferred it (human; 1.0 for a dataset's label); 0.5 is a tie",
    "p_chosen_shown_first": "AI: the labeler's P(chosen is better) in the order where chosen was shown first",
    "p_chosen_shown_second": "AI: the same in the order where chosen was shown second",
    "same_position": "AI: the labeler picked the same slot in both orders (position-inconsistent)",
    "label_mass": "AI: probability on the label tokens, mean of both orders (low: off-format answers)",
    "labeler": "AI: the labeler config's name",
    "labeler_prompt_hash": "AI: sha256 (first 16 hex digits) of the labeler's prompt, shown below",
    "n_annotators": "human: how many annotators judged it (empty for a dataset's label)",
    "agreement": "human: share of pairs of annotators who agree (empty below two annotators)",
    "harmless_share": "share of annotators who judged the response harmless",
    "dataset": "the dataset the prompt comes from",
    "round": "human: the evaluation round(s) of the rankings",
}


def features(kind, conversational):
    """The `datasets` schema of a preference or unpaired export (so empty columns keep their type)."""
    from datasets import Features, List, Value

    text = List({"role": Value("string"), "content": Value("string")}) if conversational else Value("string")
    if kind == "preference":
        return Features({
            "prompt": text, "chosen": text, "rejected": text, "prompt_id": Value("string"),
            "source": Value("string"), "p_chosen": Value("float64"), "p_chosen_shown_first": Value("float64"),
            "p_chosen_shown_second": Value("float64"), "same_position": Value("bool"),
            "label_mass": Value("float64"), "labeler": Value("string"), "labeler_prompt_hash": Value("string"),
            "n_annotators": Value("int64"), "agreement": Value("float64"), "dataset": Value("string"),
            "round": Value("string"),
        })
    return Features({
        "prompt": text, "completion": text, "label": Value("bool"), "prompt_id": Value("string"),
        "harmless_share": Value("float64"), "n_annotators": Value("int64"), "agreement": Value("float64"),
        "dataset": Value("string"), "round": Value("string"),
    })


def build_dataset(rows, kind, conversational):
    from datasets import Dataset

    return Dataset.from_list(rows, features=features(kind, conversational))


# --- the labeler's prompt -------------------------------------------------------------------------


def labeler_prompt(settings):
    """The labeler's prompt for a pair, with ``{context}``, ``{first}`` and ``{second}`` in place
    of the pair: what a config's labels depend on apart from its model."""
    from labeling.prompts import PromptBuilder, make_template

    builder = PromptBuilder(make_template(settings.task, settings.variant, settings.template_overrides),
                            settings.exemplars, settings.chain_of_thought)
    if settings.chain_of_thought:
        p = builder.rationale_prompt("{context}", "{first}", "{second}")
        return f"{p.plain()} {{rationale}}\n{builder.template.fmt('ending')}"
    return builder.label_prompt("{context}", "{first}", "{second}").plain()


def prompt_hash(text):
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


# --- writing --------------------------------------------------------------------------------------


def output_format(path):
    """'parquet' or 'jsonl' by the file's suffix, 'disk' (a save_to_disk folder) without one."""
    suffix = Path(path).suffix.lower()
    for fmt, ext in FILE_FORMATS.items():
        if suffix == ext:
            return fmt
    if suffix and not Path(path).is_dir():
        raise ExportError(f"{Path(path).name}: write a .parquet or .jsonl file, or give a folder (no suffix) "
                          "for datasets' save_to_disk")
    return DISK


def card_path(path):
    """Where the dataset card goes: README.md inside a folder, NAME.README.md beside a file."""
    path = Path(path)
    if output_format(path) == DISK:
        return path / "README.md"
    return path.with_name(path.name[: -len(path.suffix)] + ".README.md")


def check_destination(path, overwrite=False):
    """Why ``path`` cannot be written (its folder is missing, or it exists), or None."""
    path = Path(path)
    fmt = output_format(path)
    if not path.parent.is_dir():
        return f"The folder {path.parent} does not exist"
    if path.exists() and not overwrite:
        return f"{path} already exists; choose another name, or overwrite it"
    if fmt != DISK and path.is_dir():
        return f"{path} is a folder"
    if fmt == DISK and path.exists() and not path.is_dir():
        return f"{path} is a file, not a folder"
    return None


def write_export(dataset, path, card, *, overwrite=False):
    """Write ``dataset`` to ``path`` (format from its name) and the card beside it, atomically.

    Everything is written under a temporary name in the destination's folder and renamed into
    place, so an export that fails or is killed leaves no half-written file behind.
    Returns (data path, card path).
    """
    path = Path(path)
    problem = check_destination(path, overwrite)
    if problem:
        raise ExportError(problem)
    fmt = output_format(path)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    card_dest = card_path(path)
    card_tmp = card_dest.with_name(f".{card_dest.name}.tmp-{uuid.uuid4().hex[:8]}")
    old = None
    try:
        with quiet_datasets():
            if fmt == "parquet":
                dataset.to_parquet(str(tmp))
            elif fmt == "jsonl":
                # pandas writes 10 significant digits by default; 15 keep the probabilities as they are.
                dataset.to_json(str(tmp), lines=True, force_ascii=False, double_precision=15)
            else:
                dataset.save_to_disk(str(tmp))
        if fmt == DISK:
            (tmp / "README.md").write_text(card, encoding="utf-8")
            if path.exists():
                old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
                path.rename(old)
            try:
                tmp.rename(path)
            except OSError:
                if old is not None:
                    old.rename(path)  # put the earlier export back
                    old = None
                raise
        else:
            card_tmp.write_text(card, encoding="utf-8")
            os.replace(tmp, path)
            os.replace(card_tmp, card_dest)
    finally:
        for leftover in (tmp, card_tmp, old):
            if leftover is not None and leftover.exists():
                shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
    return path, card_dest


def push_to_hub(dataset, repo_id, *, token, card, private=False):
    """Upload the card, then the data (datasets' push_to_hub adds its metadata to that card)."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    api.upload_file(path_or_fileobj=card.encode("utf-8"), path_in_repo="README.md", repo_id=repo_id,
                    repo_type="dataset", commit_message="Dataset card from the RLAIF workbench")
    with quiet_datasets():
        return dataset.push_to_hub(repo_id, token=token, private=private,
                                   commit_message="Preference data from the RLAIF workbench")


# --- the dataset card -----------------------------------------------------------------------------


@dataclass
class CardInfo:
    """What the card says beyond the data: where it came from and how it was chosen."""

    title: str
    kind: str
    task: str
    rules: Rules
    rows: int
    data_file: str
    datasets: list = field(default_factory=list)   # dicts: name, split, task, source, licence
    rounds: list = field(default_factory=list)     # dicts: id, name, question
    labelers: list = field(default_factory=list)   # dicts: name, model, prompt_hash, prompt
    counts: dict = field(default_factory=dict)
    alignment: list = field(default_factory=list)  # alignment_with_humans
    made_by: str = ""


def _yaml_list(items):
    return "[" + ", ".join(json.dumps(i) for i in items) + "]"


def dataset_card(info: CardInfo, columns):
    """The README.md written beside the data (and uploaded with it to the Hub)."""
    fmt = "TRL preference" if info.kind == "preference" else "TRL unpaired preference"
    style = "conversational (lists of {\"role\", \"content\"} messages)" if is_conversational(info.task) \
        else "standard (plain text)"
    tags = ["trl", "rlaif", "preference" if info.kind == "preference" else "unpaired-preference"]
    lines = ["---", f"tags: {_yaml_list(tags)}", "---", "", f"# {info.title}", "",
             f"{fmt} data for the *{as_task_text(info.task).slug}* task, {style}: {info.rows:,} rows in `{info.data_file}`. "
             f"Written by the RLAIF workbench on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC"
             + (f" ({info.made_by})." if info.made_by else "."), "",
             "```python", "from datasets import load_dataset", "",
             _load_example(info.data_file), "```", "", "## Columns", "", "| column | meaning |", "|---|---|"]
    lines += [f"| `{c}` | {COLUMN_DOCS.get(c, '')} |" for c in columns]
    lines += ["", "## Sources", ""]
    for d in info.datasets:
        extra = "; ".join(x for x in (d.get("source") and f"source: {d['source']}",
                                      d.get("licence") and f"licence: {d['licence']}") if x)
        lines.append(f"- dataset **{d['name']} [{d['split']}]** (task {d['task']})" + (f"; {extra}" if extra else ""))
    for r in info.rounds:
        lines.append(f"- evaluation round **{r['name']}** (#{r['id']}, question: {r['question']}): annotators' "
                     "rankings, each ranking of k responses giving k(k-1)/2 pairs")
    if not info.datasets and not info.rounds:
        lines.append("- the comparisons the labeler configs below labeled")
    for lab in info.labelers:
        lines += ["", f"### Labeler config: {lab['name']}", "",
                  f"Model: {lab.get('model') or 'unknown'}. Prompt hash `{lab['prompt_hash']}` "
                  "(sha256 of the prompt below, first 16 hex digits):", "", "```text", lab["prompt"], "```"]
    lines += ["", "## Rules", ""]
    lines += [f"- {k}: {v}" for k, v in info.rules.describe().items()]
    lines += ["", "## Counts", ""]
    lines += [f"- {k.replace('_', ' ')}: {v:,}" for k, v in info.counts.items() if isinstance(v, int)]
    if info.alignment:
        lines += ["", "## Alignment with humans", "",
                  "How often each labeler's preferred response is the one humans preferred, on the pairs of this "
                  "selection both labeled (before the rules; human ties left out), with a 95% Wilson interval, "
                  "and the share of pairs where it picked the same slot in both orders.", "",
                  "| labeler | alignment | 95% CI | pairs | same position |", "|---|---|---|---|---|"]
        for a in info.alignment:
            lines.append(f"| {a['labeler']} | {_pct(a['accuracy'])} | {_pct(a['ci_low'])} – {_pct(a['ci_high'])} "
                         f"| {a['n']:,} | {_pct(a['same_position_pct'] / 100)} |")
    return "\n".join(lines) + "\n"


def _load_example(data_file):
    if data_file.endswith(".parquet"):
        return f'ds = load_dataset("parquet", data_files="{data_file}", split="train")'
    if data_file.endswith(".jsonl"):
        return f'ds = load_dataset("json", data_files="{data_file}", split="train")'
    return f'from datasets import load_from_disk\nds = load_from_disk("{data_file}")'


def _pct(x):
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"
