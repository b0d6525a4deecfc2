"""Hostile or careless input gets a clear 4xx or form error, never a server error, and writes nothing:
NUL characters anywhere in a request, URL tokens that cannot be valid, removed annotators,
deeply nested or NUL-holding dataset files, gzip bombs, spreadsheet formulas in CSV exports,
out-of-range training parameters and unparsable query parameters.

The annotator queue writes its own SQL for each backend: run this file on PostgreSQL and SQLite.
"""
import csv
import gzip
import io
import json
import uuid

import pandas as pd
import pytest
from django.core.exceptions import ValidationError
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from evalsite.jobs import runtime as jobs
from evalsite.experiments import pipeline
from evalsite.humaneval import queue
from evalsite.humaneval.forms import clean_answer
from evalsite.humaneval.models import ANNOTATORS_GROUP, Assignment, EvalRound, Ranking
from evalsite.humaneval.queue import Refused
from evalsite.importers import ImportFormatError, parse_file
from evalsite.importjobs import run_import
from evalsite.models import Comparison, Dataset, Policy, Prompt, Task
from evalsite.experiments.models import Experiment
from evalsite.jobs.models import Job, JobMetric
from evalsite.experiments.models import Experiment
from evalsite.jobs.models import Job, JobMetric
from evalsite.reports import tables as T
from tests.humaneval_demo import make_annotators, make_round

pytestmark = pytest.mark.django_db

NUL_GUARD = "evalsite.middleware.RefuseNulMiddleware"


@pytest.fixture
def without_nul_guard(settings):
    """The site without its NUL middleware: what each view does on its own."""
    settings.MIDDLEWARE = [m for m in settings.MIDDLEWARE if m != NUL_GUARD]


@pytest.fixture
def annotators():
    return make_annotators(2, prefix="hardening")


def ranks_for(a):
    return {label: i + 1 for i, label in enumerate(a.labels)}


def answer(a, **extra):
    data = {"key": uuid.uuid4().hex, "comment": "", **{f"rank_{label}": str(r) for label, r in ranks_for(a).items()}}
    return {**data, **extra}


def statements(captured):
    """The SQL a block ran, without the savepoints a test's transaction adds around it."""
    return [q["sql"] for q in captured if "SAVEPOINT" not in q["sql"]]


# --- NUL characters and impossible tokens ---------------------------------------------------------

def test_nul_in_a_url_token_is_400_before_any_view_runs(client, annotators):
    client.force_login(annotators[0])
    for url in ["/annotate/i/%00abc/", "/annotate/i/%00abc/skip/"]:
        r = client.get(url) if "skip" not in url else client.post(url, {"reason": "broken"})
        assert r.status_code == 400 and "NUL" in r.content.decode(), url


def test_a_token_that_cannot_exist_is_404_without_asking_the_database(client, annotators, without_nul_guard):
    client.force_login(annotators[0])
    for token in ["%00abc", "abc$def", "a" * 33, "abc%20def"]:
        with CaptureQueriesContext(connection) as q:
            get = client.get(f"/annotate/i/{token}/")
            post = client.post(f"/annotate/i/{token}/", {"key": "k", "rank_A": "1"})
            skip = client.post(f"/annotate/i/{token}/skip/", {"reason": "broken"})
        assert (get.status_code, post.status_code, skip.status_code) == (404, 404, 404), token
        assert not [sql for sql in statements(q.captured_queries) if Assignment._meta.db_table in sql], token


