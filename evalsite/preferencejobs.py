"""The ``export_preferences`` job kind, its admin form and actions: a thin layer over evalsite.preferences.

What goes out is chosen by datasets, evaluation rounds, a labeler config or a labeling run:

* datasets: their comparisons (AI labels, and the human labels the datasets came with), plus the
  rankings of any rounds given, on the datasets' prompts;
* rounds only: the annotators' rankings, and AI labels of comparisons between the rounds' samples;
* a labeler config or labeling run only: the comparisons it labeled.

A labeler config or run also limits the AI labels to its own; each comparison gives its newest
label. The export is written atomically (see ``preferences.write_export``): a failed or
cancelled job leaves no file behind.
"""
import os
import re
from pathlib import Path

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import BadRequest, PermissionDenied, ValidationError
from django.db.models import Q
from django.http import HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone

from evalsite import preferences as P
from evalsite.jobs.runtime import JobError, id_list, job_kind
from evalsite.jobs import runtime as jobs
from labeling.kinds import LABEL

KIND = "export_preferences"
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
# The token is sent to the Hugging Face Hub: only a variable named like a token may be read for it,
# so that no export can send SECRET_KEY or a database password there.
_TOKEN_VAR = re.compile(r"[A-Z][A-Z0-9_]*_TOKEN")
DEFAULT_TOKEN_VAR = "HF_TOKEN"


# --- parameters -------------------------------------------------------------------------------


def _ids(value, name, errors):
    return sorted(set(id_list(value, name, errors)))


def _datasets_by_name(specs, errors):
    """'NAME' (every split) or 'NAME:SPLIT' -> dataset ids."""
    from evalsite.models import Dataset

    ids = []
    for spec in specs:
        spec = str(spec).strip()
        found = list(Dataset.objects.filter(name=spec).values_list("pk", flat=True))
        if not found and ":" in spec:
            name, split = spec.rsplit(":", 1)
            found = list(Dataset.objects.filter(name=name, split=split).values_list("pk", flat=True))
        if not found:
            known = ", ".join(str(d) for d in Dataset.objects.all()[:20]) or "none"
            errors["datasets"] = f"No dataset {spec!r} (write NAME or NAME:SPLIT; datasets: {known})."
        ids += found
    return ids


