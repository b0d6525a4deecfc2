"""Report pages for researchers: evaluation rounds, AI labelers, training curves.

The numbers come from ``evalsite.stats`` (via ``tables``); the data from the human-evaluation
and AI-feedback modules' frame functions, imported lazily so that a missing or empty module
shows "no data yet" instead of breaking the page.
"""
import hashlib

import pandas as pd
from django.core.cache import cache
from django.http import Http404, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.urls import reverse

from evalsite import stats
from evalsite.humaneval.models import EvalRound
from evalsite.models import Policy
from evalsite.jobs.models import Job, JobMetric
from evalsite.permissions import permissions_required
from evalsite.reports import tables as T

TRAINING_KINDS = ("sft", "reward_model", "rl")
DEFAULT_BOOT = 1000
MAX_BOOT = 10000


# A report is for whoever may view what it summarizes (anonymous users go to the login page,
# others without the permissions get 403): a round's report shows its rankings and annotators.
ROUND_PERMISSIONS = ("humaneval.view_evalround", "humaneval.view_ranking")
LABELER_PERMISSIONS = ("labeling.view_labelerconfig", "labeling.view_ailabel")
JOB_PERMISSIONS = ("jobs.view_job",)


# --- data sources (imported when a page needs them: they load pandas) -----------------------------

def load_rankings(round_ids=None):
    """Every ranking of the given rounds as a frame (``humaneval.data.ranking_frame``)."""
    from evalsite.humaneval.data import ranking_frame

    return ranking_frame(round_ids)


def load_pair_preferences(round_ids=None):
    from evalsite.humaneval.data import human_pair_preferences

    return human_pair_preferences(round_ids)


def load_labels(config_ids=None):
    """The AI labels of the given configs as a frame (``labeling.data.label_frame``)."""
    from labeling.data import label_frame

    return label_frame(config_ids)


def load_usage(config_ids):
    """Tokens, cost and bounded labels per config (``labeling.data.usage_by_config``)."""
    from labeling.data import usage_by_config

    return usage_by_config([int(i) for i in config_ids])


def live_seconds(request, default=15):
    try:
        return max(2, min(int(request.GET.get("every", default)), 3600))
    except ValueError:
        return default


def n_boot_from(request):
    try:
        n = int(request.GET.get("boot", DEFAULT_BOOT))
    except ValueError:
        n = DEFAULT_BOOT
    return max(0, min(n, MAX_BOOT))


def _fingerprint(frame, *extra):
    """Cheap key of a frame's content: a report is recomputed only when the data changed."""
    h = hashlib.sha256(repr(extra).encode())
    if frame is not None and len(frame):
        h.update(repr((len(frame), list(frame.columns))).encode())
        for col in frame.columns:
            if col == "created_at":
                continue
            series = frame[col]
            if series.dtype == object:
                series = series.astype(str)
            h.update(pd.util.hash_pandas_object(series, index=False).to_numpy().tobytes())
    return h.hexdigest()


def attach_exports(tables, url_name, *args, query=""):
    for t in tables.values():
        t.csv_url = reverse(url_name, args=[*args, t.name, "csv"]) + query
        t.json_url = reverse(url_name, args=[*args, t.name, "json"]) + query
    return tables


def cached_round_report(rankings, n_boot, labels=None):
    key = "reports:round:" + _fingerprint(rankings, n_boot, _fingerprint(labels))
    report = cache.get(key)
    if report is None:
        report = stats.round_report(rankings, labels=labels, n_boot=n_boot, n_boot_bt=min(n_boot, 100))
        cache.set(key, report, 600)
    return report


def _usernames(ids):
    from django.contrib.auth import get_user_model

    ids = [int(i) for i in ids if pd.notna(i)]
    return dict(get_user_model().objects.filter(pk__in=ids).values_list("pk", "username"))


# --- index ------------------------------------------------------------------------------------

@permissions_required(*ROUND_PERMISSIONS, *JOB_PERMISSIONS)
def index(request):
    from django.db.models import Count, Q

    rounds = EvalRound.objects.annotate(
        n_items=Count("items", distinct=True),
        n_rankings=Count("rankings", filter=Q(rankings__withdrawn_at__isnull=True), distinct=True),
    ).order_by("-created_at")[:100]
    jobs = (Job.objects.filter(metrics__isnull=False).distinct().order_by("-created_at")[:100])
    return render(request, "reports/index.html", {"rounds": rounds, "jobs": jobs})