def test_nul_in_a_form_field_or_query_is_400_and_saves_nothing(client, annotators, researcher):
    rnd = make_round(n_prompts=2, overlap=1, name="nul round")
    u = annotators[0]
    a = queue.next_assignment(rnd, u)
    client.force_login(u)
    for data in [answer(a, comment="fine\x00"), answer(a, key="k\x00ey"), {**answer(a), "rank_\x00": "1"}]:
        r = client.post(reverse("humaneval:item", args=[a.token]), data)
        assert r.status_code == 400 and "NUL" in r.content.decode()
    assert client.get(reverse("humaneval:index") + "?x=%00").status_code == 400
    assert Ranking.objects.count() == 0
    client.force_login(researcher)
    for url in ["/admin/evalsite/dataset/?q=%00", "/admin/humaneval/evalround/?q=a%00b", "/admin/auth/user/?q=%00"]:
        assert client.get(url).status_code == 400, url


def test_without_the_middleware_each_field_still_refuses_nul(client, annotators, without_nul_guard):
    rnd = make_round(n_prompts=2, overlap=1, name="nul round")
    u = annotators[0]
    a = queue.next_assignment(rnd, u)
    client.force_login(u)
    r = client.post(reverse("humaneval:item", args=[a.token]), answer(a, comment="fine\x00"))
    assert r.status_code == 400 and "Comment: Null characters are not allowed." in r.content.decode()
    r = client.post(reverse("humaneval:item", args=[a.token]), answer(a, key="k\x00ey"))
    assert r.status_code == 400 and "missing its submission key" in r.content.decode()
    r = client.post(reverse("humaneval:skip", args=[a.token]), {"reason": "other", "detail": "why\x00"})
    assert r.status_code == 400 and "Null characters are not allowed" in r.content.decode()
    assert Ranking.objects.count() == 0
    a.refresh_from_db()
    assert a.status == Assignment.Status.LEASED and a.skip_reason == ""
    # The page's own key and comment still work after all that.
    assert client.post(reverse("humaneval:item", args=[a.token]), answer(a, comment="ok")).status_code == 302
    assert Ranking.objects.get().comment == "ok"


def test_the_queue_and_the_answer_form_refuse_nul_when_called_directly(annotators):
    rnd = make_round(n_prompts=1, overlap=1, name="direct nul")
    a = queue.next_assignment(rnd, annotators[0])
    with pytest.raises(Refused) as e:
        queue.submit(a.token, annotators[0], ranks=ranks_for(a), harmless={}, key="key\x00")
    assert e.value.status == 400
    answer_, errors = clean_answer({"comment": "a\x00b", "rank_A": "1"}, ["A"], asks_rank=True, asks_harmless=False)
    assert errors == ["Comment: Null characters are not allowed."] and answer_.comment == ""
    # A NUL in the browser's user agent is dropped rather than failing the answer.
    done = queue.submit(a.token, annotators[0], ranks=ranks_for(a), harmless={}, key="key", user_agent="UA\x00/1")
    assert Ranking.objects.get(pk=done.ranking.pk).user_agent == "UA/1"


def test_a_session_cookie_holding_nul_is_dropped_not_a_server_error(client, annotators):
    client.force_login(annotators[0])
    client.cookies["sessionid"] = "abcdefgh\x00ijklmnop"
    r = client.get(reverse("humaneval:index"))
    assert r.status_code == 302 and "/login/" in r["Location"]


# --- removed annotators -------------------------------------------------------------------------

def test_an_annotator_removed_from_a_round_cannot_open_or_submit_their_item(client, annotators):
    kept, removed = annotators
    rnd = make_round(n_prompts=1, overlap=1, name="membership round")
    rnd.annotators.set([kept, removed])
    a = queue.next_assignment(rnd, removed)
    assert queue.next_assignment(rnd, kept) is None  # the one slot is leased
    rnd.annotators.set([kept])

    client.force_login(removed)
    page = client.get(reverse("humaneval:item", args=[a.token]))
    assert page.status_code == 403 and "no longer annotate this round" in page.content.decode()
    a.refresh_from_db()
    assert a.expires_at <= timezone.now()  # the lease ended: the item is back in the pool
    post = client.post(reverse("humaneval:item", args=[a.token]), answer(a))
    assert post.status_code == 403 and "Nothing was saved" in post.content.decode()
    skip = client.post(reverse("humaneval:skip", args=[a.token]), {"reason": "broken"})
    assert skip.status_code == 403
    with pytest.raises(Refused) as e:
        queue.submit(a.token, removed, ranks=ranks_for(a), harmless={}, key="direct")
    assert e.value.status == 403
    assert Ranking.objects.count() == 0
    a.refresh_from_db()
    assert a.status == Assignment.Status.LEASED

    b = queue.next_assignment(rnd, kept)
    assert b is not None and b.item_id == a.item_id
    queue.submit(b.token, kept, ranks=ranks_for(b), harmless={}, key="kept")
    assert list(Ranking.objects.values_list("annotator_id", flat=True)) == [kept.pk]


