"""The ``import_dataset`` job kind and the admin upload form: a thin layer over evalsite.importers.

The job parses the whole file first (reporting progress), then writes the dataset, its
prompts and comparisons in one transaction: a bad file or a cancel leaves nothing behind.
Re-importing the same file finds every row already there (prompts by external id within
the dataset, comparisons by their key) and creates nothing.
"""
import logging
import uuid
from pathlib import Path

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db import transaction
from django.http import HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone
from django.utils.text import get_valid_filename

from evalsite import importers
from evalsite.importers import FORMATS, ImportFormatError
from evalsite.jobs.runtime import JobError, job_kind
from evalsite.jobs import runtime as jobs

log = logging.getLogger(__name__)

KIND = "import_dataset"
BATCH = 1000


def dataset_name_from_path(path):
    """'hh-rlhf-harmless-base-test.jsonl.gz' -> 'hh-rlhf-harmless-base-test'."""
    name = Path(path).name
    for ext in (".gz", ".jsonl", ".json", ".csv", ".tsv", ".txt", ".parquet"):
        if name.lower().endswith(ext):
            name = name[: -len(ext)]
    return name or Path(path).name


def validate_import_params(params):
    """Clean the job's parameters; a ValidationError names each bad field."""
    from evalsite.models import Dataset, Task

    errors = {}
    p = {k: (v.strip() if isinstance(v, str) else v) for k, v in params.items()}
    for f, v in p.items():
        problem = importers.unstorable_text(v) if isinstance(v, str) else None
        if problem:
            errors[f] = f"The {f} {problem}."
            p[f] = ""  # checked no further: it would reach the file system and the database
    fmt, path = p.get("format") or "", p.get("path") or ""
    if not fmt:
        errors.setdefault("format", f"Choose a format; known formats: {', '.join(FORMATS)}.")
    elif fmt not in FORMATS:
        errors["format"] = f"Unknown format {fmt!r}; known formats: {', '.join(FORMATS)}."
    if not path:
        errors.setdefault("path", "Give the path of the file to import.")
    elif fmt == "hf":
        # A Hugging Face dataset may also be a save_to_disk folder or a hub id (org/name).
        if not (Path(path).exists() or importers.is_hub_id(path)):
            errors["path"] = f"File or folder not found (nor a hub id like org/name): {path}"
    elif not Path(path).is_file():
        errors["path"] = f"File not found: {path}"
    column_map = p.get("column_map") or {}
    if column_map:
        if fmt and fmt != "hf":
            errors["column_map"] = f"A column mapping is for the hf format, not {fmt!r}."
        else:
            try:
                column_map = importers.parse_column_map(column_map)
            except ImportFormatError as e:
                errors["column_map"] = f"{e}."
    p["column_map"] = column_map
    task = p.get("task") or (importers.default_task_for(fmt, path) if fmt in FORMATS else None)
    known_tasks = list(Task.objects.values_list("slug", flat=True))
    if fmt in FORMATS and not task:
        errors["task"] = (f"Format {fmt!r} does not say which task its data is for: choose one of "
                          f"{', '.join(known_tasks)}.")
    elif task and task not in known_tasks:
        errors["task"] = f"Unknown task {task!r}; known tasks: {', '.join(known_tasks)}."
    p["name"] = p.get("name") or (dataset_name_from_path(path) if path else "")
    p["split"] = p.get("split") or "train"
    for f, limit in (("name", 200), ("split", 50), ("source", 500), ("licence", 100)):
        if len(p.get(f) or "") > limit:
            errors[f] = f"At most {limit} characters."
    if not errors and task:
        existing = Dataset.objects.filter(name=p["name"], split=p["split"]).select_related("task").first()
        if existing and existing.task.slug != task:
            errors["task"] = (f"Dataset {existing} already exists with task {existing.task.slug!r}; "
                              f"import into it with that task, or choose another name or split.")
    if errors:
        raise ValidationError(errors)
    p["task"] = task
    for f in ("source", "licence", "description"):
        p[f] = p.get(f) or ""
    return p


