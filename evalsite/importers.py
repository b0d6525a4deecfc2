"""Dataset file parsers: one per format, each returning the same normalized result.

Plain Python, pandas and `datasets` (no Django): :func:`parse_file` reads a file and returns a
:class:`ParsedDataset` of prompts (``external_id``, ``context``, ``reference``, ``metadata``)
and pairs (``prompt_external_id``, ``response_a``, ``response_b``, ``human_preference``,
``judge_preference``, ``judge_name``, ``metadata``), plus counters of what was skipped.
Writing to the database is :mod:`evalsite.importjobs`' business.

Any problem with the file raises :class:`ImportFormatError`, whose message names the file,
the line (JSON lines) or data row (CSV, counted from 1 after the header; Hugging Face datasets,
counted from 1) and the field.

Conventions shared with the rest of the project: contexts are stored bare (a TL;DR post
without the trailing "TL;DR:", an HH dialogue up to the final "\\n\\nAssistant:"); a
preference is 'first' (response_a better), 'second' or 'tie'; an external AI judge's label
shipped with a dataset goes to ``judge_preference``/``judge_name``, never to the human label.
"""
import contextlib
import csv
import gzip
import hashlib
import io
import json
import math
import re
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd

from evalsite.tasktext import ASSISTANT_TURN, SUMMARIZATION_SUFFIX, dialogue_text, split_dialogue

TLDR_JUDGE_NAME = "GPT-4 (dataset)"
MAX_ID_CHARS = 200  # Prompt.external_id's column width
PREFERENCES = ("first", "second", "tie")
# Accepted spellings of a preference in the generic pair formats (lower-cased, stripped).
PREFERENCE_ALIASES = {
    "first": "first", "a": "first", "response_a": "first",
    "second": "second", "b": "second", "response_b": "second",
    "tie": "tie", "equal": "tie", "same": "tie",
    "": "",
}

# One line per format for forms, `--help` and error messages; FORMAT_HELP holds the details.
FORMATS = {
    "hh": "Anthropic HH-RLHF JSON lines (.jsonl or .jsonl.gz) with 'chosen' and 'rejected' dialogues",
    "tldr": "Reddit TL;DR CSV with 'query' and a reference summary column (judged rows also give comparisons)",
    "openai-comparisons": "OpenAI summarize-from-feedback comparisons, JSON lines with info.post, summaries, choice",
    "prompts-csv": "generic prompts, CSV with a 'context' column",
    "prompts-jsonl": "generic prompts, JSON lines with a 'context' field",
    "pairs-csv": "generic preference pairs, CSV with 'context', 'response_a', 'response_b'",
    "pairs-jsonl": "generic preference pairs, JSON lines with 'context', 'response_a', 'response_b'",
    "hf": "a Hugging Face dataset (save_to_disk folder, Parquet, JSON lines, or a hub id) in TRL's preference, "
          "prompt-only or prompt-completion format",
}

FORMAT_HELP = {
    "hh": "One JSON object a line: {\"chosen\": dialogue, \"rejected\": dialogue}; gzip is detected "
          "automatically. Context = the dialogue before the last \"\\n\\nAssistant:\"; the two responses "
          "follow it; 'chosen' is the human preference. Pairs whose contexts differ are skipped and counted. "
          "The chosen response is put first or second by a stable hash of the pair (recorded in the "
          "comparison's metadata as chosen_position). Task: harmless (helpful when the file name says "
          "'helpful'), or as given.",
    "tldr": "CSV with 'query' (\"SUBREDDIT: r/...\\n\\nTITLE: ...\\n\\nPOST: ...\\n\\nTL;DR:\") and a reference "
            "column (reference_responses, reference, reference_response or summary); optional 'id'. Rows with "
            "'preferred' ('ours' or 'reference') also give a comparison of 'postprocessed_response' with the "
            f"reference, labelled by the judge as judge_preference (judge_name \"{TLDR_JUDGE_NAME}\"), never "
            "as a human preference; 'explanation' goes to metadata.",
    "openai-comparisons": "JSON lines of the OpenAI summarize-from-feedback release: info.id, info.post "
                          "(or info.article), info.title, info.subreddit; summaries[0..1].text (and .policy); "
                          "choice (0 = first, 1 = second) is the human preference.",
    "prompts-csv": "Columns: context (required; alias 'prompt'), id (optional; alias 'external_id'; default "
                   "a hash of the context), reference (optional). Other columns go to the prompt's metadata.",
    "prompts-jsonl": "Fields: context (required; alias 'prompt'), id (optional; alias 'external_id'; default "
                     "a hash of the context), reference (optional). Other fields go to the prompt's metadata.",
    "pairs-csv": "Columns: context, response_a, response_b (required); prompt_id (optional; alias 'id'); "
                 "reference (optional); preference (optional; alias 'human_preference'): first/second/tie "
                 "(or a/b), empty when unknown; judge_preference with judge_name (optional, an AI label). "
                 "Other columns go to the comparison's metadata.",
    "pairs-jsonl": "Fields: context, response_a, response_b (required); prompt_id (optional; alias 'id'); "
                   "reference (optional); preference (optional; alias 'human_preference'): first/second/tie "
                   "(or a/b), empty or null when unknown; judge_preference with judge_name (optional, an AI "
                   "label). Other fields go to the comparison's metadata.",
    "hf": "A folder written by datasets' save_to_disk, a .parquet or .jsonl(.gz) file, or a hub id (org/name, "
          "downloaded where there is internet); a dataset with several splits is read at the import's split. "
          "TRL's formats, text or conversational (lists of {\"role\", \"content\"}, turned into "
          "\"\\n\\nHuman: …\\n\\nAssistant: …\" dialogues): preference (prompt, chosen, rejected; or chosen and "
          "rejected holding the whole conversation), prompt-completion (the completion becomes the prompt's "
          "reference) and prompt-only. A trailing \"TL;DR:\" or \"\\n\\nAssistant:\" is cut from text prompts. "
          "Optional: prompt_id (default: a hash of the prompt), p_chosen (0.5 = tie), source ('ai' stores the "
          "label as an AI judge's, named by 'labeler'; otherwise it is human). Other columns go to metadata. "
          "Map other column names with --column-map chosen=better,rejected=worse. The chosen response is put "
          "first or second by a stable hash of the pair, as for hh.",
}