def test_an_annotator_taken_out_of_the_annotators_group_cannot_submit_their_lease(client, annotators):
    gone, other = annotators
    rnd = make_round(n_prompts=1, overlap=1, name="group round")  # names no one: the group decides
    a = queue.next_assignment(rnd, gone)
    gone.groups.remove(gone.groups.get(name=ANNOTATORS_GROUP))
    client.force_login(gone)
    r = client.post(reverse("humaneval:item", args=[a.token]), answer(a))
    assert r.status_code == 403 and "no longer annotate this round" in r.content.decode()
    assert Ranking.objects.count() == 0
    assert queue.next_assignment(rnd, other).item_id == a.item_id
    assert client.get(reverse("humaneval:next", args=[rnd.pk])).status_code == 403


def test_the_membership_check_adds_no_statement_to_the_item_page_or_submit(annotators):
    u = annotators[0]
    rnd = make_round(n_prompts=2, overlap=1, name="statement round")
    a = queue.next_assignment(rnd, u)
    with CaptureQueriesContext(connection) as q:
        got = queue.get_assignment(a.token, u)
    assert len(statements(q.captured_queries)) == 1
    assert got.round.task.slug == "harmless" and got.item.prompt.context  # what the page reads, in that statement
    with CaptureQueriesContext(connection) as q:
        queue.submit(a.token, u, ranks=ranks_for(a), harmless={}, key="once")
    sql = statements(q.captured_queries)
    # PostgreSQL: read, then one data-modifying statement; SQLite: read, then its four writes.
    assert len(sql) == (2 if connection.vendor == "postgresql" else 5), sql
    assert EvalRound.annotators.through._meta.db_table in sql[0]


# --- dataset files -----------------------------------------------------------------------------------

def db_counts():
    return Dataset.objects.count(), Prompt.objects.count(), Comparison.objects.count()


def import_file(path, fmt, **params):
    return run_import({"path": str(path), "format": fmt, "task": "helpful", **params}, write=lambda line: None)


def nested(depth):
    value = "bottom"
    for _ in range(depth):
        value = [value]
    return value


BAD_JSON_LINES = [
    # (second line of a prompts-jsonl file, every part the message must name)
    (json.dumps({"context": "q", "extra": nested(150)}), ["line 2", "field 'extra[0][0]", "nested too deeply"]),
    ('{"context": "q", "extra": ' + "[" * 100000 + "]" * 100000 + "}", ["line 2", "nested too deeply"]),
    (json.dumps({"context": "hel\x00lo"}), ["line 2", "field 'context'", "NUL character"]),
    (json.dumps({"context": "q", "notes": {"who": ["a", "b\x00"]}}), ["line 2", "field 'notes.who[1]'", "NUL"]),
    (json.dumps({"context": "q", "k\x00ey": 1}), ["line 2", "field 'k?ey'", "NUL", "field's name"]),
    ('{"context": "lone \\ud800 surrogate"}', ["line 2", "field 'context'", "lone surrogate (\\ud800)"]),
]


@pytest.mark.parametrize("line,parts", BAD_JSON_LINES, ids=["deep", "deeper-than-python", "nul", "nul-nested",
                                                            "nul-key", "surrogate"])
