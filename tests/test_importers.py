"""Dataset import: the format parsers, the atomic/idempotent import job, the admin form, the commands."""
import gzip
import io
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command
from django.urls import reverse

from evalsite import importers, jobs
from evalsite.importers import TLDR_JUDGE_NAME, ImportFormatError, parse_file
from evalsite.importjobs import run_import, write_dataset
from evalsite.models import Comparison, Dataset, Prompt
from evalsite.jobs.models import Job
from tests.helpers import wait_for

DATA = Path(__file__).parent / "data"
ROOT = Path(__file__).resolve().parent.parent
HH_FILE = "hh-rlhf-harmless-base-test.jsonl.gz"
TLDR_FILE = "tldr-oai1b-judged.csv"


def db_counts():
    return Dataset.objects.count(), Prompt.objects.count(), Comparison.objects.count()


def import_file(path, fmt, **params):
    """Run an import job in this process; returns the finished Job."""
    return run_import({"path": str(path), "format": fmt, **params}, write=lambda line: None)


# --- parsers on the real files ---------------------------------------------------------------


def test_hh_real_file_skips_and_counts_context_mismatches(shared_data):
    r = parse_file(shared_data / HH_FILE, "hh")
    assert r.counts["rows_read"] == 2312
    assert r.counts["skipped_context_mismatch"] == 5          # README: 2,307 of 2,312 share context
    assert len(r.pairs) == 2307
    assert len(r.prompts) == 2305                              # two contexts appear twice
    assert r.default_task == "harmless"
    # The chosen response's slot is a stable coin flip: roughly balanced, and recorded.
    chosen_first = sum(p.human_preference == "first" for p in r.pairs)
    assert 0.45 < chosen_first / len(r.pairs) < 0.55
    assert all(p.metadata["chosen_position"] == p.human_preference for p in r.pairs)
    assert all(not p.judge_preference for p in r.pairs)
    for p in r.prompts:
        assert p.context.startswith("\n\nHuman:")
        assert not p.context.rstrip().endswith("Assistant:")
    # The parse is deterministic: the same file gives the same order and ids.
    again = parse_file(shared_data / HH_FILE, "hh")
    assert [(p.response_a, p.human_preference) for p in again.pairs[:50]] == \
           [(p.response_a, p.human_preference) for p in r.pairs[:50]]


def test_tldr_real_file_gives_prompts_and_judge_labelled_comparisons(shared_data):
    r = parse_file(shared_data / TLDR_FILE, "tldr")
    assert len(r.prompts) == 1945
    assert len(r.pairs) == 1000
    assert all(p.reference for p in r.prompts)
    assert all(p.context.startswith("SUBREDDIT: r/") and not p.context.endswith("TL;DR:") for p in r.prompts)
    assert all(p.metadata["subreddit"] and p.metadata["title"] for p in r.prompts)
    # AI labels only: no human preference anywhere, the judge named.
    assert {p.human_preference for p in r.pairs} == {""}
    assert {p.judge_name for p in r.pairs} == {TLDR_JUDGE_NAME}
    assert Counter(p.metadata["judge_preferred"] for p in r.pairs) == {"ours": 640, "reference": 360}
    refs = {p.external_id: p.reference for p in r.prompts}
    for p in r.pairs:
        ref_slot = "first" if p.response_a == refs[p.prompt_external_id] else "second"
        assert ref_slot == p.metadata["reference_position"]
        judged_ref = p.metadata["judge_preferred"] == "reference"
        assert (p.judge_preference == ref_slot) == judged_ref
        assert p.metadata["explanation"]
    assert 0.4 < sum(p.metadata["reference_position"] == "first" for p in r.pairs) / 1000 < 0.6


# --- parsers on small hand-made files -----------------------------------------------------------


def test_hh_small_file_plain_and_gzip(tmp_path):
    r = parse_file(DATA / "hh_small.jsonl", "hh")
    assert r.counts == {"rows_read": 4, "skipped_context_mismatch": 1, "repeated_prompts_in_file": 1}
    assert [p.context for p in r.prompts] == [
        "\n\nHuman: How do I boil an egg?",
        "\n\nHuman: Hi\n\nAssistant: Hello! How can I help?\n\nHuman: Tell me a fact about owls.",
    ]
    chosen = [p.response_a if p.human_preference == "first" else p.response_b for p in r.pairs]
    assert chosen == ["Put it in boiling water for about nine minutes, then cool it in cold water.",
                      "Owls can turn their heads about 270 degrees.", "Simmer it gently for nine minutes."]
    gz = tmp_path / "helpful-base-test.jsonl.gz"
    gz.write_bytes(gzip.compress((DATA / "hh_small.jsonl").read_bytes()))
    rg = parse_file(gz, "hh")
    assert [(p.response_a, p.response_b, p.human_preference) for p in rg.pairs] == \
           [(p.response_a, p.response_b, p.human_preference) for p in r.pairs]
    assert rg.default_task == "helpful"  # Anthropic's helpful-base files say so in their name