# --- evaluation rounds --------------------------------------------------------------------------

def round_progress(round):
    """Items, how many rankings the round needs (items x overlap) and how many it has."""
    from evalsite.humaneval.models import Assignment, Ranking

    n_items = round.items.count()
    target = n_items * round.overlap
    submitted = Ranking.objects.filter(round=round, withdrawn_at__isnull=True).count()
    skipped = Assignment.objects.filter(round=round, status=Assignment.Status.SKIPPED).count()
    in_progress = Assignment.objects.filter(round=round, status=Assignment.Status.LEASED).count()
    complete = round.items.filter(n_submitted__gte=round.overlap).count()
    return {"n_items": n_items, "overlap": round.overlap, "target": target, "submitted": submitted,
            "skipped": skipped, "in_progress": in_progress, "items_complete": complete,
            "fraction": (submitted / target) if target else 0.0}


def round_context(round, n_boot):
    """Everything the round page shows, or ``None`` tables where there is no data yet."""
    rankings = load_rankings([round.pk])
    names = dict(round.policies.values_list("pk", "name"))
    ctx = {"round": round, "n_boot": n_boot, "progress": round_progress(round), "has_data": False,
           "policy_names": sorted(names.values()), "charts": []}
    if len(rankings) == 0:
        return ctx
    report = cached_round_report(rankings, n_boot)
    report = dict(report)
    users = _usernames(report["annotators"]["annotator_id"])
    report["annotators"] = report["annotators"].assign(
        annotator=[users.get(int(i), f"user {i}") for i in report["annotators"]["annotator_id"]])
    tables = T.round_tables(report)
    judge = ai_judge_for(names, n_boot)
    if judge is not None:
        tables["ai_judge"] = T.ai_judge_table(judge)
    attach_exports(tables, "reports:round_export", round.pk,
                   query=f"?boot={n_boot}" if n_boot != DEFAULT_BOOT else "")
    charts = T.round_charts(report)
    progress = T.progress_chart(rankings)
    if progress:
        charts.append(progress)
    ctx.update(has_data=True, report=report, tables=tables, charts=charts, chart_ids={c["id"] for c in charts},
               heatmap=T.heatmap(report["win_rates"]), n_rankings=int(rankings["ranking_id"].nunique()),
               kendalls_w=report["kendalls_w"], alpha=report["harmless_alpha"],
               pairwise=report["pairwise_agreement"])
    return ctx


def ai_judge_for(policy_names, n_boot):
    """AI-judge win rates between the round's policies, per labeler config (None if no labels)."""
    labels = load_labels()
    if labels is None or len(labels) == 0 or "policy_a_id" not in labels:
        return None
    ids = set(policy_names)
    labels = labels[labels["policy_a_id"].isin(ids) & labels["policy_b_id"].isin(ids)]
    if len(labels) == 0:
        return None
    judge = T.labeler_report(labels, n_boot=n_boot, policy_names=policy_names)["ai_judge"]
    return judge if len(judge) else None


def _export(frame, name, fmt):
    if fmt == "csv":
        resp = HttpResponse(T.to_csv(frame), content_type="text/csv; charset=utf-8")
    elif fmt == "json":
        resp = HttpResponse(T.to_json(frame), content_type="application/json")
    else:
        raise Http404("Export as .csv or .json")
    resp["Content-Disposition"] = f'attachment; filename="{name}.{fmt}"'
    return resp


@permissions_required(*ROUND_PERMISSIONS)
def round_report(request, pk):
    round = get_object_or_404(EvalRound, pk=pk)
    ctx = round_context(round, n_boot_from(request))
    ctx["live"] = request.GET.get("live") == "1"
    ctx["live_seconds"] = live_seconds(request)
    ctx["boot_query"] = f"?boot={ctx['n_boot']}" if ctx["n_boot"] != DEFAULT_BOOT else ""
    return render(request, "reports/round.html", ctx)


@permissions_required(*ROUND_PERMISSIONS)
def round_export(request, pk, table, fmt):
    round = get_object_or_404(EvalRound, pk=pk)
    if table == "progress":
        return _export(T.summary_frame(round_progress(round)), f"round-{pk}-progress", fmt)
    ctx = round_context(round, n_boot_from(request))
    if not ctx["has_data"] or table not in ctx["tables"]:
        raise Http404(f"No table {table!r} for this round (yet).")
    return _export(ctx["tables"][table].frame, f"round-{pk}-{table}", fmt)