def test_json_lines_too_deep_or_with_unstorable_text_name_file_line_and_field(tmp_path, line, parts):
    f = tmp_path / "bad.jsonl"
    f.write_text(json.dumps({"context": "fine"}) + "\n" + line + "\n")
    with pytest.raises(ImportFormatError) as e:
        parse_file(f, "prompts-jsonl")
    for part in ["bad.jsonl", *parts]:
        assert part in str(e.value)
    job = import_file(f, "prompts-jsonl")
    assert job.status == "failed" and str(e.value) in job.error and "Traceback" not in job.error
    assert db_counts() == (0, 0, 0)


def test_nul_in_a_csv_names_its_row_line_and_column_and_nothing_is_written(tmp_path):
    f = tmp_path / "pairs.csv"
    f.write_text('context,response_a,response_b\nfine,a,b\n"two\nlines",a,"b\x00"\n')
    with pytest.raises(ImportFormatError) as e:
        parse_file(f, "pairs-csv")
    assert str(e.value).startswith("pairs.csv, line 3, row 2, field 'response_b': contains a NUL character")
    job = import_file(f, "pairs-csv")
    assert job.status == "failed" and job.error.startswith("pairs.csv, line 3, row 2, field 'response_b'")
    assert db_counts() == (0, 0, 0)
    f.write_text('context,"no\x00te"\nfine,x\n')
    with pytest.raises(ImportFormatError, match=r"line 1, field 'no\?te': contains a NUL character"):
        parse_file(f, "prompts-csv")


def test_nul_in_an_openai_comparison_names_the_nested_field(tmp_path):
    f = tmp_path / "c.jsonl"
    f.write_text(json.dumps({"info": {"id": "1", "post": "p\x00"}, "summaries": [{"text": "a"}, {"text": "b"}],
                             "choice": 0}) + "\n")
    with pytest.raises(ImportFormatError, match=r"c.jsonl, line 1, field 'info.post': contains a NUL"):
        parse_file(f, "openai-comparisons")


def test_a_gzip_file_is_decompressed_only_up_to_the_limit(tmp_path, settings):
    row = json.dumps({"context": "x" * 1000}) + "\n"
    f = tmp_path / "bomb.jsonl.gz"
    f.write_bytes(gzip.compress(row.encode() * 3000))  # about 3 MB of text in a few KB
    assert f.stat().st_size < 50_000
    with pytest.raises(ImportFormatError) as e:
        parse_file(f, "prompts-jsonl", max_bytes=2**20)
    assert str(e.value).startswith("bomb.jsonl.gz: decompresses to more than 1 MiB")
    assert len(parse_file(f, "prompts-jsonl", max_bytes=4 * 2**20).prompts) == 1  # under the limit: read whole

    settings.DATASET_DECOMPRESSED_MAX_BYTES = 2**20
    job = import_file(f, "prompts-jsonl")
    assert job.status == "failed" and "decompresses to more than 1 MiB" in job.error
    assert "DATASET_DECOMPRESSED_MAX_BYTES" in job.error
    assert db_counts() == (0, 0, 0)
    settings.DATASET_DECOMPRESSED_MAX_BYTES = 4 * 2**20
    assert import_file(f, "prompts-jsonl").status == "succeeded"
    assert db_counts() == (1, 1, 0)


def test_import_parameters_holding_nul_are_refused_before_queueing(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"context": "q"}\n')
    for field, value in [("name", "a\x00b"), ("split", "t\x00"), ("source", "\x00"), ("path", str(f) + "\x00")]:
        with pytest.raises(ValidationError) as e:
            jobs.submit("import_dataset", {"path": str(f), "format": "prompts-jsonl", "task": "helpful",
                                          field: value}, send=False)
        assert any("NUL character" in m for m in e.value.message_dict[field]), (field, e.value.message_dict)
    assert Job.objects.count() == 0 and db_counts() == (0, 0, 0)