def test_tldr_small_file():
    r = parse_file(DATA / "tldr_small.csv", "tldr")
    assert [p.context for p in r.prompts][0] == \
        "SUBREDDIT: r/cooking\n\nTITLE: Bread is dense\n\nPOST: My bread never rises.\nWhat now?"
    assert [p.reference for p in r.prompts] == ["My bread never rises; how do I fix it?", "knee hurts",
                                                "Old cat hides since the kitten came."]
    assert len(r.pairs) == 2  # the unjudged row gives a prompt only
    winners = [p.response_a if p.judge_preference == "first" else p.response_b for p in r.pairs]
    assert winners == ["My bread never rises; how do I fix it?", "Knee pain after 5 km of running."]


def test_openai_comparisons_small_file():
    r = parse_file(DATA / "openai_comparisons.jsonl", "openai-comparisons")
    assert [p.external_id for p in r.prompts] == ["t3_demo1", "t3_demo2"]
    assert r.prompts[0].context == ("SUBREDDIT: r/tifu\n\nTITLE: Umbrella\n\nPOST: I left my umbrella on the bus "
                                    "and it rained all day.")
    assert [(p.prompt_external_id, p.human_preference) for p in r.pairs] == [
        ("t3_demo1", "first"), ("t3_demo1", "second"), ("t3_demo2", "first")]
    assert r.pairs[1].response_b == "Lost umbrella on a bus on a rainy day."
    assert r.pairs[0].metadata == {"policies": ["sup2", "ref"], "worker": "w1", "batch": "batch3",
                                   "split": "train", "confidence": 8}
    assert r.default_task == "summarization"


def test_generic_prompt_files_keep_ids_and_extra_columns():
    r = parse_file(DATA / "prompts.csv", "prompts-csv")
    assert [(p.external_id, p.reference, p.metadata) for p in r.prompts] == [
        ("p1", "Gardening post.", {"source_url": "https://example.org/1"}),
        ("p2", "", {}),
        (importers.context_id("Third post without an id."), "Third.", {"source_url": "https://example.org/3"}),
    ]
    assert r.prompts[1].context == "Second post,\nspanning two lines."
    j = parse_file(DATA / "prompts.jsonl", "prompts-jsonl")
    assert [(p.external_id, p.metadata) for p in j.prompts] == [
        ("7", {"lang": "en"}), (importers.context_id("A post given under the alias 'prompt'."), {"tags": ["a", "b"]})]
    assert r.default_task is None


def test_generic_pair_files_allow_ties_and_judge_labels():
    r = parse_file(DATA / "pairs.csv", "pairs-csv")
    assert [(p.prompt_external_id, p.human_preference, p.metadata) for p in r.pairs] == [
        ("q1", "first", {"annotator": "ann1"}), ("q1", "tie", {"annotator": "ann2"}), ("q2", "second", {}),
        (importers.context_id("Question three?"), "", {"annotator": "ann1"})]
    assert [p.external_id for p in r.prompts][:2] == ["q1", "q2"]
    j = parse_file(DATA / "pairs.jsonl", "pairs-jsonl")
    assert [(p.human_preference, p.judge_preference, p.judge_name, p.metadata) for p in j.pairs] == [
        ("first", "second", "Some LLM", {"round": 2}), ("", "", "", {})]


# --- bad input: clear messages naming file, line or row, and field ------------------------------

BAD_FILES = [
    # (file, format, every part the message must name)
    ("bad_missing_column.csv", "pairs-csv", ["bad_missing_column.csv", "field 'response_b'", "missing column"]),
    ("bad_broken.jsonl", "pairs-jsonl", ["bad_broken.jsonl", "line 3", "broken JSON"]),
    ("empty.jsonl", "pairs-jsonl", ["empty.jsonl", "the file is empty"]),
    ("header_only.csv", "prompts-csv", ["header_only.csv", "no data rows"]),
    ("latin1.csv", "prompts-csv", ["latin1.csv", "line 3", "not UTF-8", "0xe9"]),
    ("bad_preference.jsonl", "pairs-jsonl", ["bad_preference.jsonl", "line 2", "field 'preference'",
                                             "bad preference value 'maybe'"]),
    ("bad_hh_field.jsonl", "hh", ["bad_hh_field.jsonl", "line 2", "field 'rejected'", "missing"]),
    ("tldr_small.csv", "pairs-csv", ["tldr_small.csv", "field 'context'", "missing column"]),
]


@pytest.mark.parametrize("name,fmt,parts", BAD_FILES, ids=[b[0] + "-" + b[1] for b in BAD_FILES])
def test_bad_file_gives_a_clear_message(name, fmt, parts):
    with pytest.raises(ImportFormatError) as e:
        parse_file(DATA / name, fmt)
    for part in parts:
        assert part in str(e.value)


def test_csv_errors_name_the_row_and_its_line(tmp_path):
    f = tmp_path / "pairs.csv"
    f.write_text('context,response_a,response_b,preference\n"Two\nline context",a,b,first\nQ,a,b,sometimes\n')
    with pytest.raises(ImportFormatError) as e:
        parse_file(f, "pairs-csv")
    assert str(e.value).startswith("pairs.csv, line 4, row 2, field 'preference': bad preference value 'sometimes'")