def validate_export_params(params):
    """Clean an export's parameters; a ValidationError names each bad one."""
    from evalsite.humaneval.models import EvalRound
    from evalsite.models import Dataset
    from evalsite.jobs.models import Job
    from evalsite.jobs.models import Job
    from labeling.models import LabelerConfig

    errors = {}
    p = {k: (v.strip() if isinstance(v, str) else v) for k, v in params.items()}
    dataset_ids = _ids(p.get("dataset_ids"), "dataset_ids", errors) + _datasets_by_name(p.pop("datasets", None) or [],
                                                                                     errors)
    p["dataset_ids"] = sorted(set(dataset_ids))
    missing = set(p["dataset_ids"]) - set(Dataset.objects.filter(pk__in=p["dataset_ids"]).values_list("pk", flat=True))
    if missing:
        errors["dataset_ids"] = f"No dataset with id {', '.join(map(str, sorted(missing)))}."
    p["round_ids"] = _ids(p.get("round_ids"), "round_ids", errors)
    missing = set(p["round_ids"]) - set(EvalRound.objects.filter(pk__in=p["round_ids"]).values_list("pk", flat=True))
    if missing:
        errors["round_ids"] = f"No evaluation round with id {', '.join(map(str, sorted(missing)))}."

    labeler = p.pop("labeler", None)
    config_id = _ids(p.get("config_id"), "config_id", errors)
    p["config_id"] = config_id[0] if config_id else None
    if labeler:
        config = LabelerConfig.objects.filter(name=labeler).first()
        if config is None:
            known = ", ".join(LabelerConfig.objects.values_list("name", flat=True)[:20]) or "none"
            errors["labeler"] = f"No labeler config named {labeler!r} (configs: {known})."
        else:
            p["config_id"] = config.pk
    elif p["config_id"] and not LabelerConfig.objects.filter(pk=p["config_id"]).exists():
        errors["config_id"] = f"No labeler config with id {p['config_id']}."
    run_id = _ids(p.get("run_id"), "run_id", errors)
    p["run_id"] = run_id[0] if run_id else None
    if p["run_id"] and not Job.objects.filter(pk=p["run_id"], kind=LABEL).exists():
        errors["run_id"] = f"Job #{p['run_id']} is not a labeling run."
    if not (p["dataset_ids"] or p["round_ids"] or p["config_id"] or p["run_id"]) and not errors:
        errors["__all__"] = "Choose what to export: a dataset, an evaluation round, a labeler config or a labeling run."

    p["source"] = p.get("source") or ""
    if p["source"] not in P.SOURCES:
        errors["source"] = f"Choose the source: {', '.join(P.SOURCES)}."
    p["type"] = p.get("type") or "preference"
    if p["type"] not in P.TYPES:
        errors["type"] = f"Unknown type {p['type']!r}; use {' or '.join(P.TYPES)}."
    if p["source"] == "human" and (p["config_id"] or p["run_id"]):
        errors["source"] = ("A labeler config or labeling run chooses AI labels, which the source 'human' leaves "
                            "out; use ai or human-else-ai.")
    if p["type"] == "unpaired":
        if p["source"] != "human":
            errors["type"] = "The unpaired format comes from people's harmless/harmful flags: use --source human."
        elif not p["round_ids"]:
            errors["type"] = "The unpaired format comes from the harmless/harmful flags of evaluation rounds: " \
                             "choose a round."
    for flag in ("drop_ties", "drop_inconsistent", "overwrite", "private"):
        p[flag] = bool(p.get(flag))
    try:
        p["min_confidence"] = float(p.get("min_confidence") or 0.0)
    except (TypeError, ValueError):
        p["min_confidence"] = None
    if p["min_confidence"] is None or not 0.0 <= p["min_confidence"] <= 0.5:  # NaN fails both comparisons
        errors["min_confidence"] = "The minimum confidence |p - 0.5| must be a number from 0 to 0.5."

    path = p.get("path") or ""
    if not path:
        errors["path"] = "Give the destination: a .parquet or .jsonl file, or a folder for save_to_disk."
    elif not Path(path).is_absolute():
        errors["path"] = f"The destination must be an absolute path, not {path!r}."
    else:
        try:
            problem = P.check_destination(path, p["overwrite"])
        except P.ExportError as e:
            problem = str(e)
        if problem:
            errors["path"] = f"{problem}."
    p["push_to_hub"] = p.get("push_to_hub") or ""
    p["token_env"] = p.get("token_env") or DEFAULT_TOKEN_VAR
    if p["push_to_hub"] and not _REPO_ID.fullmatch(p["push_to_hub"]):
        errors["push_to_hub"] = f"{p['push_to_hub']!r} is not a hub repository id (owner/name)."
    if not _TOKEN_VAR.fullmatch(p["token_env"]):
        errors["token_env"] = (f"{p['token_env']!r} is not a token variable: the name must end in _TOKEN "
                               "(e.g. HF_TOKEN), so that no other secret is sent to the Hub.")
    if errors:
        raise ValidationError(errors)
    return p


# --- reading the database -----------------------------------------------------------------------


def _scope(p):
    """(comparisons, prompts) the parameters select, as querysets."""
    from evalsite.models import Comparison, Prompt, Sample
    from labeling.models import AILabel

    if p["dataset_ids"]:
        prompts = Prompt.objects.filter(dataset_id__in=p["dataset_ids"])
        comparisons = Comparison.objects.filter(prompt__dataset_id__in=p["dataset_ids"])
    elif p["round_ids"]:
        prompts = Prompt.objects.filter(eval_items__round_id__in=p["round_ids"])
        shown = Sample.objects.filter(eval_items__round_id__in=p["round_ids"]).values("pk")
        comparisons = Comparison.objects.filter(sample_a__in=shown, sample_b__in=shown)
    else:
        comparisons = Comparison.objects.filter(pk__in=_labels(p, AILabel.objects.all()).values("comparison_id"))
        prompts = Prompt.objects.filter(pk__in=comparisons.values("prompt_id"))
    return comparisons, prompts


def _labels(p, labels):
    if p["config_id"]:
        labels = labels.filter(config_id=p["config_id"])
    if p["run_id"]:
        labels = labels.filter(Q(job_id=p["run_id"]) | Q(job__parent_id=p["run_id"]))
    return labels


def _dataset_label(name, split):
    return f"{name} [{split}]"


def _prompt_texts(prompts):
    return {pk: (context, _dataset_label(name, split)) for pk, context, name, split in
            prompts.values_list("pk", "context", "dataset__name", "dataset__split").iterator(chunk_size=2000)}


