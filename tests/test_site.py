"""Pages render for a logged-in researcher; settings behave safely; docker-compose agrees with settings."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from django.urls import reverse

from evalsite.jobs.models import Job
from evalsite.jobs import runtime as jobs

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("url", [
    "/", "/admin/", "/admin/jobs/job/", "/admin/evalsite/dataset/", "/admin/evalsite/policy/",
    "/admin/evalsite/comparison/", "/admin/evalsite/prompt/",
])
def test_pages_render_for_researcher(client, researcher, url):
    client.force_login(researcher)
    r = client.get(url)
    assert r.status_code == 200, url
    assert b"RLAIF workbench" in r.content


def test_job_page_shows_progress_log_and_cancel_button(client, researcher):
    job = jobs.submit("noop", {"steps": 2}, send=False)
    Job.objects.filter(pk=job.pk).update(status="running", progress=0.42, message="step 1/2", log="hello log\n")
    client.force_login(researcher)
    r = client.get(reverse("admin:jobs_job_change", args=[job.pk]))
    html = r.content.decode()
    assert r.status_code == 200
    assert 'id="job-progress"' in html and 'value="0.42"' in html
    assert "hello log" in html and "Cancel job" in html
    r = client.get(reverse("jobs:detail-json", args=[job.pk]))
    assert r.json()["progress"] == 0.42 and r.json()["status"] == "running"
    r = client.get(reverse("jobs:status") + f"?ids={job.pk},abc")
    assert [j["id"] for j in r.json()["jobs"]] == [job.pk]


def test_cancel_and_resume_buttons(client, researcher):
    job = jobs.submit("noop", {}, send=False)
    client.force_login(researcher)
    client.post(reverse("admin:jobs_job_cancel", args=[job.pk]))
    job.refresh_from_db()
    assert job.status == "cancelled"
    client.post(reverse("admin:jobs_job_resume", args=[job.pk]))
    job.refresh_from_db()
    assert job.status == "queued"


def test_job_feeds_need_the_view_job_permission(client, django_user_model):
    user = django_user_model.objects.create_user("ann", password="pw")
    client.force_login(user)
    assert client.get(reverse("jobs:status")).status_code == 403
    assert client.get("/admin/").status_code == 302


def test_home_requires_login(client):
    r = client.get("/")
    assert r.status_code == 302 and "/login/" in r["Location"]


def test_login_page_and_login(client, researcher):
    assert client.get("/login/").status_code == 200
    r = client.post("/login/", {"username": "researcher", "password": "pw-researcher"})
    assert r.status_code == 302
    assert client.get("/").status_code == 200


def _manage(*args, env):
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


def test_check_deploy_is_clean_when_debug_is_off(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DEBUG", "DJANGO_SETTINGS_MODULE", "DJANGO_ALLOW_ASYNC_UNSAFE")}
    env.update(DEBUG="0", SECRET_KEY="x" * 20 + "-a-long-random-production-secret-" + "y" * 20,
               ALLOWED_HOSTS="rlaif.example.org", EVALSITE_VAR_DIR=str(tmp_path))
    r = _manage("check", "--deploy", "--fail-level", "WARNING", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "no issues" in r.stdout


def test_production_refuses_to_start_without_secret_key(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DEBUG", "SECRET_KEY", "DJANGO_SETTINGS_MODULE")}
    env.update(DEBUG="0", EVALSITE_VAR_DIR=str(tmp_path))
    r = _manage("check", env=env)
    assert r.returncode != 0
    assert "Set SECRET_KEY" in r.stderr


def test_embedded_defaults_need_no_services(tmp_path):
    """With no DATABASE_URL/REDIS_URL: SQLite under var/ and the filesystem broker."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "DJANGO_SETTINGS_MODULE")}
    env.update(DEBUG="1", EVALSITE_VAR_DIR=str(tmp_path))
    code = ("from django.conf import settings as s; print(s.DATABASES['default']['ENGINE']); "
            "print(s.DATABASES['default']['NAME']); print(s.CELERY_BROKER_URL); print(s.CELERY_RESULT_BACKEND)")
    r = _manage("shell", "-v", "0", "-c", code, env=env)
    engine, name, broker, backend = r.stdout.split()
    assert engine == "django.db.backends.sqlite3" and name.startswith(str(tmp_path))
    assert broker == "filesystem://" and backend == "django-db"
    env.update(DATABASE_URL="postgres://u:p@db:5432/x", REDIS_URL="redis://cache:6379/1")
    engine, name, broker, backend = _manage("shell", "-v", "0", "-c", code, env=env).stdout.split()
    assert engine == "evalsite.postgres" and name == "x" and broker == "redis://cache:6379/1"  # Django's, cheaper health check