def write_dataset(parsed, *, name, split, task, source="", licence="", description="", job=None,
                  check_cancelled=lambda: None, batch_size=BATCH):
    """Write a parsed file in one transaction; return counts of created and existing rows.

    Nothing here touches the Job row: the heartbeat thread keeps updating it from its own
    connection, and a lock held by this (possibly long) transaction would stall it.
    """
    from evalsite.models import Comparison, Dataset, Prompt, Task, pair_key

    job_id = getattr(job, "pk", None)
    counts = {"prompts_created": 0, "prompts_existing": 0, "comparisons_created": 0,
              "comparisons_existing": 0, "comparisons_label_differs": 0}
    with transaction.atomic():
        task_obj = Task.objects.get(slug=task)
        dataset, created = Dataset.objects.get_or_create(
            name=name, split=split,
            defaults=dict(task=task_obj, source=source, licence=licence, description=description,
                          import_job_id=job_id),
        )
        counts["dataset_created"] = created
        if not created:
            if dataset.task_id != task_obj.pk:
                raise JobError(f"Dataset {dataset} already exists with task {dataset.task.slug!r}, not {task!r}.")
            # Fill in descriptive fields left blank before; never overwrite what someone wrote.
            given = {"source": source, "licence": licence, "description": description}
            changed = [f for f, v in given.items() if v and not getattr(dataset, f)]
            for f in changed:
                setattr(dataset, f, given[f])
            if changed:
                dataset.save(update_fields=changed)

        existing = {}
        if not created:
            for ext, pk, context in Prompt.objects.filter(dataset=dataset).values_list(
                    "external_id", "id", "context").iterator(chunk_size=2000):
                existing[ext] = (pk, context)
        new_prompts = []
        for rec in parsed.prompts:
            have = existing.get(rec.external_id)
            if have is None:
                new_prompts.append(Prompt(dataset=dataset, external_id=rec.external_id, context=rec.context,
                                          reference=rec.reference, metadata=rec.metadata))
            elif have[1] != rec.context:
                raise JobError(
                    f"{Path(parsed.path).name}: prompt {rec.external_id!r} already exists in dataset {dataset} "
                    "with a different context; import the changed file under another dataset name or split."
                )
        counts["prompts_existing"] = len(parsed.prompts) - len(new_prompts)
        for i in range(0, len(new_prompts), batch_size):
            check_cancelled()
            Prompt.objects.bulk_create(new_prompts[i:i + batch_size], ignore_conflicts=True)
        counts["prompts_created"] = len(new_prompts)

        ids = dict(Prompt.objects.filter(dataset=dataset).values_list("external_id", "id"))
        rows = []
        for rec in parsed.pairs:
            prompt_id = ids[rec.prompt_external_id]
            rows.append(Comparison(
                prompt_id=prompt_id, response_a=rec.response_a, response_b=rec.response_b,
                key=pair_key(prompt_id, rec.response_a, rec.response_b),
                human_preference=rec.human_preference,
                human_source=Comparison.Source.DATASET if rec.human_preference else Comparison.Source.NONE,
                judge_preference=rec.judge_preference, judge_name=rec.judge_name,
                metadata=rec.metadata, job_id=job_id,
            ))
        for i in range(0, len(rows), batch_size):
            check_cancelled()
            chunk = rows[i:i + batch_size]
            found = {k: (h, j) for k, h, j in Comparison.objects.filter(key__in=[c.key for c in chunk])
                     .values_list("key", "human_preference", "judge_preference")}
            new = [c for c in chunk if c.key not in found]
            counts["comparisons_label_differs"] += sum(
                1 for c in chunk if c.key in found and found[c.key] != (c.human_preference, c.judge_preference)
            )
            Comparison.objects.bulk_create(new, ignore_conflicts=True)
            counts["comparisons_created"] += len(new)
            counts["comparisons_existing"] += len(chunk) - len(new)
        check_cancelled()
    counts["dataset_id"] = dataset.pk
    counts["dataset"] = str(dataset)
    return counts