def ai_pairs(p, comparisons, contexts):
    """The newest AI label of each comparison in scope (by the chosen config or run), as Pairs;
    and the configs that wrote them. ``contexts``: prompt id -> (context, dataset name)."""
    from labeling.models import AILabel, LabelerConfig

    labels = _labels(p, AILabel.objects.filter(comparison__in=comparisons)).order_by(
        "comparison_id", "-created_at", "-id").values_list(
        "comparison_id", "config_id", "p_first", "p_slot1_order1", "p_slot1_order2", "label_mass",
        "comparison__prompt_id", "comparison__response_a", "comparison__response_b")
    rows, last = [], None
    for row in labels.iterator(chunk_size=2000):
        if row[0] != last:
            rows.append(row)
            last = row[0]
    configs = {c.pk: c for c in LabelerConfig.objects.filter(pk__in={r[1] for r in rows})}
    info = {pk: labeler_info(c) for pk, c in configs.items()}
    pairs = []
    for _, config_id, p_first, p1, p2, mass, prompt_id, a, b in rows:
        context, dataset = contexts[prompt_id]
        pairs.append(P.Pair(prompt_key=prompt_id, context=context, response_a=a, response_b=b, p_a=p_first,
                            source="ai", dataset=dataset, p_slot1_order1=p1, p_slot1_order2=p2, label_mass=mass,
                            labeler=configs[config_id].name, labeler_prompt_hash=info[config_id]["prompt_hash"]))
    return pairs, [info[pk] for pk in sorted(info)]


def labeler_info(config):
    """Name, model and prompt (with its hash) of a labeler config, for the rows and the card."""
    try:
        prompt = P.labeler_prompt(config.labeler_settings())
    except ValueError as e:  # a stored config the prompt code no longer accepts
        prompt = f"(the prompt cannot be rebuilt: {e})"
    model = config.model_path if config.backend == config.Backend.LOCAL else \
        f"{config.server_model or 'server model'} at {config.server_url}"
    return {"name": config.name, "model": model, "prompt": prompt, "prompt_hash": P.prompt_hash(prompt)}


DATASET_PREFERENCE_P = {"first": 1.0, "second": 0.0, "tie": 0.5}


def dataset_human_pairs(comparisons, contexts):
    """The human labels comparisons carry (from their dataset, or set by annotators) as Pairs."""
    rows = comparisons.exclude(human_preference="").values_list(
        "prompt_id", "response_a", "response_b", "human_preference").iterator(chunk_size=2000)
    return [P.Pair(prompt_key=prompt_id, context=contexts[prompt_id][0], response_a=a, response_b=b,
                   p_a=DATASET_PREFERENCE_P[pref], source="human", dataset=contexts[prompt_id][1])
            for prompt_id, a, b, pref in rows]


def _rankings(p, prompts):
    """The rounds' ranking frame (on the prompts in scope), sample texts, prompt contexts, round names."""
    from evalsite.humaneval.data import ranking_frame
    from evalsite.humaneval.models import EvalRound, RankedResponse
    from evalsite.models import Prompt, Sample

    frame = ranking_frame(p["round_ids"])
    if p["dataset_ids"] and len(frame):
        in_scope = set(prompts.values_list("pk", flat=True))
        frame = frame[frame["prompt_id"].isin(in_scope)]
    shown = RankedResponse.objects.filter(ranking__round_id__in=p["round_ids"]).values("sample_id")
    texts = dict(Sample.objects.filter(pk__in=shown).values_list("pk", "text"))
    contexts = _prompt_texts(Prompt.objects.filter(eval_items__round_id__in=p["round_ids"]).distinct())
    rounds = dict(EvalRound.objects.filter(pk__in=p["round_ids"]).values_list("pk", "name"))
    return frame, texts, contexts, rounds


# --- the export -------------------------------------------------------------------------------


def _token(p):
    token = os.environ.get(p["token_env"], "")
    if p["push_to_hub"] and not token:
        raise JobError(f"Pushing to the Hub needs a token: set the environment variable {p['token_env']} "
                       "where this export runs (the worker's environment for a background job).")
    return token