# --- CSV exports --------------------------------------------------------------------------------------

def test_csv_cells_a_spreadsheet_would_run_are_quoted_and_numbers_are_kept():
    frame = pd.DataFrame({
        "policy_name": ['=HYPERLINK("http://x","y")', "@SUM(1+1)", "+1+2", "-2+3", "\tx", "\rx", "-0.5", "plain"],
        "win_rate": [-0.5, 0.25, 1.0, -1e-9, 0.0, 2.0, 3.0, float("nan")],
        "mixed": [-0.5, "=1", None, "@a", 3, "-1e-5", "x", "-"],
    })
    frame["=cmd|' /C calc'!A0"] = 1
    rows = list(csv.reader(io.StringIO(T.to_csv(frame))))
    assert rows[0] == ["policy_name", "win_rate", "mixed", "'=cmd|' /C calc'!A0"]
    assert [r[0] for r in rows[1:]] == ['\'=HYPERLINK("http://x","y")', "'@SUM(1+1)", "'+1+2", "'-2+3", "'\tx", "'\rx",
                                        "-0.5", "plain"]
    assert [r[1] for r in rows[1:]] == ["-0.5", "0.25", "1.0", "-1e-09", "0.0", "2.0", "3.0", ""]
    assert [r[2] for r in rows[1:]] == ["-0.5", "'=1", "", "'@a", "3", "-1e-5", "x", "'-"]
    assert frame["policy_name"].iloc[0].startswith("=")  # the frame the page shows is left as it was


def test_round_and_job_exports_neutralise_formulas_in_names(client, researcher):
    from tests.test_reports import rank_round

    names = ('=HYPERLINK("http://evil","win")', "@SUM(1+1)", "-2+3")
    users = make_annotators(2, prefix="=cmd")
    rnd = make_round(n_prompts=4, overlap=2, policy_names=names, name="formula round")
    rank_round(rnd, users, {names[0]: 1.0, names[1]: 0.0, names[2]: 0.5})
    client.force_login(researcher)
    wr = client.get(reverse("reports:round_export", args=[rnd.pk, "win_rates", "csv"]))
    assert wr.status_code == 200
    rows = list(csv.DictReader(io.StringIO(wr.content.decode())))
    assert len(rows) == 6
    assert {r["policy_name"] for r in rows} == {"'" + n for n in names}
    assert all(0 <= float(r["win_rate"]) <= 1 for r in rows)
    annotators = list(csv.DictReader(io.StringIO(client.get(
        reverse("reports:round_export", args=[rnd.pk, "annotators", "csv"])).content.decode())))
    assert sorted(r["annotator"] for r in annotators) == ["'=cmd0", "'=cmd1"]
    job = Job.objects.create(kind="rl", name="rl run")
    JobMetric.objects.create(job=job, step=0, values={"loss": -0.5, "note": "=1+1"})
    metrics = list(csv.DictReader(io.StringIO(client.get(
        reverse("reports:job_export", args=[job.pk, "csv"])).content.decode())))
    assert metrics == [{"job_id": str(job.pk), "step": "0", "loss": "-0.5", "note": "'=1+1"}]


# --- training job parameters -----------------------------------------------------------------------

@pytest.fixture
def training(tmp_path):
    task = Task.objects.get(slug="summarization")
    dataset = Dataset.objects.create(name="bounds", split="train", task=task)
    for i in range(4):
        Prompt.objects.create(dataset=dataset, external_id=f"p{i}", context=f"post {i}", reference=f"summary {i}")
    folder = tmp_path / "policy"
    folder.mkdir()
    policy = Policy.objects.create(name="base", kind=Policy.Kind.SFT, checkpoint_dir=str(folder))
    from rl.models import RewardModel

    rm = RewardModel.objects.create(name="rm", labels="human", checkpoint_dir=str(tmp_path / "no-such-rm"))
    return {"dataset": dataset, "policy": policy, "rm": rm}