# Formats whose files say which task they are; the generic ones (and hf) need the task from the user.
DEFAULT_TASKS = {"hh": "harmless", "tldr": "summarization", "openai-comparisons": "summarization"}


def default_task_for(fmt, path=""):
    """The task slug a file of this format holds, or None when the user must say (generic formats)."""
    if fmt == "hh" and "helpful" in "/".join(Path(path).parts[-2:]).lower():
        return "helpful"  # Anthropic ships helpful-base/... and harmless-base/... in the same format
    return DEFAULT_TASKS.get(fmt)


class ImportFormatError(ValueError):
    """A problem with an input file; the message names the file, line or row, and field."""

    def __init__(self, message, *, path=None, line=None, row=None, field=None):
        self.path, self.line, self.row, self.field, self.detail = path, line, row, field, message
        where = [Path(path).name] if path else []
        if line is not None:
            where.append(f"line {line}")
        if row is not None:
            where.append(f"row {row}")
        if field is not None:
            where.append(f"field '{field}'")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)


@dataclass
class PromptRecord:
    external_id: str
    context: str
    reference: str = ""
    metadata: dict = field(default_factory=dict)


@dataclass
class PairRecord:
    prompt_external_id: str
    response_a: str
    response_b: str
    human_preference: str = ""
    judge_preference: str = ""
    judge_name: str = ""
    metadata: dict = field(default_factory=dict)


@dataclass
class ParsedDataset:
    format: str
    path: str
    prompts: list = field(default_factory=list)   # PromptRecord, unique by external_id, file order
    pairs: list = field(default_factory=list)     # PairRecord, unique by (prompt, a, b), file order
    counts: dict = field(default_factory=dict)    # rows_read, skipped_* and duplicate_* counters
    default_task: str | None = None

    def count(self, key, n=1):
        self.counts[key] = self.counts.get(key, 0) + n


def context_id(context):
    """External id for a prompt whose file gives none: a stable hash of its context."""
    return "h" + hashlib.sha256(context.encode("utf-8")).hexdigest()[:16]


def first_by_hash(*parts):
    """A stable coin flip per pair, so that the preferred response's position gives nothing away."""
    h = hashlib.sha256("\x00".join(parts).encode("utf-8")).digest()
    return h[0] % 2 == 0


# --- reading files ------------------------------------------------------------------------


def read_text(path, max_bytes=None):
    """The file's text: gzip detected by its magic bytes, UTF-8 (BOM allowed) or a clear error.

    ``max_bytes``: the most a gzip file may decompress to. It is decompressed a chunk at a time
    and refused as soon as it passes that, so a small file that inflates to gigabytes (a "gzip
    bomb") never fills the memory.
    """
    p = Path(path)
    try:
        with open(p, "rb") as f:
            if f.read(2) == b"\x1f\x8b":
                f.seek(0)
                data = _gunzip(f, path, max_bytes)
            else:
                f.seek(0)
                data = f.read()
    except FileNotFoundError:
        raise ImportFormatError("file not found", path=path)
    except IsADirectoryError:
        raise ImportFormatError("is a folder, not a file", path=path)
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise ImportFormatError(
            f"the file is not UTF-8 text: byte 0x{data[e.start]:02x} at column {column} is not valid UTF-8 "
            "(re-save the file with UTF-8 encoding)", path=path, line=line,
        )
    if not text.strip():
        raise ImportFormatError("the file is empty", path=path)
    return text


GUNZIP_CHUNK = 1 << 20


def _gunzip(f, path, max_bytes):
    chunks, size = [], 0
    try:
        with gzip.GzipFile(fileobj=f) as z:
            while chunk := z.read(GUNZIP_CHUNK):
                size += len(chunk)
                if max_bytes is not None and size > max_bytes:
                    raise ImportFormatError(
                        f"decompresses to more than {_size(max_bytes)}, the most an import accepts "
                        "(DATASET_DECOMPRESSED_MAX_BYTES); split the file, or raise that limit", path=path,
                    )
                chunks.append(chunk)
    except (OSError, EOFError, zlib.error) as e:
        raise ImportFormatError(f"looks gzip-compressed but cannot be decompressed ({e})", path=path)
    return b"".join(chunks)


def _size(n):
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}".replace(".0 ", " ")
        n /= 1024


# Deeper than this, a JSON line is refused: no dataset nests so deep, and a value that does
# could not be stored (Python's json and SQLite's JSON functions stop near 1000 levels).
MAX_JSON_DEPTH = 100
NUL = "\x00"
# Text no database column can hold: NUL (PostgreSQL refuses it) and, from JSON's "\udXXX"
# escapes, a lone surrogate (not Unicode text: it cannot be encoded as UTF-8).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def iter_json_lines(path, text):
    """Yield (line number, object) for each non-blank line; broken JSON names its line."""
    lines = text.split("\n")  # not splitlines(): U+2028 may legally sit inside a JSON string
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            hint = ""
            if n == 1 and line.strip() in ("[", "{"):
                hint = " (expected JSON lines: one complete JSON object on each line)"
            raise ImportFormatError(f"broken JSON: {e.msg} at column {e.colno}{hint}", path=path, line=n)
        except RecursionError:
            raise _too_deep(path, n)
        if not isinstance(obj, dict):
            raise ImportFormatError(
                f"expected a JSON object on each line, found {type(obj).__name__}", path=path, line=n
            )
        # Cheap tests first: a line with few brackets cannot nest deeply, and unstorable text can
        # only come from a "\u0000" or "\udXXX" escape (raw control characters are not valid JSON).
        if (line.count("{") + line.count("[") > MAX_JSON_DEPTH
                or "\\u0000" in line or "\\ud" in line or "\\uD" in line):
            _check_json_values(obj, path, n)
        yield n, obj