def _task(p):
    """The one task of everything selected; mixing tasks would mix prompt formats in one file."""
    from evalsite.humaneval.models import EvalRound
    from evalsite.models import Dataset, Task
    from evalsite.jobs.models import Job
    from evalsite.jobs.models import Job
    from labeling.models import LabelerConfig

    tasks = set(Dataset.objects.filter(pk__in=p["dataset_ids"]).values_list("task__slug", flat=True))
    tasks |= set(EvalRound.objects.filter(pk__in=p["round_ids"]).values_list("task__slug", flat=True))
    config_ids = [p["config_id"]] if p["config_id"] else []
    if p["run_id"]:
        config_ids.append(Job.objects.get(pk=p["run_id"]).params.get("config_id"))
    tasks |= set(LabelerConfig.objects.filter(pk__in=config_ids).values_list("task__slug", flat=True))
    if len(tasks) != 1:
        raise JobError(f"The selection spans the tasks {', '.join(sorted(tasks))}; export one task at a time "
                       "(their prompts have different forms).")
    return Task.objects.get(slug=tasks.pop()).text()


def run_export(params, progress=None, made_by=""):
    """Export what ``params`` (cleaned by ``validate_export_params``) select; returns the result.

    ``progress(fraction, message)`` is called as it goes. Raises JobError with a message for
    the user when there is nothing to write, or the destination cannot be written.
    """
    from evalsite.humaneval.models import EvalRound
    from evalsite.models import Dataset, Prompt

    p = params
    report = progress or (lambda fraction, message=None: None)
    token = _token(p)
    task = _task(p)
    rules = P.Rules(source=p["source"], drop_ties=p["drop_ties"], drop_inconsistent=p["drop_inconsistent"],
                    min_confidence=p["min_confidence"])
    comparisons, prompts = _scope(p)
    report(0.05, "reading labels")
    human, ai, labelers, judgments = [], [], [], []
    counts = {}
    if p["round_ids"]:
        frame, texts, contexts, rounds = _rankings(p, prompts)
        report(0.25, f"expanding {frame['ranking_id'].nunique() if len(frame) else 0:,} rankings")
        if p["type"] == "unpaired":
            judgments = P.judgments_from_rankings(frame, texts, contexts, rounds)
        else:
            human = P.pairs_from_rankings(frame, texts, contexts, rounds)
            counts["pairs_from_rankings"] = len(human)
    if p["type"] == "preference":
        # Both kinds whatever the source: the card gives the labelers' alignment with the human labels.
        contexts = _prompt_texts(Prompt.objects.filter(pk__in=comparisons.values("prompt_id")))
        from_datasets = dataset_human_pairs(comparisons, contexts)
        counts["human_labels_from_datasets"] = len(from_datasets)
        human += from_datasets
        ai, labelers = ai_pairs(p, comparisons, contexts)
        counts["ai_labels"] = len(ai)
    report(0.45, "applying the rules")
    if p["type"] == "preference":
        alignment = P.alignment_with_humans(ai, human) if ai and human else []
        selected, selected_counts = P.select_source(human, ai, p["source"])
        if p["source"] == "human":
            labelers = []
        elif p["source"] == "human-else-ai":
            used = {x.labeler for x in selected if x.source == "ai"}
            labelers = [lab for lab in labelers if lab["name"] in used]
        counts.update(selected_counts)
        kept, removed = P.apply_rules(selected, rules)
    else:
        alignment = []
        split = [j for j in judgments if j.is_tie]
        counts["harmless_judgments"] = len(judgments)
        counts["evenly_split_left_out"] = len(split)
        kept, removed = P.apply_rules([j for j in judgments if not j.is_tie], rules)
    counts.update({f"removed_{k}": v for k, v in removed.items()})
    counts["rows"] = len(kept)
    if not kept:
        found = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in counts.items() if k != "rows") or "nothing"
        raise JobError(f"Nothing to export: the selection and rules leave no rows ({found}).")
    report(0.5, f"building {len(kept):,} rows")
    rows = P.preference_rows(kept, task) if p["type"] == "preference" else P.unpaired_rows(kept, task)
    dataset = P.build_dataset(rows, p["type"], P.is_conversational(task))
    datasets = Dataset.objects.filter(pk__in=p["dataset_ids"]).select_related("task")
    rounds = EvalRound.objects.filter(pk__in=p["round_ids"])
    card = P.dataset_card(P.CardInfo(
        title=f"{Path(p['path']).name}: {P.TYPES[p['type']].split(':')[0]} data", kind=p["type"], task=task,
        rules=rules, rows=len(rows), data_file=Path(p["path"]).name, made_by=made_by,
        datasets=[{"name": d.name, "split": d.split, "task": d.task.slug, "source": d.source, "licence": d.licence}
                  for d in datasets],
        rounds=[{"id": r.pk, "name": r.name, "question": r.get_question_display()} for r in rounds],
        labelers=labelers, counts=counts, alignment=alignment,
    ), dataset.column_names)
    report(0.6, f"writing {len(rows):,} rows to {p['path']}")
    try:
        data_path, card_path = P.write_export(dataset, p["path"], card, overwrite=p["overwrite"])
    except P.ExportError as e:
        raise JobError(str(e)) from None
    except OSError as e:
        raise JobError(f"Could not write {p['path']}: {e}") from None
    result = {"path": str(data_path), "card": str(card_path), "format": P.output_format(data_path),
              "type": p["type"], "task": task.slug, **counts}
    if p["push_to_hub"]:
        report(0.9, f"pushing to the Hub: {p['push_to_hub']}")
        try:
            P.push_to_hub(dataset, p["push_to_hub"], token=token, card=card, private=p["private"])
        except Exception as e:  # the Hub client raises many kinds (network, HTTP, auth); the user needs the message
            raise JobError(f"Wrote {data_path}, but pushing it to {p['push_to_hub']} failed: "
                           f"{type(e).__name__}: {e}") from None
        result["pushed_to"] = p["push_to_hub"]
    report(1.0, f"wrote {len(rows):,} rows to {data_path}")
    return result


