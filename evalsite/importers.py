"""Dataset file parsers: one per format, each returning the same normalized result.

Plain Python and pandas (no Django): :func:`parse_file` reads a file and returns a
:class:`ParsedDataset` of prompts (``external_id``, ``context``, ``reference``, ``metadata``)
and pairs (``prompt_external_id``, ``response_a``, ``response_b``, ``human_preference``,
``judge_preference``, ``judge_name``, ``metadata``), plus counters of what was skipped.
Writing to the database is :mod:`evalsite.importjobs`' business.

Any problem with the file raises :class:`ImportFormatError`, whose message names the file,
the line (JSON lines) or data row (CSV, counted from 1 after the header) and the field.

Conventions shared with the rest of the project: contexts are stored bare (a TL;DR post
without the trailing "TL;DR:", an HH dialogue up to the final "\\n\\nAssistant:"); a
preference is 'first' (response_a better), 'second' or 'tie'; an external AI judge's label
shipped with a dataset goes to ``judge_preference``/``judge_name``, never to the human label.
"""
import csv
import gzip
import hashlib
import io
import json
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd

from evalsite.tasktext import ASSISTANT_TURN, SUMMARIZATION_SUFFIX, split_dialogue

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
}

# Formats whose files say which task they are; the generic ones need the task from the user.
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


PARSERS: dict[str, Callable] = {
    "hh": parse_hh,
    "tldr": parse_tldr,
    "openai-comparisons": parse_openai_comparisons,
    "prompts-csv": _generic_prompts("prompts-csv", "csv"),
    "prompts-jsonl": _generic_prompts("prompts-jsonl", "jsonl"),
    "pairs-csv": _generic_pairs("pairs-csv", "csv"),
    "pairs-jsonl": _generic_pairs("pairs-jsonl", "jsonl"),
}
assert set(PARSERS) == set(FORMATS) == set(FORMAT_HELP)


def check_format(fmt):
    """Raise ImportFormatError naming the known formats when ``fmt`` is not one of them."""
    if fmt not in PARSERS:
        raise ImportFormatError(f"unknown format {fmt!r}; known formats: {', '.join(PARSERS)}")
    return fmt


def parse_file(path, fmt, progress=None, max_bytes=None) -> ParsedDataset:
    """Read ``path`` as format ``fmt``. ``progress(fraction, message)`` is called now and then;
    ``max_bytes``: the most a compressed file may decompress to (see :func:`read_text`)."""
    check_format(fmt)
    text = read_text(path, max_bytes)
    result = PARSERS[fmt](str(path), text, progress)
    if not result.prompts:
        raise ImportFormatError("no usable rows (every row was skipped: "
                                f"{', '.join(f'{k}={v}' for k, v in result.counts.items())})", path=path)
    return result