def _too_deep(path, line, field=None):
    if field and len(field) > 60:
        field = field[:57] + "..."  # "extra[0][0][0]...": where it starts is enough
    return ImportFormatError(f"nested too deeply (more than {MAX_JSON_DEPTH} levels of objects and lists)",
                             path=path, line=line, field=field)


def unstorable_text(text):
    """Why ``text`` cannot be stored, or None when it can."""
    m = _UNSTORABLE.search(text)
    if m is None:
        return None
    if m.group() == NUL:
        return "contains a NUL character (byte 0x00 or \\u0000), which cannot be stored; remove it"
    return f"contains a lone surrogate (\\u{ord(m.group()):04x}), which is not Unicode text; remove it"


def _check_json_values(obj, path, line):
    """Refuse an object nested deeper than MAX_JSON_DEPTH, or holding text that cannot be stored
    in a value or a key; the error names the field (``info.post``, ``summaries[0].text``)."""
    stack = [(obj, None, 1)]
    while stack:
        value, where, depth = stack.pop()
        if isinstance(value, str):
            problem = unstorable_text(value)
            if problem:
                raise ImportFormatError(problem, path=path, line=line, field=where)
        elif isinstance(value, (dict, list)):
            if depth > MAX_JSON_DEPTH:
                raise _too_deep(path, line, where)
            if isinstance(value, dict):
                children = []
                for k, v in value.items():
                    name = f"{where}.{k}" if where else k
                    problem = unstorable_text(k)
                    if problem:
                        raise ImportFormatError(problem + " (in the field's name)", path=path, line=line,
                                                field=_UNSTORABLE.sub("?", name))
                    children.append((v, name))
            else:
                children = [(v, f"{where or ''}[{i}]") for i, v in enumerate(value)]
            stack.extend((v, w, depth + 1) for v, w in reversed(children))


def read_csv(path, text):
    """All cells as strings ('' when empty); header names stripped."""
    try:
        df = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, na_filter=False)
    except pd.errors.EmptyDataError:
        raise ImportFormatError("the file is empty", path=path)
    except pd.errors.ParserError as e:
        raise ImportFormatError(f"broken CSV: {str(e).strip()}", path=path)
    df.columns = [str(c).strip() for c in df.columns]
    if len(df) == 0:
        raise ImportFormatError(f"has a header ({', '.join(df.columns)}) but no data rows", path=path)
    return df


def csv_record_lines(text):
    """Line number where each CSV data record starts (fields may span lines); for error messages."""
    reader = csv.reader(io.StringIO(text))
    starts, line = [], 1
    for i, _ in enumerate(reader):
        if i > 0:
            starts.append(line)
        line = reader.line_num + 1
    return starts


class _CsvRows:
    """Iterates a CSV's records as dicts, and knows how to point an error at one."""

    def __init__(self, path, text):
        self.path, self.text = path, text
        self.df = read_csv(path, text)
        self.columns = list(self.df.columns)
        self._lines = None
        if NUL in text:  # strict UTF-8 decoding already refused lone surrogates
            self._refuse_nul()

    def __len__(self):
        return len(self.df)

    def __iter__(self):
        for i, rec in enumerate(self.df.to_dict("records"), start=1):
            yield i, rec

    def error(self, row, message, field=None):
        if self._lines is None:
            self._lines = csv_record_lines(self.text)
        line = self._lines[row - 1] if row - 1 < len(self._lines) else None
        return ImportFormatError(message, path=self.path, row=row, line=line, field=field)

    def _refuse_nul(self):
        """Name the first cell (or column name) holding a NUL character."""
        for column in self.columns:
            if NUL in column:
                raise ImportFormatError(unstorable_text(column) + " (in the column's name)", path=self.path,
                                        line=1, field=column.replace(NUL, "?"))
        for column in self.columns:
            found = self.df[column].str.contains(NUL, regex=False).to_numpy()
            if found.any():
                raise self.error(int(found.argmax()) + 1, unstorable_text(NUL), column)

    def require(self, *columns):
        missing = [c for c in columns if c not in self.columns]
        if missing:
            raise ImportFormatError(
                f"missing column {', '.join(repr(c) for c in missing)} (the header has: "
                f"{', '.join(self.columns)})", path=self.path, field=missing[0],
            )


class _JsonRows:
    """Iterates JSON lines as dicts, pointing errors at the line."""

    def __init__(self, path, text):
        self.path = path
        self.rows = list(iter_json_lines(path, text))
        if not self.rows:
            raise ImportFormatError("the file is empty", path=path)

    def __len__(self):
        return len(self.rows)

    def __iter__(self):
        return iter(self.rows)

    def error(self, line, message, field=None):
        return ImportFormatError(message, path=self.path, line=line, field=field)


def _rows(path, text, kind):
    return _CsvRows(path, text) if kind == "csv" else _JsonRows(path, text)


# --- building the result --------------------------------------------------------------------