def test_other_bad_inputs(tmp_path):
    with pytest.raises(ImportFormatError, match=r"unknown format 'csv'; known formats: hh, tldr, openai-comparisons, "
                                                r"prompts-csv, prompts-jsonl, pairs-csv, pairs-jsonl"):
        parse_file(DATA / "prompts.csv", "csv")
    (tmp_path / "t.csv").write_text("query,reference_responses,postprocessed_response,preferred\nPOST: x TL;DR:,r,m,both\n")
    with pytest.raises(ImportFormatError, match=r"t.csv, line 2, row 1, field 'preferred': bad preference value 'both'"):
        parse_file(tmp_path / "t.csv", "tldr")
    (tmp_path / "c.jsonl").write_text(json.dumps({"info": {"post": "p"}, "summaries": [{"text": "a"}, {"text": "b"}],
                                                  "choice": 2}) + "\n")
    with pytest.raises(ImportFormatError, match=r"c.jsonl, line 1, field 'choice': bad preference value 2"):
        parse_file(tmp_path / "c.jsonl", "openai-comparisons")
    (tmp_path / "j.jsonl").write_text(json.dumps({"context": "q", "response_a": "a", "response_b": "b",
                                                  "judge_preference": "first"}) + "\n")
    with pytest.raises(ImportFormatError, match=r"line 1, field 'judge_name': is required"):
        parse_file(tmp_path / "j.jsonl", "pairs-jsonl")
    (tmp_path / "d.jsonl").write_text('{"id": "x", "context": "one"}\n{"id": "x", "context": "two"}\n')
    with pytest.raises(ImportFormatError, match=r"line 2, field 'id': prompt id 'x' appears earlier"):
        parse_file(tmp_path / "d.jsonl", "prompts-jsonl")
    (tmp_path / "a.jsonl").write_text('[\n{"context": "q"}\n]\n')
    with pytest.raises(ImportFormatError, match=r"line 1: broken JSON.*one complete JSON object on each line"):
        parse_file(tmp_path / "a.jsonl", "prompts-jsonl")
    (tmp_path / "bad.gz").write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(ImportFormatError, match=r"bad.gz: looks gzip-compressed but cannot be decompressed"):
        parse_file(tmp_path / "bad.gz", "hh")


# --- the import job: database writes ---------------------------------------------------------------


@pytest.mark.django_db
def test_hh_import_job_writes_everything_once(shared_data):
    job = import_file(shared_data / HH_FILE, "hh", split="test", licence="MIT")
    assert job.status == "succeeded", job.error
    ds = Dataset.objects.get()
    assert (ds.name, ds.split, ds.task.slug, ds.licence, ds.import_job_id) == \
           ("hh-rlhf-harmless-base-test", "test", "harmless", "MIT", job.pk)
    assert ds.prompts.count() == 2305
    comps = Comparison.objects.filter(prompt__dataset=ds)
    assert comps.count() == 2307
    assert comps.filter(human_source="dataset").count() == 2307
    assert comps.exclude(human_preference__in=["first", "second"]).count() == 0
    assert comps.filter(job=job).count() == 2307
    r = job.result
    assert (r["prompts_created"], r["comparisons_created"], r["skipped_context_mismatch"], r["rows_read"]) == \
           (2305, 2307, 5, 2312)
    assert job.progress == 1.0 and "skipped_context_mismatch=5" in job.log

    again = import_file(shared_data / HH_FILE, "hh", split="test")
    assert again.status == "succeeded"
    assert (again.result["prompts_created"], again.result["prompts_existing"],
            again.result["comparisons_created"], again.result["comparisons_existing"]) == (0, 2305, 0, 2307)
    assert db_counts() == (1, 2305, 2307)


@pytest.mark.django_db
def test_tldr_import_job_records_the_judge_not_a_human(shared_data):
    job = import_file(shared_data / TLDR_FILE, "tldr")
    assert job.status == "succeeded", job.error
    ds = Dataset.objects.get(name="tldr-oai1b-judged")
    assert ds.task.slug == "summarization"
    assert ds.prompts.count() == 1945
    assert ds.prompts.exclude(reference="").count() == 1945
    comps = Comparison.objects.filter(prompt__dataset=ds)
    assert comps.count() == 1000
    assert comps.filter(judge_name=TLDR_JUDGE_NAME, judge_preference__in=["first", "second"]).count() == 1000
    assert comps.exclude(human_preference="").count() == 0 and comps.exclude(human_source="").count() == 0
    again = import_file(shared_data / TLDR_FILE, "tldr")
    assert (again.result["prompts_created"], again.result["comparisons_created"]) == (0, 0)
    assert db_counts() == (1, 1945, 1000)


@pytest.mark.django_db
@pytest.mark.parametrize("name,fmt", [("openai_comparisons.jsonl", "openai-comparisons"),
                                      ("pairs.csv", "pairs-csv"), ("pairs.jsonl", "pairs-jsonl"),
                                      ("prompts.csv", "prompts-csv"), ("prompts.jsonl", "prompts-jsonl"),
                                      ("hh_small.jsonl", "hh"), ("tldr_small.csv", "tldr")])