def test_docker_compose_agrees_with_settings():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"postgres", "redis", "web", "worker"} <= set(services)
    for name in ("postgres", "redis", "web", "worker"):
        assert "healthcheck" in services[name], name
    pg = services["postgres"]["environment"]
    for name in ("web", "worker"):
        env = services[name]["environment"]
        assert env["DATABASE_URL"] == (
            f"postgres://{pg['POSTGRES_USER']}:{pg['POSTGRES_PASSWORD']}@postgres:5432/{pg['POSTGRES_DB']}"
        )
        assert env["REDIS_URL"].startswith("redis://redis:6379")
        assert env["DEBUG"] == "0" and "SECRET_KEY" in env
        assert "var:/app/var" in services[name]["volumes"]
        assert services[name]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "gunicorn evalsite.wsgi" in services["web"]["command"]
    worker_cmd = services["worker"]["command"]
    assert worker_cmd[:4] == ["celery", "-A", "evalsite", "worker"]
    # The worker must listen on the queue the app sends to (settings' default).
    from django.conf import settings as s
    import evalsite.settings as prod
    assert worker_cmd[worker_cmd.index("-Q") + 1] == "evalsite"
    assert prod.env("CELERY_TASK_DEFAULT_QUEUE", default="evalsite") in ("evalsite", s.CELERY_TASK_DEFAULT_QUEUE)
    assert {"pgdata", "var"} <= set(compose["volumes"])
    assert "/var/lib/postgresql/data" in services["postgres"]["volumes"][0]
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "torch==2.13.0" in dockerfile and "collectstatic" in dockerfile


def test_auth_backend_reads_each_user_as_the_orm_does(django_user_model):
    from evalsite.auth import ModelBackend

    u = django_user_model.objects.create_user("reader", email="r@example.org", password="pw", first_name="Ada",
                                              is_staff=True)
    got = ModelBackend().get_user(u.pk)
    orm = django_user_model.objects.get(pk=u.pk)
    assert got is not None and got._state.adding is False
    for f in django_user_model._meta.concrete_fields:
        assert getattr(got, f.attname) == getattr(orm, f.attname), f.name
    assert got.date_joined.tzinfo is not None and got.is_staff is True and got.check_password("pw")
    assert ModelBackend().get_user(str(u.pk)).pk == u.pk  # sessions keep the id as a string
    assert ModelBackend().get_user(u.pk + 1000) is None
    assert ModelBackend().get_user("not-a-number") is None
    django_user_model.objects.filter(pk=u.pk).update(is_active=False)
    assert ModelBackend().get_user(u.pk) is None


def test_redis_cache_keeps_its_client_and_round_trips_values(redis_url):
    import uuid

    from evalsite.cache import RedisCache

    cache = RedisCache(redis_url, {"KEY_PREFIX": f"test-{uuid.uuid4().hex}"})
    client = cache._cache.get_client()
    assert cache._cache.get_client() is client and cache._cache.get_client(write=True) is client
    cache.set("session", {"user": 7, "when": [1, 2]}, 30)
    assert cache.get("session") == {"user": 7, "when": [1, 2]}
    cache.delete("session")
    assert cache.get("session", "gone") == "gone"


@pytest.mark.django_db(transaction=True)
def test_a_dropped_database_connection_is_replaced_before_the_next_request(client, researcher):
    """The server drops a worker's persistent connection (restart, failover): the next request
    notices before its first query, without a SELECT 1, and runs on a new connection."""
    from django.db import close_old_connections, connections

    connection = connections["default"]
    if connection.vendor != "postgresql":
        pytest.skip("needs a database server that can drop a connection")
    assert type(connection).__module__ == "evalsite.postgres.base"
    client.force_login(researcher)
    import psycopg

    connection.ensure_connection()
    conn = connection.connection

    def no_query(*args, **kwargs):
        raise AssertionError("the health check sent a query")

    conn.cursor = no_query
    try:
        assert connection.is_usable()
    finally:
        del conn.cursor
    old_pid = conn.info.backend_pid

    params = connection.get_connection_params()
    with psycopg.connect(**{k: v for k, v in params.items() if k in ("host", "port", "user", "dbname", "password")},
                         autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", [old_pid])
        admin.execute("SELECT pg_sleep(0.2)")  # the goodbye reaches the socket
    assert not connection.is_usable()
    assert connection.settings_dict["CONN_MAX_AGE"] > 0  # kept, not closed for its age
    close_old_connections()  # what a server does as a request starts (the test client leaves it out)
    r = client.get(reverse("home"))
    assert r.status_code == 200 and researcher.username in r.content.decode()
    assert connection.connection.info.backend_pid != old_pid