class _Builder:
    """Collects prompts and pairs, merging repeats and refusing contradictions."""

    def __init__(self, fmt, path, default_task=None, progress=None, total=0):
        self.result = ParsedDataset(format=fmt, path=str(path), default_task=default_task)
        self.result.counts = {"rows_read": 0}
        self._prompts = {}   # external_id -> (PromptRecord, where first seen)
        self._pairs = set()
        self.progress = progress
        self.total = max(1, total)

    def row_read(self, i):
        self.result.counts["rows_read"] += 1
        if self.progress and i % 2000 == 0:
            self.progress(i / self.total, f"read {i:,} of {self.total:,} rows")

    def prompt(self, external_id, context, reference="", metadata=None, *, error=None):
        """Add (or find) a prompt; ``error(message, field)`` builds the error for this row."""
        seen = self._prompts.get(external_id)
        if seen is None:
            if len(external_id) > MAX_ID_CHARS:
                raise error(f"prompt id is {len(external_id)} characters long; at most {MAX_ID_CHARS} are allowed",
                            "id")
            rec = PromptRecord(external_id, context, reference or "", dict(metadata or {}))
            self._prompts[external_id] = rec
            self.result.prompts.append(rec)
            return rec
        if seen.context != context:
            raise error(f"prompt id {external_id!r} appears earlier in the file with a different context",
                        "id")
        if reference and not seen.reference:
            seen.reference = reference
        elif reference and seen.reference != reference:
            raise error(f"prompt id {external_id!r} appears earlier in the file with a different reference",
                        "reference")
        self.result.count("repeated_prompts_in_file")
        return seen

    def pair(self, rec: PairRecord):
        key = (rec.prompt_external_id, rec.response_a, rec.response_b)
        if key in self._pairs:
            self.result.count("duplicate_pairs_in_file")
            return
        self._pairs.add(key)
        self.result.pairs.append(rec)


def _text(value, field_name, error, *, required=True):
    """A cell as text: str as is, numbers as their str, None/NaN as ''."""
    if value is None or (isinstance(value, float) and value != value):
        if required:
            raise error("is missing or empty", field_name)
        value = ""
    if isinstance(value, (dict, list, bool)):
        raise error(f"expected text, found {type(value).__name__}", field_name)
    value = str(value)
    if required and not value.strip():
        raise error("is empty", field_name)
    return value


def _preference(value, field_name, error):
    text = "" if value is None else str(value).strip().lower()
    if text not in PREFERENCE_ALIASES:
        raise error(
            f"bad preference value {value!r}: use first, second or tie (or a/b), or leave it empty", field_name
        )
    return PREFERENCE_ALIASES[text]


def _metadata(record, used):
    """Columns/fields nobody asked for, kept with the object (empty cells dropped)."""
    out = {}
    for k, v in record.items():
        if k in used or v is None or v == "" or (isinstance(v, float) and v != v):
            continue
        out[str(k)] = v
    return out


def _pick(columns, *names):
    return next((n for n in names if n in columns), None)


# --- the formats ------------------------------------------------------------------------------


def parse_hh(path, text, progress=None):
    rows = _JsonRows(path, text)
    b = _Builder("hh", path, default_task_for("hh", path), progress, len(rows))
    for n, obj in rows:
        b.row_read(n)
        err = lambda msg, f=None, n=n: rows.error(n, msg, f)  # noqa: E731
        chosen = _text(obj.get("chosen"), "chosen", err)
        rejected = _text(obj.get("rejected"), "rejected", err)
        c, r = split_dialogue(chosen), split_dialogue(rejected)
        if c is None:
            raise err(f"has no {ASSISTANT_TURN.strip()!r} turn", "chosen")
        if r is None:
            raise err(f"has no {ASSISTANT_TURN.strip()!r} turn", "rejected")
        (context, chosen_text), (rejected_context, rejected_text) = c, r
        if context != rejected_context:
            b.result.count("skipped_context_mismatch")
            continue
        if chosen_text == rejected_text:
            b.result.count("skipped_identical_responses")
            continue
        pid = context_id(context)
        b.prompt(pid, context, metadata={"turns": context.count("\n\nHuman:")}, error=err)
        chosen_first = first_by_hash(context, chosen_text, rejected_text)
        a, bb = (chosen_text, rejected_text) if chosen_first else (rejected_text, chosen_text)
        b.pair(PairRecord(
            pid, a, bb, human_preference="first" if chosen_first else "second",
            metadata={"chosen_position": "first" if chosen_first else "second", "line": n},
        ))
    return b.result


_TLDR_HEADER = re.compile(r"^SUBREDDIT:\s*r/(?P<subreddit>[^\n]*?)\s*\n+TITLE:\s*(?P<title>[^\n]*?)\s*\n+POST:", re.S)
TLDR_REFERENCE_COLUMNS = ("reference_responses", "reference", "reference_response", "summary")
TLDR_MODEL_COLUMNS = ("postprocessed_response", "response", "model_response")


def tldr_context(query):
    """The bare post: the query without its trailing "TL;DR:"."""
    q = query.rstrip()
    if q.endswith(SUMMARIZATION_SUFFIX.strip()):
        q = q[: -len(SUMMARIZATION_SUFFIX.strip())]
    return q.rstrip()