def test_small_files_import_and_reimport_without_duplicates(name, fmt):
    parsed = parse_file(DATA / name, fmt)
    job = import_file(DATA / name, fmt, task="summarization" if fmt not in ("hh",) else "")
    assert job.status == "succeeded", job.error
    assert db_counts() == (1, len(parsed.prompts), len(parsed.pairs))
    for rec in parsed.pairs:
        c = Comparison.objects.get(prompt__external_id=rec.prompt_external_id, response_a=rec.response_a)
        assert (c.response_b, c.human_preference, c.human_source, c.judge_preference, c.judge_name, c.metadata) == \
               (rec.response_b, rec.human_preference, "dataset" if rec.human_preference else "",
                rec.judge_preference, rec.judge_name, rec.metadata)
    again = import_file(DATA / name, fmt, task="summarization" if fmt not in ("hh",) else "")
    assert (again.result["prompts_created"], again.result["comparisons_created"]) == (0, 0)
    assert db_counts() == (1, len(parsed.prompts), len(parsed.pairs))


@pytest.mark.django_db
@pytest.mark.parametrize("name,fmt,parts", BAD_FILES, ids=[b[0] + "-" + b[1] for b in BAD_FILES])
def test_bad_file_fails_the_job_and_writes_nothing(name, fmt, parts):
    job = import_file(DATA / name, fmt, task="summarization")
    assert job.status == "failed"
    for part in parts:
        assert part in job.error
    assert "Traceback" not in job.error
    assert db_counts() == (0, 0, 0)


@pytest.mark.django_db
def test_a_failure_halfway_through_the_writes_leaves_nothing():
    parsed = parse_file(DATA / "pairs.csv", "pairs-csv")
    calls = []

    def cancel_on_third_batch():
        calls.append(1)
        if len(calls) == 3:
            raise jobs.JobCancelled()

    with pytest.raises(jobs.JobCancelled):
        write_dataset(parsed, name="half", split="train", task="helpful", batch_size=1,
                      check_cancelled=cancel_on_third_batch)
    assert db_counts() == (0, 0, 0)  # the two prompts written before the stop were rolled back


@pytest.mark.django_db
def test_changed_file_conflicting_with_stored_prompts_fails_cleanly(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"id": "a", "context": "one"}\n')
    assert import_file(f, "prompts-jsonl", task="helpful").status == "succeeded"
    f.write_text('{"id": "b", "context": "new"}\n{"id": "a", "context": "changed"}\n')
    job = import_file(f, "prompts-jsonl", task="helpful")
    assert job.status == "failed"
    assert "p.jsonl: prompt 'a' already exists in dataset p [train] with a different context" in job.error
    assert list(Prompt.objects.values_list("external_id", "context")) == [("a", "one")]


@pytest.mark.django_db
def test_job_parameters_are_validated_before_queueing(tmp_path):
    with pytest.raises(ValidationError) as e:
        jobs.submit("import_dataset", {"path": str(DATA / "prompts.csv"), "format": "prompts-csv"}, send=False)
    assert "does not say which task" in str(e.value)
    with pytest.raises(ValidationError) as e:
        jobs.submit("import_dataset", {"path": str(tmp_path / "nope.csv"), "format": "xml"}, send=False)
    assert "Unknown format 'xml'; known formats: hh, tldr" in str(e.value) and "File not found" in str(e.value)
    assert import_file(DATA / "prompts.csv", "prompts-csv", task="helpful", name="x").status == "succeeded"
    with pytest.raises(ValidationError, match="already exists with task 'helpful'"):
        jobs.submit("import_dataset", {"path": str(DATA / "prompts.csv"), "format": "prompts-csv", "name": "x",
                                      "task": "summarization"}, send=False)
    assert Job.objects.count() == 1


# --- the admin upload form ---------------------------------------------------------------------------


@pytest.fixture
def admin_client(client, researcher, settings, tmp_path):
    settings.UPLOADS_DIR = tmp_path / "uploads"
    client.force_login(researcher)
    return client


def upload(client, content, filename, **fields):
    from django.core.files.uploadedfile import SimpleUploadedFile

    data = {"split": "train", "format": "pairs-jsonl", "task": "harmless", **fields,
            "file": SimpleUploadedFile(filename, content)}
    return client.post(reverse("admin:evalsite_dataset_import"), data)


@pytest.mark.django_db
def test_admin_form_renders_with_breadcrumbs_and_format_help(admin_client):
    r = admin_client.get(reverse("admin:evalsite_dataset_import"))
    assert r.status_code == 200
    html = r.content.decode()
    assert 'class="breadcrumbs"' in html and reverse("admin:evalsite_dataset_changelist") in html
    for fmt in importers.FORMATS:
        assert f"<td>{fmt}</td>" in html
    assert 'enctype="multipart/form-data"' in html
    changelist = admin_client.get(reverse("admin:evalsite_dataset_changelist")).content.decode()
    assert reverse("admin:evalsite_dataset_import") in changelist