def _summary(counts):
    return ", ".join(f"{k}={v}" for k, v in counts.items())


@job_kind(KIND, label="Dataset import", validator=validate_import_params)
def import_dataset_job(ctx):
    """Import a dataset file (see evalsite.importers for the formats) in one transaction."""
    p = ctx.params
    ctx.log(f"reading {p['path']} as {p['format']} into {p['name']} [{p['split']}] (task {p['task']})")
    ctx.progress(0.0, "reading file", force=True)
    logged = [0]

    def reading(fraction, message):
        ctx.progress(0.6 * fraction, message)
        if fraction >= (logged[0] + 1) / 10:  # the log gets a line per tenth, not per batch
            logged[0] = int(fraction * 10)
            ctx.log(message)

    try:
        parsed = importers.parse_file(p["path"], p["format"], progress=reading,
                                      max_bytes=settings.DATASET_DECOMPRESSED_MAX_BYTES,
                                      column_map=p.get("column_map"), split=p["split"])
    except ImportFormatError as e:
        raise JobError(str(e))
    skipped = {k: v for k, v in parsed.counts.items() if k != "rows_read"}
    ctx.log(f"read {parsed.counts['rows_read']:,} rows: {len(parsed.prompts):,} prompts, "
            f"{len(parsed.pairs):,} comparisons" + (f" ({_summary(skipped)})" if skipped else ""))
    ctx.progress(0.6, f"writing {len(parsed.prompts):,} prompts and {len(parsed.pairs):,} comparisons "
                      "in one transaction", force=True)
    counts = write_dataset(
        parsed, name=p["name"], split=p["split"], task=p["task"], source=p["source"], licence=p["licence"],
        description=p["description"] or f"Imported from {Path(p['path']).name} ({FORMATS[p['format']]}).",
        job=ctx.job, check_cancelled=ctx.check_cancelled,
    )
    ctx.log(f"{counts['dataset']}: prompts created {counts['prompts_created']:,}, existing "
            f"{counts['prompts_existing']:,}; comparisons created {counts['comparisons_created']:,}, existing "
            f"{counts['comparisons_existing']:,}")
    if counts["comparisons_label_differs"]:
        ctx.log(f"warning: {counts['comparisons_label_differs']} comparisons already existed with a different "
                "label; the stored labels were kept")
    return {"format": p["format"], "task": p["task"], **parsed.counts, **counts}


class _EchoJobLog(logging.Handler):
    """Copies one job's log lines (evalsite.jobs logs each ctx.log) to a command's output."""

    def __init__(self, job_id, write):
        super().__init__(logging.INFO)
        self.prefix, self.write = f"job {job_id}: ", write

    def emit(self, record):
        text = record.getMessage()
        if text.startswith(self.prefix):
            self.write(text[len(self.prefix):])


def run_import(params, *, background=False, user=None, write=print):
    """Submit an import job and, unless ``background``, run it here, echoing its log.

    Returns the Job; raises ValidationError for bad parameters. The caller checks job.status.
    """
    from evalsite.jobs import runtime as jobs

    job = submit_import(params, user=user, send=background)
    if background:
        return job
    logger = logging.getLogger("evalsite.jobs")
    handler = _EchoJobLog(job.pk, write)
    old_level, old_propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # the lines go to the command's output instead of the root console handler
    try:
        jobs.execute(job.pk)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        logger.propagate = old_propagate
    job.refresh_from_db()
    return job


# --- the admin upload form ----------------------------------------------------------------------