def parse_tldr(path, text, progress=None):
    rows = _CsvRows(path, text)
    rows.require("query")
    ref_col = _pick(rows.columns, *TLDR_REFERENCE_COLUMNS)
    if ref_col is None:
        raise ImportFormatError(
            f"missing reference column (one of {', '.join(TLDR_REFERENCE_COLUMNS)}; the header has: "
            f"{', '.join(rows.columns)})", path=path, field=TLDR_REFERENCE_COLUMNS[0],
        )
    model_col = _pick(rows.columns, *TLDR_MODEL_COLUMNS)
    judged = "preferred" in rows.columns
    if judged and model_col is None:
        raise ImportFormatError(
            f"has a 'preferred' column but no model summary column (one of {', '.join(TLDR_MODEL_COLUMNS)})",
            path=path, field=TLDR_MODEL_COLUMNS[0],
        )
    id_col = _pick(rows.columns, "id", "external_id")
    b = _Builder("tldr", path, DEFAULT_TASKS["tldr"], progress, len(rows))
    for i, rec in rows:
        b.row_read(i)
        err = lambda msg, f=None, i=i: rows.error(i, msg, f)  # noqa: E731
        query = _text(rec["query"], "query", err)
        context = tldr_context(query)
        if not context:
            raise err("holds only 'TL;DR:', no post", "query")
        reference = _text(rec[ref_col], ref_col, err, required=False).strip()
        meta = {}
        m = _TLDR_HEADER.match(context)
        if m:
            meta = {"subreddit": m["subreddit"], "title": m["title"]}
        pid = _text(rec[id_col], id_col, err).strip() if id_col else context_id(context)
        b.prompt(pid, context, reference, meta, error=err)
        preferred = (rec.get("preferred") or "").strip().lower() if judged else ""
        if not preferred:
            continue
        if preferred not in ("ours", "reference"):
            raise err(f"bad preference value {rec['preferred']!r}: use 'ours', 'reference' or leave it empty",
                      "preferred")
        model = _text(rec[model_col], model_col, err).strip()
        if not reference:
            raise err("is empty, but the row is judged against the reference", ref_col)
        if model == reference:
            b.result.count("skipped_identical_responses")
            continue
        reference_first = first_by_hash(context, reference, model)
        a, bb = (reference, model) if reference_first else (model, reference)
        judge_first = (preferred == "reference") == reference_first
        meta = {"reference_position": "first" if reference_first else "second",
                "model_response_column": model_col, "judge_preferred": preferred}
        if rec.get("explanation"):
            meta["explanation"] = rec["explanation"]
        if rec.get("shuffled_index", "") != "":
            meta["judge_shuffled_index"] = rec["shuffled_index"]
        b.pair(PairRecord(pid, a, bb, judge_preference="first" if judge_first else "second",
                          judge_name=TLDR_JUDGE_NAME, metadata=meta))
    b.result.counts["judged_rows"] = len(b.result.pairs) + b.result.counts.get("skipped_identical_responses", 0)
    return b.result


def openai_context(info):
    """Same shape as the TL;DR queries, so posts from both sources read alike."""
    post = info.get("post")
    if post:
        return f"SUBREDDIT: r/{info.get('subreddit') or ''}\n\nTITLE: {info.get('title') or ''}\n\nPOST: {post.strip()}"
    article = info.get("article") or ""
    title = info.get("title")
    return (f"TITLE: {title}\n\nARTICLE: {article.strip()}" if title else article.strip())


def parse_openai_comparisons(path, text, progress=None):
    rows = _JsonRows(path, text)
    b = _Builder("openai-comparisons", path, DEFAULT_TASKS["openai-comparisons"], progress, len(rows))
    for n, obj in rows:
        b.row_read(n)
        err = lambda msg, f=None, n=n: rows.error(n, msg, f)  # noqa: E731
        info = obj.get("info")
        if not isinstance(info, dict):
            raise err("missing (expected an object with 'post', 'title', 'subreddit', 'id')", "info")
        if not (info.get("post") or info.get("article")):
            raise err("missing or empty (no post or article text)", "info.post")
        summaries = obj.get("summaries")
        if not isinstance(summaries, list) or len(summaries) != 2:
            raise err("expected a list of two summaries", "summaries")
        texts = []
        for k, s in enumerate(summaries):
            if not isinstance(s, dict):
                raise err("expected an object with 'text'", f"summaries[{k}]")
            texts.append(_text(s.get("text"), f"summaries[{k}].text", err).strip())
        choice = obj.get("choice")
        if choice not in (0, 1) or isinstance(choice, bool):
            raise err(f"bad preference value {choice!r}: expected 0 (first summary) or 1 (second)", "choice")
        context = openai_context(info)
        pid = str(info["id"]) if info.get("id") else context_id(context)
        meta = {k: info[k] for k in ("subreddit", "title", "site") if info.get(k)}
        b.prompt(pid, context, metadata=meta, error=err)
        if texts[0] == texts[1]:
            b.result.count("skipped_identical_responses")
            continue
        pair_meta = {"policies": [s.get("policy") for s in summaries]}
        for k in ("worker", "batch", "split"):
            if obj.get(k):
                pair_meta[k] = obj[k]
        if isinstance(obj.get("extra"), dict) and obj["extra"].get("confidence") is not None:
            pair_meta["confidence"] = obj["extra"]["confidence"]
        b.pair(PairRecord(pid, texts[0], texts[1], human_preference=PREFERENCES[choice], metadata=pair_meta))
    return b.result


def _generic_prompts(fmt, kind):
    def parse(path, text, progress=None):
        rows = _rows(path, text, kind)
        b = _Builder(fmt, path, None, progress, len(rows))
        if kind == "csv":
            if _pick(rows.columns, "context", "prompt") is None:
                rows.require("context")
        for i, rec in rows:
            b.row_read(i)
            err = lambda msg, f=None, i=i: rows.error(i, msg, f)  # noqa: E731
            ctx_field = _pick(rec, "context", "prompt")
            if ctx_field is None:
                raise err("missing", "context")
            context = _text(rec[ctx_field], ctx_field, err)
            id_field = _pick(rec, "id", "external_id")
            pid = _text(rec[id_field], id_field, err).strip() if id_field and rec[id_field] not in (None, "") \
                else context_id(context)
            reference = _text(rec.get("reference"), "reference", err, required=False)
            b.prompt(pid, context, reference, _metadata(rec, {ctx_field, id_field, "reference"}), error=err)
        return b.result

    return parse