@pytest.mark.django_db
def test_admin_upload_queues_a_job_that_imports_the_file(admin_client, settings, researcher):
    content = (DATA / "pairs.jsonl").read_bytes()
    r = upload(admin_client, content, "my pairs.jsonl", source="hand-made", licence="CC0")
    job = Job.objects.get()
    assert r.status_code == 302 and r["Location"] == reverse("admin:jobs_job_change", args=[job.pk])
    assert job.kind == "import_dataset" and job.created_by == researcher and job.status == "queued"
    saved = Path(job.params["path"])
    assert saved.parent.parent == settings.UPLOADS_DIR and saved.name == "my_pairs.jsonl"
    assert saved.read_bytes() == content
    assert job.params["name"] == "my pairs" and job.params["task"] == "harmless"
    assert jobs.execute(job.pk) == "succeeded"
    ds = Dataset.objects.get()
    assert (ds.name, ds.task.slug, ds.source, ds.licence) == ("my pairs", "harmless", "hand-made", "CC0")
    assert db_counts() == (1, 2, 2)
    page = admin_client.get(r["Location"]).content.decode()
    assert "succeeded" in page.lower()


@pytest.mark.django_db
def test_admin_upload_refuses_bad_forms_without_writing(admin_client, settings):
    cases = [
        (dict(content=b"", filename="e.jsonl"), "file", "The uploaded file is empty."),
        (dict(content=b"{}\n", filename="x.jsonl", format="xml"), "format", "Unknown format xml; known formats: hh"),
        (dict(content=b"context\nq\n", filename="p.csv", format="prompts-csv", task=""), "task",
         "does not say which task"),
    ]
    for kwargs, field, message in cases:
        r = upload(admin_client, **kwargs)
        assert r.status_code == 200
        assert any(message in e for e in r.context["form"].errors[field]), r.context["form"].errors
        assert message.split(";")[0] in r.content.decode()
    settings.DATASET_UPLOAD_MAX_BYTES = 10
    r = upload(admin_client, b"x" * 11, "big.jsonl")
    assert "is too large" in r.context["form"].errors["file"][0]
    assert Job.objects.count() == 0 and db_counts() == (0, 0, 0)
    assert not any(Path(settings.UPLOADS_DIR).rglob("*.*"))


@pytest.mark.django_db
def test_admin_upload_into_a_dataset_of_another_task_is_refused_and_the_file_removed(admin_client, settings):
    assert import_file(DATA / "pairs.jsonl", "pairs-jsonl", task="helpful", name="mine").status == "succeeded"
    r = upload(admin_client, (DATA / "pairs.jsonl").read_bytes(), "pairs.jsonl", name="mine", task="harmless")
    assert r.status_code == 200
    assert "Dataset mine [train] already exists with task &#x27;helpful&#x27;" in r.content.decode()
    assert Job.objects.count() == 1 and db_counts() == (1, 2, 2)
    assert not any(p.is_file() for p in Path(settings.UPLOADS_DIR).rglob("*"))


@pytest.mark.django_db
def test_admin_upload_of_a_bad_file_fails_its_job_with_the_message(admin_client):
    r = upload(admin_client, (DATA / "latin1.csv").read_bytes(), "latin1.csv", format="prompts-csv")
    job = Job.objects.get()
    assert jobs.execute(job.pk) == "failed"
    job.refresh_from_db()
    assert job.error.startswith("latin1.csv, line 3: the file is not UTF-8 text")
    assert db_counts() == (0, 0, 0)
    assert "the file is not UTF-8 text" in admin_client.get(r["Location"]).content.decode()


# --- the commands ------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_import_command_prints_progress_and_counts():
    out = io.StringIO()
    call_command("import_dataset", str(DATA / "hh_small.jsonl"), "--format", "hh", "--name", "tiny hh", stdout=out)
    text = out.getvalue()
    assert "reading " in text and "read 4 rows: 2 prompts, 3 comparisons" in text
    assert "Imported tiny hh [train]" in text and "comparisons created 3" in text
    assert "skipped context mismatch 1" in text
    out = io.StringIO()
    call_command("import_dataset", str(DATA / "hh_small.jsonl"), "--format", "hh", "--name", "tiny hh", stdout=out)
    assert "prompts created 0, existing 2; comparisons created 0, existing 3" in out.getvalue()
    assert Dataset.objects.get().task.slug == "harmless"


@pytest.mark.django_db
def test_import_command_fails_with_the_jobs_message():
    with pytest.raises(CommandError, match=r"Import failed \(job #\d+\): bad_broken.jsonl, line 3: broken JSON"):
        call_command("import_dataset", str(DATA / "bad_broken.jsonl"), "--format", "pairs-jsonl", "--task", "helpful",
                     stdout=io.StringIO())
    with pytest.raises(CommandError, match=r"format: Unknown format 'json'; known formats"):
        call_command("import_dataset", str(DATA / "pairs.jsonl"), "--format", "json", stdout=io.StringIO())
    assert db_counts() == (0, 0, 0)