def test_numbers_past_their_bounds_are_refused_with_a_message_on_every_route(training):
    ds, policy = training["dataset"].pk, training["policy"].pk
    gone = Policy.objects.create(name="moved", kind=Policy.Kind.SFT, checkpoint_dir="/nonexistent/moved-policy")
    sample = {"policy_id": policy, "dataset_id": ds}
    sft = {"policy_id": policy, "dataset_id": ds, "name": "s", "batch_size": 2}
    rl = {"policy_id": policy, "dataset_id": ds, "name": "r", "reward_model_id": training["rm"].pk, "batch_size": 2}
    cases = [
        ("sample", {**sample, "max_new_tokens": 10**7}, "max_new_tokens", "max new tokens must be at most 8192."),
        ("sft", {**sft, "epochs": 10**9}, "epochs", "epochs must be at most 1000."),
        ("sample", {**sample, "temperature": 1e300}, "temperature", "temperature must be at most 100."),
        ("sample", {**sample, "temperature": float("inf")}, "temperature", "must be a number"),
        ("sample", {**sample, "seed": 10**20}, "seed", "seed must be at most 2^63 − 1."),
        ("sft", {**sft, "seed": -1}, "seed", "seed must be at least 0."),
        ("sft", {**sft, "learning_rate": float("nan")}, "learning_rate", "must be a number"),
        ("sft", {**sft, "learning_rate": "inf"}, "learning_rate", "must be a number"),
        ("sft", {**sft, "epochs": float("inf")}, "epochs", "must be a whole number"),
        ("sft", {**sft, "max_response_tokens": "9" * 30}, "max_response_tokens", "at most 8192"),
        ("rl", {**rl, "batch_size": 10**6}, "batch_size", "batch size must be at most 4096."),
        ("rl", {**rl, "temperature": 0}, "temperature", "temperature must be greater than 0."),
        ("rl", {**rl, "max_grad_norm": 1e9}, "max_grad_norm", "at most 1000"),
        ("rl", rl, "reward_model_id", "The folder of reward model “rm” does not exist"),
        ("reward_model", {"policy_id": policy, "name": "rm2", "max_length": 10**6}, "max_length", "at most 40960"),
        ("sample", {**sample, "policy_id": gone.pk}, "policy_id",
         "The folder of policy “moved” does not exist: /nonexistent/moved-policy."),
        ("sft", {**sft, "name": "a\x00b"}, "name", "must not contain NUL"),
    ]
    for kind, params, field, text in cases:
        with pytest.raises(ValidationError) as e:
            jobs.submit(kind, params, send=False)
        messages = e.value.message_dict.get(field, [])
        assert any(text in m for m in messages), (kind, field, e.value.message_dict)
    assert Job.objects.count() == 0
    # The bounds themselves are allowed.
    ok = jobs.get_kind("sample").validate({**sample, "max_new_tokens": 8192, "seed": 2**63 - 1, "temperature": 100})
    assert (ok["max_new_tokens"], ok["seed"], ok["temperature"]) == (8192, 2**63 - 1, 100.0)


def test_training_forms_state_the_bounds_and_show_the_validators_messages(client, researcher, training):
    client.force_login(researcher)
    page = client.get(reverse("rl:start", args=["sample"])).content.decode()
    assert "From 1 to 8192." in page and 'max="8192"' in page
    assert "From 0 to 2^63 − 1." in page and "From 0 to 100." in page
    rl_page = client.get(reverse("rl:start", args=["rl"])).content.decode()
    assert "Above 0, at most 100." in rl_page and "From 1 to 1000." in rl_page
    from rl.params import SAMPLE_DEFAULTS

    data = {**SAMPLE_DEFAULTS, "policy": training["policy"].pk, "dataset": training["dataset"].pk,
            "seed": 10**20, "max_new_tokens": 10**7, "temperature": "1e300"}
    r = client.post(reverse("rl:start", args=["sample"]), data)
    text = r.content.decode()
    assert r.status_code == 200
    assert "seed must be at most 2^63 − 1." in text and "max new tokens must be at most 8192." in text
    assert "temperature must be at most 100." in text
    assert Job.objects.count() == 0