def _generic_pairs(fmt, kind):
    def parse(path, text, progress=None):
        rows = _rows(path, text, kind)
        b = _Builder(fmt, path, None, progress, len(rows))
        if kind == "csv":
            if _pick(rows.columns, "context", "prompt") is None:
                rows.require("context")
            rows.require("response_a", "response_b")
        for i, rec in rows:
            b.row_read(i)
            err = lambda msg, f=None, i=i: rows.error(i, msg, f)  # noqa: E731
            ctx_field = _pick(rec, "context", "prompt")
            if ctx_field is None:
                raise err("missing", "context")
            for f in ("response_a", "response_b"):
                if f not in rec:
                    raise err("missing", f)
            context = _text(rec[ctx_field], ctx_field, err)
            a = _text(rec["response_a"], "response_a", err, required=False)
            bb = _text(rec["response_b"], "response_b", err, required=False)
            id_field = _pick(rec, "prompt_id", "id", "external_id")
            pid = _text(rec[id_field], id_field, err).strip() if id_field and rec[id_field] not in (None, "") \
                else context_id(context)
            pref_field = _pick(rec, "preference", "human_preference")
            human = _preference(rec[pref_field], pref_field, err) if pref_field else ""
            judge = _preference(rec.get("judge_preference"), "judge_preference", err)
            judge_name = _text(rec.get("judge_name"), "judge_name", err, required=False).strip()
            if judge and not judge_name:
                raise err("is required when 'judge_preference' is given", "judge_name")
            if not judge:
                judge_name = ""
            reference = _text(rec.get("reference"), "reference", err, required=False)
            b.prompt(pid, context, reference, error=err)
            if a == bb:
                b.result.count("skipped_identical_responses")
                continue
            used = {ctx_field, id_field, pref_field, "response_a", "response_b", "judge_preference",
                    "judge_name", "reference"}
            b.pair(PairRecord(pid, a, bb, human_preference=human, judge_preference=judge, judge_name=judge_name,
                              metadata=_metadata(rec, used)))
        return b.result

    return parse


# --- Hugging Face datasets ----------------------------------------------------------------------

# The fields the hf format reads, and what each holds; --column-map names other columns for them.
HF_FIELDS = {
    "prompt": "the prompt: text, or a list of {role, content} messages",
    "chosen": "the better response (preference format)",
    "rejected": "the worse response (preference format)",
    "completion": "a response, kept as the prompt's reference (prompt-completion format)",
    "label": "TRL's unpaired preference label (refused: there is no place for it)",
    "prompt_id": "the prompt's external id",
    "source": "'ai' or 'human': whose label the pair carries",
    "p_chosen": "probability that chosen is better; 0.5 is a tie",
    "labeler": "the AI labeler's name, for source 'ai'",
}
HF_FILE_SUFFIXES = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".gz": "json"}
HF_AI_JUDGE_NAME = "AI labeler (imported)"
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def is_hub_id(path):
    """Whether ``path`` reads as a Hugging Face hub id ("org/name") rather than a local path."""
    return bool(_HUB_ID.fullmatch(str(path))) and not Path(path).exists()


@contextlib.contextmanager
def quiet_datasets():
    """Without datasets' own progress bars: jobs and commands report their progress themselves."""
    import datasets

    was_disabled = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            datasets.enable_progress_bars()


def parse_column_map(text):
    """'chosen=better,rejected=worse' (or a dict) -> {"chosen": "better", "rejected": "worse"}."""
    if not text:
        return {}
    if isinstance(text, dict):
        items = list(text.items())
    else:
        items = []
        for part in str(text).split(","):
            if not part.strip():
                continue
            name, sep, column = part.partition("=")
            if not sep or not name.strip() or not column.strip():
                raise ImportFormatError(f"bad column mapping {part.strip()!r}: write FIELD=COLUMN, e.g. chosen=better")
            items.append((name, column))
    mapping = {}
    for name, column in items:
        name, column = str(name).strip(), str(column).strip()
        if name not in HF_FIELDS:
            raise ImportFormatError(f"unknown field {name!r} in the column mapping; the fields are: "
                                    f"{', '.join(HF_FIELDS)}")
        if name in mapping:
            raise ImportFormatError(f"the column mapping names the field {name!r} twice")
        mapping[name] = column
    return mapping


def read_hf_dataset(path, split="train"):
    """A `datasets.Dataset` from a save_to_disk folder, a Parquet or JSON lines file, or a hub id.

    Files are read through a temporary cache (deleted afterwards) into memory; a DatasetDict gives
    its only split, or the one named ``split``.
    """
    import datasets

    p = Path(path)
    try:
        with quiet_datasets(), tempfile.TemporaryDirectory(prefix="hf-import-") as cache:
            if p.is_dir():
                if not any((p / name).exists() for name in ("dataset_info.json", "dataset_dict.json", "state.json")):
                    raise ImportFormatError("is a folder but not one written by datasets' save_to_disk "
                                            "(no dataset_info.json or dataset_dict.json)", path=path)
                if _has_no_rows(p, "disk"):  # datasets cannot load a folder saved without rows
                    raise ImportFormatError("the dataset has no rows", path=path)
                data = datasets.load_from_disk(str(p), keep_in_memory=True)
            elif p.is_file():
                kind = HF_FILE_SUFFIXES.get(p.suffix.lower())
                if kind is None:
                    raise ImportFormatError("the hf format reads .parquet and .jsonl files, save_to_disk folders "
                                            "and hub ids", path=path)
                if _has_no_rows(p, kind):  # datasets would only say that the split "corresponds to no data"
                    raise ImportFormatError("the dataset has no rows", path=path)
                reader = datasets.Dataset.from_parquet if kind == "parquet" else datasets.Dataset.from_json
                data = reader(str(p), cache_dir=cache, keep_in_memory=True)
            elif is_hub_id(path):
                data = datasets.load_dataset(str(path))
            else:
                raise ImportFormatError("file or folder not found (nor a hub id like org/name)", path=path)
    except ImportFormatError:
        raise
    except Exception as e:  # datasets and pyarrow raise many kinds; the user needs the message, not the class
        cause = e.__cause__ or e
        raise ImportFormatError(f"cannot be read as a Hugging Face dataset: {type(cause).__name__}: "
                                f"{str(cause).strip()[:500]}", path=path) from e
    if isinstance(data, datasets.DatasetDict):
        if len(data) == 1:
            return next(iter(data.values()))
        if split not in data:
            raise ImportFormatError(f"has splits {', '.join(data)}; choose one with the import's split "
                                    f"(now {split!r})", path=path)
        return data[split]
    return data