# --- labelers ------------------------------------------------------------------------------------

def labeler_context(n_boot):
    labels = load_labels()
    ctx = {"ai_feedback_installed": labels is not None, "has_data": False, "n_boot": n_boot, "charts": []}
    if labels is None or len(labels) == 0:
        return ctx
    pairs = load_pair_preferences()
    key = "reports:labelers:" + _fingerprint(labels, n_boot, _fingerprint(pairs))
    result = cache.get(key)
    if result is None:
        names = dict(Policy.objects.values_list("pk", "name"))
        result = T.labeler_report(labels, pairs, n_boot=n_boot, policy_names=names)
        cache.set(key, result, 600)
    alignment, usage = result["alignment"], load_usage(labels["config_id"].unique())
    alignment = alignment.merge(usage[["config_id", "n_bounded"]], on="config_id", how="left")
    tables = {"alignment": T.alignment_table(alignment), "ai_judge": T.ai_judge_table(result["ai_judge"])}
    if len(usage):
        tables["usage"] = T.usage_table(usage)
    attach_exports(tables, "reports:labelers_export", query=f"?boot={n_boot}" if n_boot != DEFAULT_BOOT else "")
    charts = [c for c in [T.alignment_chart(result["alignment"])] if c]
    judge_heatmaps = []
    for (cid, cname), sub in result["ai_judge"].groupby(["config_id", "config_name"], sort=True):
        judge_heatmaps.append({"config": cname, "heatmap": T.heatmap(sub)})
    ctx.update(has_data=True, tables=tables, charts=charts, judge_heatmaps=judge_heatmaps, n_labels=len(labels),
               n_human_pairs=len(pairs))
    return ctx


@permissions_required(*LABELER_PERMISSIONS)
def labelers(request):
    return render(request, "reports/labelers.html", labeler_context(n_boot_from(request)))


@permissions_required(*LABELER_PERMISSIONS)
def labelers_export(request, table, fmt):
    ctx = labeler_context(n_boot_from(request))
    if not ctx["has_data"] or table not in ctx["tables"]:
        raise Http404(f"No table {table!r} (yet).")
    return _export(ctx["tables"][table].frame, f"labelers-{table}", fmt)


# --- training jobs -----------------------------------------------------------------------------

def _job_ids(request, pk=None):
    ids = [pk] if pk is not None else []
    # ?ids=1,2 (links) or ?ids=1&ids=2 (the compare form's checkboxes)
    ids += [int(i) for value in request.GET.getlist("ids") for i in value.split(",")
            if i.strip().isascii() and i.strip().isdigit() and len(i.strip()) < 19]  # a bigint, not "²"
    return list(dict.fromkeys(ids))[:20]


def _metric_rows(job_ids):
    return list(JobMetric.objects.filter(job_id__in=job_ids).order_by("job_id", "step")
                .values_list("job_id", "step", "values"))


@permissions_required(*JOB_PERMISSIONS)
def jobs(request):
    ids = _job_ids(request)
    if ids:
        return job_curves(request, ids)
    training = Job.objects.filter(metrics__isnull=False).distinct().order_by("-created_at")[:200]
    return render(request, "reports/jobs.html", {"jobs": training, "training_kinds": TRAINING_KINDS})


def job_curves(request, ids):
    found = {j.pk: j for j in Job.objects.filter(pk__in=ids)}
    if not found:
        raise Http404("No such job.")
    job_list = [found[i] for i in ids if i in found]
    labels = {j.pk: f"#{j.pk} {j.name or j.kind}" for j in job_list}
    rows = _metric_rows(list(found))
    return render(request, "reports/job.html", {
        "jobs": job_list, "charts": T.job_curves(rows, labels), "n_points": len(rows),
        "ids": ",".join(str(i) for i in found), "live": any(j.status in ("queued", "running") for j in job_list),
    })


@permissions_required(*JOB_PERMISSIONS)
def job_report(request, pk):
    return job_curves(request, _job_ids(request, pk))


@permissions_required(*JOB_PERMISSIONS)
def job_export(request, pk, fmt):
    ids = _job_ids(request, pk)
    get_object_or_404(Job, pk=pk)
    return _export(T.metrics_frame(_metric_rows(ids)), f"job-{pk}-metrics", fmt)