def test_experiment_config_numbers_are_checked_by_the_form_and_before_launch(training):
    from evalsite.experiments.admin import ExperimentForm

    data = {"name": "bounded", "task": training["dataset"].task_id, "dataset": training["dataset"].pk,
            "base_policy": training["policy"].pk, "preset": "demo", "arms": ["sft"]}
    bad = {"seed": 10**20, "sft_prompts": "many", "rl": {"epochs": 10**9, "temperature": float("inf")},
           "round": {"overlap": 10**6}}
    form = ExperimentForm(data={**data, "config": json.dumps(bad).replace("Infinity", "1e400")})
    assert not form.is_valid()
    errors = form.errors["config"]
    for text in ["seed must be at most 2^63 − 2.", "sft prompts must be a whole number (got 'many').",
                 "rl: epochs must be at most 1000.", "rl: temperature must be a number",
                 "round: overlap must be at most 100."]:
        assert any(text in e for e in errors), (text, errors)
    form = ExperimentForm(data={**data, "config": json.dumps({"rl": 5})})
    assert not form.is_valid() and "rl: expected an object of settings, found int." in form.errors["config"]
    form = ExperimentForm(data={**data, "config": "[1, 2]"})
    assert not form.is_valid() and "Give an object of settings" in form.errors["config"][0]
    assert ExperimentForm(data={**data, "config": json.dumps({"rl": {"epochs": 2}})}).is_valid()

    from evalsite.experiments.presets import merged_config

    exp = Experiment.objects.create(name="cli", task=training["dataset"].task, dataset=training["dataset"],
                                    base_policy=training["policy"], arms=["sft"],
                                    config=merged_config("demo", {"pairs": {"max_new_tokens": 10**7}}))
    with pytest.raises(ValidationError, match="pairs: max new tokens must be at most 8192"):
        pipeline.prepare(exp)
    assert Job.objects.count() == 0


# --- query parameters of the job feeds ------------------------------------------------------------

def test_job_feeds_answer_bad_query_parameters_with_400_or_ignore_them(client, researcher):
    job = Job.objects.create(kind="rl", name="feed")
    for step in range(3):
        JobMetric.objects.create(job=job, step=step, values={"loss": 1.0 / (step + 1)})
    client.force_login(researcher)
    url = reverse("jobs:detail-json", args=[job.pk])
    for bad in ["abc", "1.5", "²", "--1", "9" * 5000]:
        r = client.get(url, {"after_step": bad})
        assert r.status_code == 400, bad
        assert r.json()["error"].startswith("after_step must be a whole number"), bad
    assert [m["step"] for m in client.get(url, {"after_step": "0"}).json()["metrics"]] == [1, 2]
    assert [m["step"] for m in client.get(url).json()["metrics"]] == [0, 1, 2]
    assert client.get(url, {"after_step": "9" * 20}).json()["metrics"] == []
    status = client.get(reverse("jobs:status"), {"ids": f"²,{job.pk},{'9' * 5000},x"})
    assert status.status_code == 200 and [j["id"] for j in status.json()["jobs"]] == [job.pk]
    # The training-curve report reads the same kind of id list.
    for ids in (f"²,{job.pk}", f"{job.pk},{'9' * 40}", f"{job.pk},x"):
        r = client.get(reverse("reports:jobs"), {"ids": ids})
        assert r.status_code == 200, ids
        assert f"#{job.pk}" in r.content.decode() or "feed" in r.content.decode(), ids