def _has_no_rows(path, kind):
    if kind == "disk":
        state = path / "state.json"
        return state.exists() and json.loads(state.read_text(encoding="utf-8")).get("_data_files") == []
    if kind == "parquet":
        import pyarrow.parquet as pq

        return pq.read_metadata(path).num_rows == 0
    opener = gzip.open if path.suffix.lower() == ".gz" else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as f:
        return not any(line.strip() for line in f)


def parse_hf(path, progress=None, *, column_map=None, split="train"):
    """A Hugging Face dataset in TRL's preference, prompt-completion or prompt-only format."""
    mapping = parse_column_map(column_map)
    data = read_hf_dataset(path, split)
    columns = list(data.column_names)
    missing = [f"{name}={column}" for name, column in mapping.items() if column not in columns]
    if missing:
        raise ImportFormatError(f"the column mapping names column(s) the dataset does not have: "
                                f"{', '.join(missing)} (its columns: {', '.join(columns)})", path=path)
    taken = set(mapping.values())
    fields = {name: mapping.get(name, name if name not in taken else None) for name in HF_FIELDS}
    fields = {name: column for name, column in fields.items() if column in columns}
    if len(data) == 0:
        raise ImportFormatError("the dataset has no rows", path=path)
    has = fields.__contains__
    if has("chosen") != has("rejected"):
        present, absent = ("chosen", "rejected") if has("chosen") else ("rejected", "chosen")
        raise ImportFormatError(f"has {present!r} but no {absent!r} column (its columns: {', '.join(columns)}); "
                                f"map one with --column-map {absent}=COLUMN", path=path, field=absent)
    if has("chosen"):
        kind = "preference"
    elif has("completion") and has("label"):
        raise ImportFormatError("is TRL's unpaired preference format (prompt, completion, label): there is no "
                                "place for a single response's label; import pairs (chosen, rejected) or prompts",
                                path=path, field="label")
    elif has("prompt"):
        kind = "prompt-completion" if has("completion") else "prompt-only"
    else:
        raise ImportFormatError(f"has no 'prompt' column, nor 'chosen' and 'rejected' (its columns: "
                                f"{', '.join(columns)}); map yours with --column-map prompt=COLUMN", path=path,
                                field="prompt")
    used = set(fields.values())
    b = _Builder("hf", path, None, progress, len(data))
    for i, rec in enumerate(data, start=1):
        b.row_read(i)
        err = lambda msg, f=None, i=i: ImportFormatError(msg, path=path, row=i, field=f)  # noqa: E731
        extra = _hf_extra(rec, used, err)
        pid = None
        if has("prompt_id") and rec[fields["prompt_id"]] not in (None, ""):
            pid = _hf_text(rec[fields["prompt_id"]], fields["prompt_id"], err).strip()
        if kind == "preference":
            _hf_pair(b, rec, fields, pid, extra, err, i)
        else:
            context = _hf_context(rec[fields["prompt"]], fields["prompt"], err)
            reference = ""
            if kind == "prompt-completion" and rec[fields["completion"]] is not None:
                reference = _hf_response(rec[fields["completion"]], fields["completion"], err)[0]
            b.prompt(pid or context_id(context), context, reference, extra, error=err)
    return b.result


def _hf_pair(b, rec, fields, pid, extra, err, row):
    chosen, chosen_prefix = _hf_response(rec[fields["chosen"]], fields["chosen"], err)
    rejected, rejected_prefix = _hf_response(rec[fields["rejected"]], fields["rejected"], err)
    if "prompt" in fields:
        if chosen_prefix or rejected_prefix:
            raise err("with a prompt column, chosen and rejected must each be one assistant message",
                      fields["chosen"] if chosen_prefix else fields["rejected"])
        context = _hf_context(rec[fields["prompt"]], fields["prompt"], err)
    else:  # TRL's implicit prompt: chosen and rejected hold the whole conversation
        if (chosen_prefix is None) != (rejected_prefix is None):
            raise err("chosen and rejected must both be text or both be lists of messages", fields["rejected"])
        if chosen_prefix is None:
            c, r = split_dialogue(chosen), split_dialogue(rejected)
            if c is None or r is None:
                raise err(f"without a prompt column, needs the whole dialogue with a final "
                          f"{ASSISTANT_TURN.strip()!r} turn", fields["chosen"] if c is None else fields["rejected"])
            (context, chosen), (rejected_context, rejected) = c, r
        else:
            if not chosen_prefix:
                raise err("without a prompt column, needs the conversation before the response", fields["chosen"])
            try:
                context, rejected_context = dialogue_text(chosen_prefix), dialogue_text(rejected_prefix)
            except ValueError as e:
                raise err(str(e), fields["chosen"])
        if context != rejected_context:
            b.result.count("skipped_context_mismatch")
            return
    source = "human"
    if "source" in fields and rec[fields["source"]] not in (None, ""):
        source = _hf_text(rec[fields["source"]], fields["source"], err).strip().lower()
        if source not in ("human", "ai"):
            raise err(f"bad source {rec[fields['source']]!r}: use 'human' or 'ai'", fields["source"])
    p_chosen = 1.0
    if "p_chosen" in fields and rec[fields["p_chosen"]] is not None:
        p_chosen = rec[fields["p_chosen"]]
        if isinstance(p_chosen, bool) or not isinstance(p_chosen, (int, float)) or not 0.5 <= p_chosen <= 1.0:
            raise err(f"bad probability {p_chosen!r}: the probability that chosen is better is from 0.5 (a tie) "
                      "to 1", fields["p_chosen"])
    b.prompt(pid or context_id(context), context, error=err)
    if chosen == rejected:
        b.result.count("skipped_identical_responses")
        return
    if p_chosen == 0.5:
        a, bb, preference = chosen, rejected, "tie"  # no better one to hide: the file's order stays
        meta = {}
    else:
        chosen_first = first_by_hash(context, chosen, rejected)
        a, bb = (chosen, rejected) if chosen_first else (rejected, chosen)
        preference = "first" if chosen_first else "second"
        meta = {"chosen_position": preference}
    if "p_chosen" in fields:
        meta["p_chosen"] = p_chosen
    meta.update(extra)
    meta["row"] = row
    record = PairRecord(pid or context_id(context), a, bb, metadata=meta)
    if source == "ai":
        record.judge_preference = preference
        labeler = rec[fields["labeler"]] if "labeler" in fields else None
        record.judge_name = (_hf_text(labeler, fields["labeler"], err).strip() if labeler else "") or HF_AI_JUDGE_NAME
        record.judge_name = record.judge_name[:100]  # Comparison.judge_name's width
    else:
        record.human_preference = preference
    b.pair(record)