@job_kind(KIND, label="Preference export", validator=validate_export_params)
def export_preferences_job(ctx):
    """Write AI labels and human rankings as a TRL preference dataset (see evalsite.preferences)."""
    p = ctx.params
    ctx.log(f"exporting {p['type']} data ({p['source']}) to {p['path']}")

    def progress(fraction, message=None):
        ctx.progress(fraction, message)
        if message:
            ctx.log(message)

    result = run_export(p, progress=progress, made_by=f"job #{ctx.job_id}")
    ctx.log(", ".join(f"{k.replace('_', ' ')} {v}" for k, v in result.items() if isinstance(v, int)))
    return result


def submit_export(params, *, user=None, send=True):
    """Queue an export job (sent to the workers when the transaction commits)."""
    name = f"Export {Path(params.get('path') or '?').name} ({params.get('source') or '?'})"
    return jobs.submit(KIND, params, name=name, user=user, send=send)


# --- the admin form and actions -----------------------------------------------------------------

# What an admin action selected, by its name in the export form's query string.
SELECTIONS = ("datasets", "rounds", "config", "run")
FORMAT_CHOICES = [("parquet", "Parquet (.parquet)"), ("jsonl", "JSON lines (.jsonl)"),
                  ("disk", "datasets save_to_disk folder")]
_FILE_NAME = re.compile(r"[\w][\w.-]{0,150}")


class ExportForm(forms.Form):
    source = forms.ChoiceField(choices=list(P.SOURCES.items()), initial="human-else-ai")
    type = forms.ChoiceField(choices=list(P.TYPES.items()), initial="preference")
    labeler = forms.ModelChoiceField(queryset=None, required=False, empty_label="any (each comparison's newest label)",
                                     help_text="Only this config's AI labels.")
    drop_ties = forms.BooleanField(required=False, help_text="Leave out pairs whose label is exactly 0.5.")
    drop_inconsistent = forms.BooleanField(
        required=False, help_text="Leave out AI labels that picked the same slot in both orders.")
    min_confidence = forms.FloatField(initial=0.0, min_value=0.0, max_value=0.5,
                                      help_text="Leave out labels with |p - 0.5| below this (0 to 0.5).")
    name = forms.CharField(max_length=150, help_text="File or folder name in the exports folder, without a suffix.")
    format = forms.ChoiceField(choices=FORMAT_CHOICES, initial="parquet")
    overwrite = forms.BooleanField(required=False, help_text="Replace an earlier export of this name.")
    push_to_hub = forms.CharField(max_length=200, required=False,
                                  help_text=f"owner/name: also push it to the Hugging Face Hub (needs "
                                            f"{DEFAULT_TOKEN_VAR} in the worker's environment).")

    def __init__(self, *args, **kwargs):
        from labeling.models import LabelerConfig

        super().__init__(*args, **kwargs)
        self.fields["labeler"].queryset = LabelerConfig.objects.all()

    def clean_name(self):
        name = self.cleaned_data["name"]
        if not _FILE_NAME.fullmatch(name) or ".." in name:
            raise ValidationError("Use letters, digits, '.', '-' and '_' only (no folders).")
        return name

    def destination(self):
        d = self.cleaned_data
        suffix = dict(P.FILE_FORMATS).get(d["format"], "")
        return Path(settings.EXPORTS_DIR) / f"{d['name']}{suffix}"