class DatasetImportForm(forms.Form):
    file = forms.FileField(help_text="CSV or JSON lines, optionally gzip-compressed.",
                           error_messages={"empty": "The uploaded file is empty."})
    format = forms.ChoiceField(
        choices=[("", "---------")] + [(k, f"{k}: {v}") for k, v in FORMATS.items()],
        error_messages={"invalid_choice": "Unknown format %(value)s; known formats: " + ", ".join(FORMATS) + "."},
    )
    name = forms.CharField(max_length=200, required=False, help_text="Default: the file's name.")
    split = forms.CharField(max_length=50, initial="train")
    task = forms.ChoiceField(required=False, help_text="Default: the format's task (hh: harmless, tldr and "
                                                       "openai-comparisons: summarization); required for the "
                                                       "generic formats.")
    source = forms.CharField(max_length=500, required=False, help_text="Where the data came from (URL, paper).")
    licence = forms.CharField(max_length=100, required=False)
    description = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), required=False)

    def __init__(self, *args, **kwargs):
        from evalsite.models import Task

        super().__init__(*args, **kwargs)
        self.fields["task"].choices = [("", "the format's default")] + [(t.slug, t.name) for t in Task.objects.all()]

    def clean_file(self):
        f = self.cleaned_data["file"]
        limit = settings.DATASET_UPLOAD_MAX_BYTES
        if f.size == 0:
            raise ValidationError("The uploaded file is empty.")
        if f.size > limit:
            raise ValidationError(
                f"The file {f.name} is too large ({f.size / 2**20:,.1f} MB; the limit is {limit / 2**20:,.1f} MB). "
                "Import it with `manage.py import_dataset` on the server instead."
            )
        return f

    def clean(self):
        data = super().clean()
        fmt, task = data.get("format"), data.get("task")
        if fmt and not task and not importers.default_task_for(fmt, data["file"].name if data.get("file") else ""):
            self.add_error("task", f"Format {fmt!r} does not say which task its data is for: choose one.")
        return data


def save_upload(f):
    """Keep the uploaded file under UPLOADS_DIR (the job reads it; a resumed job reads it again)."""
    folder = Path(settings.UPLOADS_DIR) / f"{timezone.now():%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:8]}"
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / get_valid_filename(Path(f.name).name or "upload")
    with open(dest, "wb") as out:
        for chunk in f.chunks():
            out.write(chunk)
    return dest


def import_view(request):
    """Admin page: upload a file, queue an import job, go to the job's page."""
    from evalsite.models import Dataset

    form = DatasetImportForm(request.POST or None, request.FILES or None)
    if request.method == "POST" and form.is_valid():
        d = form.cleaned_data
        dest = save_upload(d["file"])
        params = {"path": str(dest), "format": d["format"],
                  "name": d["name"] or dataset_name_from_path(d["file"].name),
                  **{k: d[k] for k in ("split", "task", "source", "licence", "description")}}
        try:
            job = submit_import(params, user=request.user)
        except ValidationError as e:
            dest.unlink(missing_ok=True)
            dest.parent.rmdir()
            for field, errs in e.message_dict.items():
                form.add_error(field if field in form.fields else None, errs)
        else:
            messages.success(request, f"Import job #{job.pk} queued for {dest.name}; this page follows its progress.")
            return HttpResponseRedirect(reverse("admin:jobs_job_change", args=[job.pk]))
    context = {
        **admin.site.each_context(request),
        "title": "Import a dataset file",
        "opts": Dataset._meta,
        "form": form,
        "formats": [(k, FORMATS[k], importers.FORMAT_HELP[k]) for k in FORMATS],
        "max_mb": settings.DATASET_UPLOAD_MAX_BYTES / 2**20,
    }
    return render(request, "admin/evalsite/dataset/import.html", context)


def submit_import(params, *, user=None, send=True):
    """Queue an import job (sent to the workers when the transaction commits)."""
    name = f"Import {Path(params.get('path') or '?').name} ({params.get('format')})"
    return jobs.submit(KIND, params, name=name, user=user, send=send)