def _hf_text(value, name, err):
    if not isinstance(value, str):
        raise err(f"expected text, found {type(value).__name__}", name)
    problem = unstorable_text(value)
    if problem:
        raise err(problem, name)
    return value


def _hf_context(value, name, err):
    """A prompt as the stored bare context: messages become an HH dialogue, a trailing
    "TL;DR:" or "\\n\\nAssistant:" is cut."""
    if isinstance(value, list):
        try:
            text = dialogue_text(value)
        except ValueError as e:
            raise err(str(e), name)
        text = _hf_text(text, name, err)
    else:
        if value is None:
            raise err("is missing or empty", name)
        text = _hf_text(value, name, err)
        if text.endswith(ASSISTANT_TURN):
            text = text[: -len(ASSISTANT_TURN)]
        elif text.rstrip().endswith(SUMMARIZATION_SUFFIX.strip()):
            text = tldr_context(text)
    if not text.strip():
        raise err("is empty", name)
    return text


def _hf_response(value, name, err):
    """(response text, the messages before it or None): a conversational response is the last,
    assistant, message of its list."""
    if isinstance(value, list):
        if not value:
            raise err("is an empty list of messages", name)
        last = value[-1]
        if not isinstance(last, dict) or last.get("role") != "assistant" or not isinstance(last.get("content"), str):
            raise err("the last message must be the assistant's: {\"role\": \"assistant\", \"content\": text}", name)
        return _hf_text(last["content"], name, err), value[:-1]
    if value is None:
        raise err("is missing", name)
    return _hf_text(value, name, err), None


def _hf_extra(rec, used, err):
    """The columns no field reads, for the metadata: JSON values, empty ones left out."""
    out = {}
    for column, value in rec.items():
        if column in used:
            continue
        value = _json_value(value, column, err)
        if value is not None and value != "":
            out[column] = value
    return out


def _json_value(value, where, err, depth=0):
    if depth > MAX_JSON_DEPTH:
        raise err(f"nested too deeply (more than {MAX_JSON_DEPTH} levels)", where)
    if isinstance(value, str):
        problem = unstorable_text(value)
        if problem:
            raise err(problem, where)
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None  # JSON (and PostgreSQL's jsonb) has no NaN
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, dict):
        return {str(k): _json_value(v, f"{where}.{k}", err, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_value(v, f"{where}[{i}]", err, depth + 1) for i, v in enumerate(value)]
    return _json_value(str(value), where, err, depth)  # dates, decimals, bytes: their text


# The text-file formats; hf reads its own input (parse_file).
PARSERS: dict[str, Callable] = {
    "hh": parse_hh,
    "tldr": parse_tldr,
    "openai-comparisons": parse_openai_comparisons,
    "prompts-csv": _generic_prompts("prompts-csv", "csv"),
    "prompts-jsonl": _generic_prompts("prompts-jsonl", "jsonl"),
    "pairs-csv": _generic_pairs("pairs-csv", "csv"),
    "pairs-jsonl": _generic_pairs("pairs-jsonl", "jsonl"),
}
assert set(PARSERS) | {"hf"} == set(FORMATS) == set(FORMAT_HELP)


def check_format(fmt):
    """Raise ImportFormatError naming the known formats when ``fmt`` is not one of them."""
    if fmt not in FORMATS:
        raise ImportFormatError(f"unknown format {fmt!r}; known formats: {', '.join(FORMATS)}")
    return fmt


def parse_file(path, fmt, progress=None, max_bytes=None, column_map=None, split="train") -> ParsedDataset:
    """Read ``path`` as format ``fmt``. ``progress(fraction, message)`` is called now and then;
    ``max_bytes``: the most a compressed file may decompress to (see :func:`read_text`).
    ``column_map`` and ``split`` are for the ``hf`` format (see :func:`parse_hf`)."""
    check_format(fmt)
    if fmt == "hf":
        result = parse_hf(str(path), progress, column_map=column_map, split=split)
    else:
        if column_map:
            raise ImportFormatError(f"a column mapping is for the hf format, not {fmt!r}", path=path)
        text = read_text(path, max_bytes)
        result = PARSERS[fmt](str(path), text, progress)
    if not result.prompts:
        raise ImportFormatError("no usable rows (every row was skipped: "
                                f"{', '.join(f'{k}={v}' for k, v in result.counts.items())})", path=path)
    return result