def test_import_command_exit_status_in_a_real_process(worker_env):
    def run(*args):
        return subprocess.run([sys.executable, "manage.py", "import_dataset", *args], cwd=ROOT, env=worker_env,
                              capture_output=True, text=True, timeout=120)

    bad = run("--format", "pairs-jsonl", "--task", "helpful", str(DATA / "bad_preference.jsonl"))
    assert bad.returncode == 1
    assert "bad_preference.jsonl, line 2, field 'preference': bad preference value 'maybe'" in bad.stderr
    assert "Traceback" not in bad.stderr
    good = run("--format", "pairs-csv", "--task", "helpful", "--name", "cli", str(DATA / "pairs.csv"))
    assert good.returncode == 0, good.stderr
    assert "Imported cli [train]" in good.stdout
    assert db_counts() == (1, 3, 4)


@pytest.mark.worker
def test_background_import_runs_on_a_real_worker(start_worker):
    start_worker()
    out = io.StringIO()
    call_command("import_dataset", str(DATA / "openai_comparisons.jsonl"), "--format", "openai-comparisons",
                 "--background", stdout=out)
    job = Job.objects.get()
    assert f"Queued job #{job.pk}" in out.getvalue()
    wait_for(lambda: Job.objects.get(pk=job.pk).is_finished, timeout=60, message="the import job to finish")
    job.refresh_from_db()
    assert job.status == "succeeded", job.error
    assert db_counts() == (1, 2, 3)


@pytest.mark.django_db
def test_load_demo_data_is_idempotent():
    out = io.StringIO()
    call_command("load_demo_data", stdout=out)
    assert db_counts() == (3, 24 + 12 + 16, 12 + 16)
    for ds in Dataset.objects.all():
        assert ds.split == "demo"
        assert ds.licence == "CC0, demo data written for this project"
        assert "Demo data" in ds.description
    assert set(Dataset.objects.values_list("name", "task__slug")) == {
        ("demo-summarization", "summarization"), ("demo-summarization-comparisons", "summarization"),
        ("demo-harmless", "harmless")}
    assert Prompt.objects.filter(dataset__name="demo-summarization").exclude(reference="").count() == 24
    harmless = Comparison.objects.filter(prompt__dataset__name="demo-harmless")
    assert Counter(harmless.values_list("human_preference", flat=True)) == {"first": 9, "second": 7}
    tldr = Comparison.objects.filter(prompt__dataset__name="demo-summarization-comparisons")
    assert Counter(tldr.values_list("human_preference", flat=True)) == {"first": 6, "second": 5, "tie": 1}
    assert "demo-harmless [demo]: 16 prompts and 16 comparisons created" in out.getvalue()
    out = io.StringIO()
    call_command("load_demo_data", stdout=out)
    assert db_counts() == (3, 52, 28)
    assert "0 prompts and 0 comparisons created (16 and 16 already there)" in out.getvalue()


# --- Hugging Face datasets (--format hf) ---------------------------------------------------------------


def hf_data(tmp_path, rows, name):
    """Write ``rows`` with `datasets`: a .parquet or .jsonl file, or else a save_to_disk folder."""
    import datasets

    ds = datasets.Dataset.from_list(rows)
    path = tmp_path / name
    if name.endswith(".parquet"):
        ds.to_parquet(str(path))
    elif name.endswith(".jsonl"):
        ds.to_json(str(path), lines=True)
    else:
        ds.save_to_disk(str(path))
    return path


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


@pytest.mark.django_db
def test_hf_conversational_preferences_with_a_column_map_import_once(tmp_path):
    rows = [
        {"question": [user("Hi"), assistant("Hello."), user("How do I boil an egg?")],
         "better": [assistant("Nine minutes in boiling water.")], "worse": [assistant("Eggs cannot be boiled.")],
         "annotator": "ann-1"},
        {"question": [user("What is 2+2?")], "better": [assistant("4")], "worse": [assistant("5")],
         "annotator": None},
    ]
    path = hf_data(tmp_path, rows, "convo.parquet")
    out = io.StringIO()
    call_command("import_dataset", str(path), "--format", "hf", "--task", "helpful",
                 "--column-map", "prompt=question,chosen=better,rejected=worse", stdout=out)
    assert "Imported convo [train]" in out.getvalue() and "comparisons created 2" in out.getvalue()
    egg = Comparison.objects.get(prompt__context="\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: How do I boil an egg?")
    chosen_first = importers.first_by_hash(egg.prompt.context, "Nine minutes in boiling water.",
                                           "Eggs cannot be boiled.")
    assert (egg.response_a, egg.human_preference) == (
        ("Nine minutes in boiling water.", "first") if chosen_first else ("Eggs cannot be boiled.", "second"))
    assert egg.human_source == "dataset" and egg.judge_preference == ""
    assert egg.metadata == {"chosen_position": egg.human_preference, "annotator": "ann-1", "row": 1}
    assert egg.prompt.external_id == importers.context_id(egg.prompt.context)
    assert Dataset.objects.get().task.slug == "helpful"
    out = io.StringIO()
    call_command("import_dataset", str(path), "--format", "hf", "--task", "helpful",
                 "--column-map", "prompt=question,chosen=better,rejected=worse", stdout=out)
    assert "prompts created 0, existing 2; comparisons created 0, existing 2" in out.getvalue()
    assert db_counts() == (1, 2, 2)