def _selection(request):
    """The ids the admin action put in the query string, as export parameters."""
    errors = {}
    ids = {key: _ids(request.GET.get(key), key, errors) for key in SELECTIONS}
    if errors:
        raise BadRequest(" ".join(errors.values()))
    return {"dataset_ids": ids["datasets"], "round_ids": ids["rounds"],
            "config_id": ids["config"][0] if ids["config"] else None, "run_id": ids["run"][0] if ids["run"] else None}


def has_export_permission(user):
    """An export reads comparisons, rankings and AI labels and runs as a job."""
    return user.has_perms(["jobs.add_job", "evalsite.view_comparison", "humaneval.view_ranking",
                           "labeling.view_ailabel"])


def export_view(request):
    """Admin page: choose the source, rules and destination of an export; queue its job."""
    from evalsite.humaneval.models import EvalRound
    from evalsite.models import Dataset
    from evalsite.jobs.models import Job
    from evalsite.jobs.models import Job
    from labeling.models import LabelerConfig

    if not has_export_permission(request.user):
        raise PermissionDenied
    selection = _selection(request)
    chosen = [str(d) for d in Dataset.objects.filter(pk__in=selection["dataset_ids"])]
    chosen += [f"round {r}" for r in EvalRound.objects.filter(pk__in=selection["round_ids"])]
    if selection["config_id"]:
        chosen += [f"labeler config {c}" for c in LabelerConfig.objects.filter(pk=selection["config_id"])]
    if selection["run_id"]:
        chosen += [f"labeling run #{j.pk} {j.name}" for j in Job.objects.filter(pk=selection["run_id"])]
    initial = {"name": f"preferences-{timezone.now():%Y%m%d-%H%M%S}"}
    if selection["config_id"]:
        initial["labeler"] = selection["config_id"]
    form = ExportForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        d = form.cleaned_data
        Path(settings.EXPORTS_DIR).mkdir(parents=True, exist_ok=True)
        params = {**selection, "source": d["source"], "type": d["type"], "drop_ties": d["drop_ties"],
                  "drop_inconsistent": d["drop_inconsistent"], "min_confidence": d["min_confidence"],
                  "path": str(form.destination()), "overwrite": d["overwrite"], "push_to_hub": d["push_to_hub"]}
        if d["labeler"]:
            params["config_id"] = d["labeler"].pk
        try:
            job = submit_export(params, user=request.user)
        except ValidationError as e:
            for field, errs in e.message_dict.items():
                target = {"path": "name", "config_id": "labeler"}.get(field, field)
                form.add_error(target if target in form.fields else None, errs)
        else:
            messages.success(request, f"Export job #{job.pk} queued; its result names the file it writes.")
            return HttpResponseRedirect(reverse("admin:jobs_job_change", args=[job.pk]))
    context = {**admin.site.each_context(request), "title": "Export preference data", "opts": Job._meta,
               "form": form, "chosen": chosen, "exports_dir": settings.EXPORTS_DIR}
    return render(request, "admin/evalsite/export_preferences.html", context)


def export_action(selection):
    """An admin action that opens the export form for the selected objects (``selection``: one of SELECTIONS)."""

    @admin.action(description="Export preference data (TRL format)…")
    def export_preferences(modeladmin, request, queryset):
        ids = list(queryset.values_list("pk", flat=True))
        if selection in ("config", "run") and len(ids) != 1:
            what = "labeler config" if selection == "config" else "labeling run"
            modeladmin.message_user(request, f"Select exactly one {what} to export.", messages.ERROR)
            return None
        if selection == "run" and queryset.exclude(kind=LABEL).exists():
            modeladmin.message_user(request, "Only labeling runs (jobs of kind 'label') export preference data.",
                                    messages.ERROR)
            return None
        query = f"?{selection}={','.join(map(str, ids))}"
        return HttpResponseRedirect(reverse("admin:evalsite_export_preferences") + query)

    return export_preferences
