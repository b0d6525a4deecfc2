"""Labeler configs: the API key comes only from variables the operator allowed (LABELER_API_KEY_VARS),
numeric settings have bounds, and a config stored before these rules cannot start or run a labeling job.

The refusals are checked through ``full_clean``, the admin's add form, the admin's start page and
real labeling jobs against a real HTTP server that records what it was sent."""
import json
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator

from evalsite.jobs import runtime as jobs
from evalsite.models import Comparison, Dataset, Prompt, Task
from evalsite.jobs.models import Job
from labeling import runs
from labeling.backends import BackendError, make_backend
from labeling.forms import StartLabelingForm
from labeling.models import AILabel, LabelerConfig

ALLOWED = "LABELER_TEST_API_KEY"


class RecordingServer:
    """A real completions server that answers every request with label log-probs and keeps the
    Authorization header of each request it received."""

    def __init__(self):
        self.authorizations = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                server.authorizations.append(self.headers.get("Authorization"))
                body = json.dumps({"choices": [{"text": "1", "logprobs": {
                    "top_logprobs": [{"1": math.log(0.6), "2": math.log(0.3)}]}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        host, port = self.httpd.server_address[:2]
        self.url = f"http://{host}:{port}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def recording_server():
    server = RecordingServer()
    yield server
    server.stop()


@pytest.fixture
def allow_list(settings, monkeypatch):
    settings.LABELER_API_KEY_VARS = [ALLOWED]
    monkeypatch.setenv(ALLOWED, "sk-allowed-test-key")
    monkeypatch.setenv("SECRET_KEY", "the-site-secret-key-must-stay-home")
    return settings


def harmless():
    return Task.objects.get(slug="harmless")


def server_config(url="http://127.0.0.1:9/v1", **fields):
    return LabelerConfig(name=fields.pop("name", "srv"), task=harmless(), backend="server", server_url=url, **fields)


def make_comparisons(n=2):
    ds = Dataset.objects.create(name="validation-pairs", split="test", task=harmless())
    for i in range(n):
        p = Prompt.objects.create(dataset=ds, external_id=str(i), context=f"Human: question {i}?")
        Comparison.objects.create(prompt=p, response_a=f"A kind answer {i}.", response_b=f"A rude answer {i}!")
    return ds


# ---- API key variables -----------------------------------------------------------------------
@pytest.mark.django_db
@pytest.mark.parametrize("name", ["SECRET_KEY", "DATABASE_URL", "SOME_UNLISTED_KEY"])
def test_full_clean_refuses_a_key_variable_that_is_not_allowed(allow_list, name):
    config = server_config(api_key_env=name)
    with pytest.raises(ValidationError) as e:
        config.full_clean()
    message = " ".join(e.value.message_dict["api_key_env"])
    assert name in message and "LABELER_API_KEY_VARS" in message and ALLOWED in message
    assert list(e.value.message_dict) == ["api_key_env"]


@pytest.mark.django_db
def test_an_allowed_key_variable_is_accepted_and_empty_allow_list_refuses_all(settings, allow_list, monkeypatch):
    server_config(api_key_env=ALLOWED).full_clean()
    server_config(name="no key").full_clean()  # no key at all is fine
    assert server_config(api_key_env=ALLOWED).backend_options()[1]["api_key"] == "sk-allowed-test-key"
    monkeypatch.delenv(ALLOWED)
    with pytest.raises(BackendError, match=f"{ALLOWED} is allowed but not set"):
        server_config(api_key_env=ALLOWED).backend_options()
    settings.LABELER_API_KEY_VARS = []
    with pytest.raises(ValidationError, match="now: none"):
        server_config(api_key_env=ALLOWED).full_clean()


def test_the_backend_core_takes_the_key_not_a_variable_name(recording_server, monkeypatch):
    monkeypatch.setenv("SECRET_KEY", "the-site-secret-key-must-stay-home")
    with pytest.raises(TypeError, match="api_key_env"):
        make_backend("server", url=recording_server.url, api_key_env="SECRET_KEY")
    make_backend("server", url=recording_server.url, api_key="sk-given").top_logprobs("Answer=")
    make_backend("server", url=recording_server.url).top_logprobs("Answer=")
    assert recording_server.authorizations == ["Bearer sk-given", None]


# ---- numeric bounds ---------------------------------------------------------------------------
BAD_VALUES = [
    ("threads", 10**9), ("threads", 257),
    ("batch_size", 10**9), ("batch_size", 0),
    ("self_consistency_k", 10**9), ("self_consistency_k", 0),
    ("server_concurrency", 10**9), ("server_concurrency", 0),
    ("cot_max_tokens", 10**9), ("cot_max_tokens", 0),
    ("max_prompt_tokens", 10**9),
    ("server_timeout_s", -5.0), ("server_timeout_s", 0.0), ("server_timeout_s", 1e9), ("server_timeout_s", math.nan),
    ("server_timeout_s", math.inf),
    ("self_consistency_temperature", -0.1), ("self_consistency_temperature", 1e6),
    ("self_consistency_temperature", math.nan), ("self_consistency_temperature", -math.inf),
]


@pytest.mark.django_db
@pytest.mark.parametrize("field,value", BAD_VALUES)
def test_full_clean_refuses_out_of_range_numbers(field, value):
    config = server_config(**{field: value})
    with pytest.raises(ValidationError) as e:
        config.full_clean()
    assert list(e.value.message_dict) == [field]


@pytest.mark.django_db
def test_the_bounds_themselves_are_accepted():
    server_config(threads=256, batch_size=1024, self_consistency_k=32, chain_of_thought=True,
                  server_concurrency=128, cot_max_tokens=8192, max_prompt_tokens=1_000_000,
                  server_timeout_s=3600.0, self_consistency_temperature=2.0).full_clean()
    server_config(name="low", threads=0, batch_size=1, self_consistency_k=1, server_concurrency=1, cot_max_tokens=1,
                  max_prompt_tokens=0, server_timeout_s=1.0, self_consistency_temperature=0.0).full_clean()


def test_help_texts_state_the_upper_bounds():
    for name in ("threads", "batch_size", "self_consistency_k", "server_concurrency", "cot_max_tokens",
                 "max_prompt_tokens", "server_timeout_s", "self_consistency_temperature", "server_top_logprobs",
                 "reask_top_logprobs", "price_prompt_per_mtok", "price_completion_per_mtok"):
        field = LabelerConfig._meta.get_field(name)
        (high,) = [v.limit_value for v in field.validators if isinstance(v, MaxValueValidator)]
        assert str(high).removesuffix(".0") in field.help_text, (name, field.help_text)


# ---- the admin's add form ---------------------------------------------------------------------
def admin_form_data(**changes):
    data = {"name": "hosted", "task": harmless().pk, "notes": "", "backend": "server", "model_path": "",
            "server_url": "http://127.0.0.1:9/v1", "server_model": "m", "api_key_env": "", "dtype": "auto",
            "threads": "0", "chat_template": "auto", "batch_size": "8", "server_concurrency": "4",
            "server_timeout_s": "60", "preamble_variant": "base", "template_overrides": "{}", "exemplars": "[]",
            "max_prompt_tokens": "0", "cot_max_tokens": "512", "self_consistency_k": "1",
            "self_consistency_temperature": "1.0", "server_top_logprobs": "20", "absent_labels": "keep",
            "reask_top_logprobs": "20", "chat_preamble_role": "system", "chat_exemplars": "turns",
            "price_prompt_per_mtok": "0", "price_completion_per_mtok": "0"}
    return {**data, **changes}


@pytest.mark.django_db
def test_admin_add_form_refuses_secrets_and_huge_numbers(client, researcher, allow_list):
    client.force_login(researcher)
    url = "/admin/labeling/labelerconfig/add/"
    r = client.post(url, admin_form_data(api_key_env="SECRET_KEY", threads=str(10**9), batch_size=str(10**9),
                                         self_consistency_k=str(10**9), server_concurrency=str(10**9),
                                         server_timeout_s="-5"))
    assert r.status_code == 200
    errors = r.context["adminform"].form.errors
    assert set(errors) == {"api_key_env", "threads", "batch_size", "self_consistency_k", "server_concurrency",
                           "server_timeout_s"}
    assert "LABELER_API_KEY_VARS" in errors["api_key_env"][0]
    assert "less than or equal to 256" in errors["threads"][0]
    assert "greater than or equal to 1" in errors["server_timeout_s"][0]
    r = client.post(url, admin_form_data(api_key_env="DATABASE_URL", self_consistency_temperature="nan"))
    assert r.status_code == 200
    assert set(r.context["adminform"].form.errors) == {"api_key_env", "self_consistency_temperature"}
    assert not LabelerConfig.objects.exists()

    r = client.post(url, admin_form_data(api_key_env=ALLOWED))
    assert r.status_code == 302
    assert LabelerConfig.objects.get().api_key_env == ALLOWED


# ---- starting and running with a config stored before the rules -------------------------------
@pytest.mark.django_db
def test_starting_from_a_stored_config_out_of_bounds_is_a_form_error(client, researcher):
    ds = make_comparisons()
    config = server_config()
    config.save()
    # Rows written before the bounds existed (or with update(), which skips validation).
    LabelerConfig.objects.filter(pk=config.pk).update(server_timeout_s=-5.0, threads=10**9)
    client.force_login(researcher)
    r = client.post("/admin/labeling/labelerconfig/", {"action": "start_labeling", "_selected_action": [config.pk]})
    assert r.status_code == 302 and r["Location"] == f"/admin/labeling/labelerconfig/{config.pk}/label/"
    assert client.get(r["Location"]).status_code == 200
    r = client.post(r["Location"], {"dataset": ds.pk, "chunk_size": 5})
    assert r.status_code == 200
    page = r.content.decode()
    assert "cannot be used" in page and "server_timeout_s" in page and "threads" in page
    with pytest.raises(ValidationError, match="server_timeout_s"):
        jobs.submit("label", {"config_id": config.pk, "dataset_id": ds.pk}, send=False)
    assert not Job.objects.exists()


@pytest.mark.django_db
def test_the_start_form_refuses_bad_selections_without_a_500(client, researcher):
    ds = make_comparisons()
    config = server_config()
    config.save()
    client.force_login(researcher)
    url = f"/admin/labeling/labelerconfig/{config.pk}/label/"
    for data, field in [({"dataset": "10000000000000000000000", "chunk_size": 5}, "dataset"),
                        ({"comparison_ids": "1, x", "chunk_size": 5}, "comparison_ids"),
                        ({"comparison_ids": "10000000000000000000000", "chunk_size": 5}, "comparison_ids"),
                        ({"policies": ["10000000000000000000000"], "chunk_size": 5}, "policies"),
                        ({"policies": ["-10000000000000000000000"], "chunk_size": 5}, "policies"),
                        ({"policies": ["1.5"], "chunk_size": 5}, "policies"),
                        ({"dataset": ds.pk, "limit": "0", "chunk_size": 5}, "limit"),
                        ({"dataset": ds.pk, "limit": "10000000000000000000000", "chunk_size": 5}, "limit"),
                        ({"dataset": ds.pk, "chunk_size": "10000000000"}, "chunk_size")]:
        r = client.post(url, data)
        assert r.status_code == 200, data
        assert field in r.context["form"].errors, (data, r.context["form"].errors)
    for params in ({"limit": 10**22}, {"comparison_ids": [10**22]}, {"prompt_ids": [-(10**22)]}):
        with pytest.raises(ValidationError, match="from 1 to 9223372036854775807"):
            jobs.submit("label", {"config_id": config.pk, "dataset_id": ds.pk, **params}, send=False)
    assert not Job.objects.exists()


@pytest.mark.django_db
def test_a_stored_secret_variable_is_never_sent(allow_list, recording_server):
    ds = make_comparisons()
    config = server_config(url=recording_server.url)
    config.save()
    # A config saved before the allow-list existed.
    LabelerConfig.objects.filter(pk=config.pk).update(api_key_env="SECRET_KEY")
    config.refresh_from_db()
    form = StartLabelingForm({"dataset": ds.pk, "chunk_size": 5}, config=config)
    assert not form.is_valid() and "LABELER_API_KEY_VARS" in str(form.errors)
    with pytest.raises(ValidationError, match="LABELER_API_KEY_VARS"):
        jobs.submit("label", {"config_id": config.pk, "dataset_id": ds.pk}, send=False)
    # The labeling layer refuses too, before any backend exists.
    with pytest.raises(BackendError, match="LABELER_API_KEY_VARS"):
        config.backend_options()
    assert recording_server.authorizations == [] and not Job.objects.exists()


@pytest.mark.django_db
def test_a_run_whose_variable_was_taken_off_the_list_fails_without_sending_it(settings, allow_list,
                                                                            recording_server):
    ds = make_comparisons(2)
    config = server_config(url=recording_server.url, api_key_env=ALLOWED)
    config.full_clean()
    config.save()
    form = StartLabelingForm({"dataset": ds.pk, "chunk_size": 5}, config=config)
    assert form.is_valid(), form.errors
    assert recording_server.authorizations == ["Bearer sk-allowed-test-key"]  # the probe
    run = jobs.submit("label", form.params, send=False)
    assert jobs.execute(run.pk) == "running"  # its chunks do the work

    settings.LABELER_API_KEY_VARS = []  # the operator took it off the list before a worker ran the chunk
    (chunk,) = Job.objects.filter(parent=run)
    assert jobs.execute(chunk.pk) == "failed"
    chunk.refresh_from_db()
    assert "LABELER_API_KEY_VARS" in chunk.error and ALLOWED in chunk.error
    run.refresh_from_db()
    assert run.status == "failed" and "LABELER_API_KEY_VARS" in run.error
    assert recording_server.authorizations == ["Bearer sk-allowed-test-key"]  # nothing more was sent
    assert not AILabel.objects.exists()


@pytest.mark.django_db
def test_a_chunk_refuses_a_config_changed_out_of_bounds_after_its_run_started(allow_list, recording_server):
    ds = make_comparisons(2)
    config = server_config(url=recording_server.url, name="later-broken")
    config.save()
    run = jobs.submit("label", {"config_id": config.pk, "dataset_id": ds.pk}, send=False)
    assert jobs.execute(run.pk) == "running"  # its chunks do the work
    LabelerConfig.objects.filter(pk=config.pk).update(server_timeout_s=-5.0)
    (chunk,) = Job.objects.filter(parent=run)
    assert jobs.execute(chunk.pk) == "failed"
    chunk.refresh_from_db()
    assert "cannot be used" in chunk.error and "server_timeout_s" in chunk.error
    assert recording_server.authorizations == [] and not AILabel.objects.exists()