@pytest.mark.django_db
def test_hf_prompt_only_and_prompt_completion_formats(tmp_path):
    post = "SUBREDDIT: r/cooking\n\nTITLE: Eggs\n\nPOST: How long do I boil an egg?"
    path = hf_data(tmp_path, [{"prompt": post + "\n\nTL;DR:", "prompt_id": "post-1", "score": 3.5},
                              {"prompt": "\n\nHuman: Hi\n\nAssistant:", "prompt_id": None, "score": float("nan")}],
                   "prompts.jsonl")
    job = import_file(path, "hf", task="summarization")
    assert job.status == "succeeded", job.error
    assert set(Prompt.objects.values_list("external_id", "context", "reference")) == {
        ("post-1", post, ""), (importers.context_id("\n\nHuman: Hi"), "\n\nHuman: Hi", "")}
    assert Prompt.objects.get(external_id="post-1").metadata == {"score": 3.5}
    assert Prompt.objects.exclude(external_id="post-1").get().metadata == {}  # NaN is no value
    folder = hf_data(tmp_path, [{"prompt": [user("Name a fruit.")], "completion": [assistant("An apple.")]}],
                     "completions")
    job = import_file(folder, "hf", task="helpful")
    assert job.status == "succeeded", job.error
    p = Prompt.objects.get(dataset__name="completions")
    assert (p.context, p.reference) == ("\n\nHuman: Name a fruit.", "An apple.")


@pytest.mark.django_db
def test_hf_implicit_prompts_read_like_hh(tmp_path):
    """TRL's implicit prompt: chosen and rejected hold the whole conversation, as text or as messages."""
    text = hf_data(tmp_path, [json.loads(line) for line in (DATA / "hh_small.jsonl").read_text().splitlines()],
                   "hh-like.jsonl")
    hh = parse_file(DATA / "hh_small.jsonl", "hh")
    hf = parse_file(text, "hf")
    assert [(p.response_a, p.response_b, p.human_preference) for p in hf.pairs] == \
           [(p.response_a, p.response_b, p.human_preference) for p in hh.pairs]
    assert hf.counts["skipped_context_mismatch"] == 1
    msgs = hf_data(tmp_path, [{"chosen": [user("Hi?"), assistant("Hello.")],
                               "rejected": [user("Hi?"), assistant("Go.")]}], "msgs.parquet")
    parsed = parse_file(msgs, "hf")
    assert parsed.prompts[0].context == "\n\nHuman: Hi?"
    assert {parsed.pairs[0].response_a, parsed.pairs[0].response_b} == {"Hello.", "Go."}


@pytest.mark.django_db
def test_hf_ai_source_and_soft_labels_become_an_ai_judges_label(tmp_path):
    path = hf_data(tmp_path, [
        {"prompt": "Q1", "chosen": "a", "rejected": "b", "source": "ai", "p_chosen": 0.8, "labeler": "judge"},
        {"prompt": "Q2", "chosen": "c", "rejected": "d", "source": "ai", "p_chosen": 0.5, "labeler": "judge"},
        {"prompt": "Q3", "chosen": "e", "rejected": "f", "source": "human", "p_chosen": 1.0, "labeler": None},
    ], "labels.jsonl")
    assert import_file(path, "hf", task="harmless").status == "succeeded"
    q1, q2, q3 = (Comparison.objects.get(prompt__context=q) for q in ("Q1", "Q2", "Q3"))
    assert (q1.human_preference, q1.judge_name, q1.metadata["p_chosen"]) == ("", "judge", 0.8)
    assert q1.judge_preference == ("first" if q1.response_a == "a" else "second")
    assert (q2.response_a, q2.response_b, q2.judge_preference) == ("c", "d", "tie")
    assert q3.human_preference in ("first", "second") and q3.judge_preference == "" and q3.judge_name == ""


HF_BAD = [
    # (rows, file name, column map, every part the message must name)
    ([{"prompt": "q", "chosen": "a", "rejected": "b"}], "x.jsonl", "chosen=better",
     ["x.jsonl", "column(s) the dataset does not have: chosen=better (its columns: prompt, chosen, rejected)"]),
    ([{"text": "q", "score": 1}], "x.parquet", "",
     ["x.parquet", "field 'prompt'", "has no 'prompt' column", "--column-map prompt=COLUMN"]),
    ([{"prompt": "q", "chosen": "a"}], "x.parquet", "", ["has 'chosen' but no 'rejected' column"]),
    ([{"prompt": "q", "completion": "a", "label": True}], "x.parquet", "", ["unpaired preference format"]),
    ([{"prompt": "q", "chosen": "a", "rejected": "b", "p_chosen": 0.2}], "x.jsonl", "",
     ["row 1", "field 'p_chosen'", "bad probability 0.2"]),
    ([{"prompt": [{"role": "tool", "content": "x"}], "chosen": "a", "rejected": "b"}], "x.jsonl", "",
     ["row 1", "field 'prompt'", "message 1 has role 'tool'"]),
    ([{"prompt": "ok", "chosen": "a", "rejected": "b"}, {"prompt": "q\u0000", "chosen": "a", "rejected": "b"}],
     "x.jsonl", "", ["row 2", "field 'prompt'", "NUL character"]),
    ([{"prompt": "q", "chosen": "a", "rejected": "b", "source": "robot"}], "x.jsonl", "",
     ["row 1", "field 'source'", "bad source 'robot'"]),
]


@pytest.mark.django_db
@pytest.mark.parametrize("rows,name,column_map,parts", HF_BAD, ids=range(len(HF_BAD)))
def test_bad_hf_data_fails_the_job_with_a_clear_message_and_writes_nothing(tmp_path, rows, name, column_map, parts):
    path = hf_data(tmp_path, rows, name)
    job = import_file(path, "hf", task="helpful", column_map=column_map)
    if job.status == "succeeded" or not job.error:
        raise AssertionError(f"expected a failure, got {job.status}: {job.result}")
    for part in parts:
        assert part in job.error
    assert "Traceback" not in job.error
    assert db_counts() == (0, 0, 0)


@pytest.mark.django_db
def test_hf_datasets_without_rows_or_not_datasets_are_refused(tmp_path):
    import datasets

    empty = tmp_path / "empty.parquet"
    datasets.Dataset.from_dict({"prompt": []}).to_parquet(str(empty))
    assert "empty.parquet: the dataset has no rows" in import_file(empty, "hf", task="helpful").error
    (tmp_path / "blank.jsonl").write_text("\n\n")
    assert "blank.jsonl: the dataset has no rows" in import_file(tmp_path / "blank.jsonl", "hf", task="helpful").error
    datasets.Dataset.from_dict({"prompt": []}).save_to_disk(str(tmp_path / "empty-folder"))
    assert "empty-folder: the dataset has no rows" in import_file(tmp_path / "empty-folder", "hf", task="helpful").error
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "notes.txt").write_text("hello")
    assert "folder: is a folder but not one written by datasets' save_to_disk" in \
        import_file(tmp_path / "folder", "hf", task="helpful").error
    (tmp_path / "broken.jsonl").write_text('{"prompt": "q"}\n{"prompt": \n')
    assert "broken.jsonl: cannot be read as a Hugging Face dataset" in \
        import_file(tmp_path / "broken.jsonl", "hf", task="helpful").error
    (tmp_path / "t.csv").write_text("prompt\nq\n")
    assert "the hf format reads .parquet and .jsonl files" in \
        import_file(tmp_path / "t.csv", "hf", task="helpful").error
    assert db_counts() == (0, 0, 0)


@pytest.mark.django_db
def test_hf_parameters_are_checked_before_queueing(tmp_path):
    with pytest.raises(ValidationError) as e:
        jobs.submit("import_dataset", {"path": str(tmp_path / "nothing-here"), "format": "hf", "task": "helpful"},
                   send=False)
    assert "File or folder not found (nor a hub id like org/name)" in str(e.value)
    with pytest.raises(ValidationError) as e:
        jobs.submit("import_dataset", {"path": str(DATA / "pairs.jsonl"), "format": "hf"}, send=False)
    assert "does not say which task" in str(e.value)
    with pytest.raises(ValidationError) as e:
        jobs.submit("import_dataset", {"path": str(DATA / "pairs.jsonl"), "format": "pairs-jsonl", "task": "helpful",
                                      "column_map": "context=question"}, send=False)
    assert "A column mapping is for the hf format, not 'pairs-jsonl'" in str(e.value)
    with pytest.raises(ValidationError) as e:
        jobs.submit("import_dataset", {"path": str(DATA / "pairs.jsonl"), "format": "hf", "task": "helpful",
                                      "column_map": "answer=chosen"}, send=False)
    assert "unknown field 'answer' in the column mapping; the fields are: prompt, chosen, rejected" in str(e.value)
    with pytest.raises(CommandError, match="column_map: bad column mapping 'chosen': write FIELD=COLUMN"):
        call_command("import_dataset", str(DATA / "pairs.jsonl"), "--format", "hf", "--task", "helpful",
                     "--column-map", "chosen", stdout=io.StringIO())
    assert Job.objects.count() == 0


@pytest.mark.django_db
def test_hf_hub_ids_are_loaded_with_datasets_at_the_imports_split(monkeypatch):
    """No network here: load_dataset is replaced, to check what the importer asks of it."""
    import datasets

    calls = []

    def fake_load_dataset(name, **kwargs):
        calls.append(name)
        if name == "nobody/offline":
            raise ConnectionError("Couldn't reach 'nobody/offline' on the Hub")
        return datasets.DatasetDict({split: datasets.Dataset.from_list([{"prompt": f"a {split} prompt"}])
                                     for split in ("train", "test")})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    job = import_file("someone/prompts", "hf", task="helpful", split="test")
    assert job.status == "succeeded", job.error
    assert calls == ["someone/prompts"]
    assert list(Prompt.objects.values_list("dataset__name", "dataset__split", "context")) == [
        ("prompts", "test", "a test prompt")]
    assert "has splits train, test; choose one" in import_file("someone/prompts", "hf", task="helpful",
                                                               split="validation").error
    job = import_file("nobody/offline", "hf", task="helpful")
    assert "cannot be read as a Hugging Face dataset: ConnectionError: Couldn't reach 'nobody/offline'" in job.error
