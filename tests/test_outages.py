"""Outages degrade instead of failing: a Redis the test starts and stops itself.

* Sessions are read through the Redis cache; while it is down people stay logged in, log in and
  log out against the database, and a session ended during the outage does not come back from
  Redis's old copy afterwards.
* A job submitted while the broker is down is kept (the researcher gets the job's page, not a
  500) and a worker sends and runs it once the broker is back.
"""
import json
import shutil
import socket
import subprocess
import sys
import time

import pytest
from django.contrib.auth.models import Group

from tests.conftest import ROOT, skip_or_fail
from tests.helpers import wait_for

REDIS_SERVER = shutil.which("redis-server")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivateRedis:
    """A redis-server of this test's own; ``stop`` saves its data so ``start`` brings it back."""

    def __init__(self, folder):
        self.folder = folder
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder),
             "--save", "", "--appendonly", "no", "--dbfilename", "dump.rdb"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_for(self.answers, timeout=20, interval=0.05, message="redis-server to start")
        return self

    def answers(self):
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self):
        subprocess.run(["redis-cli", "-p", str(self.port), "shutdown", "save"], capture_output=True, timeout=20)
        self.proc.wait(timeout=20)
        assert not self.answers()


@pytest.fixture
def private_redis(tmp_path):
    if not REDIS_SERVER:
        skip_or_fail("redis-server is not installed")
    redis = PrivateRedis(tmp_path).start()
    yield redis
    if redis.proc.poll() is None:
        redis.proc.kill()
        redis.proc.wait(timeout=10)


@pytest.fixture
def sessions_in(settings, private_redis):
    settings.CACHES = {"default": {
        "BACKEND": "evalsite.cache.RedisCache", "LOCATION": private_redis.url, "KEY_PREFIX": "outage-test",
        "OPTIONS": {"socket_connect_timeout": 1.0, "socket_timeout": 1.0},
    }}
    settings.SESSION_ENGINE = "django.contrib.sessions.backends.cached_db"
    return private_redis


def _annotator(django_user_model, name):
    user = django_user_model.objects.create_user(name, password=f"pw-{name}-long")
    user.groups.add(Group.objects.get_or_create(name="annotators")[0])
    return user


def _log_in(client, name):
    resp = client.post("/login/", {"username": name, "password": f"pw-{name}-long"})
    assert resp.status_code == 302 and resp.headers["Location"] == "/", resp.content[:500]


@pytest.mark.django_db
def test_sessions_survive_a_redis_outage(client, django_user_model, sessions_in):
    from django.conf import settings
    from django.test import Client

    redis = sessions_in
    _annotator(django_user_model, "ann1")
    _annotator(django_user_model, "ann2")
    _log_in(client, "ann1")
    assert client.get("/").status_code == 200
    cookie = client.cookies[settings.SESSION_COOKIE_NAME].value

    redis.stop()
    started = time.monotonic()
    for url in ("/", "/annotate/"):
        resp = client.get(url)
        assert resp.status_code == 200, (url, resp.status_code)  # still logged in: no redirect to /login/
        assert resp.context["user"].username == "ann1"
    assert time.monotonic() - started < 5  # a refused connection costs little

    other = Client()
    _log_in(other, "ann2")  # a new login is written to the database alone
    assert other.get("/annotate/").context["user"].username == "ann2"

    assert client.post("/logout/").status_code == 302  # ends ann1's session while Redis is down

    redis.start()  # with the copy of ann1's session it held when it stopped
    stale = Client()
    stale.cookies[settings.SESSION_COOKIE_NAME] = cookie
    resp = stale.get("/")
    assert resp.status_code == 302 and resp.headers["Location"].startswith("/login/"), (
        "the session ended during the outage came back from Redis")
    assert other.get("/").status_code == 200  # and ann2's, made during the outage, still works


@pytest.mark.django_db
def test_the_cache_treats_an_unreachable_redis_as_a_miss(sessions_in):
    from django.core.cache import cache

    cache.set("report", {"rows": 3})
    assert cache.get("report") == {"rows": 3}
    sessions_in.stop()
    assert cache.get("report") is None
    assert cache.get("report", "default") == "default"
    cache.set("report", {"rows": 4})  # goes nowhere, and is remembered as not written
    assert cache.get_many(["report", "x"]) == {}
    sessions_in.start()
    assert cache.get("report") is None  # the copy from before the outage was dropped, not served
    cache.set("report", {"rows": 5})
    assert cache.get("report") == {"rows": 5}


SUBMIT_DURING_OUTAGE = """
import json
import time
import django
django.setup()
from django.test.utils import setup_test_environment
setup_test_environment()
from django.contrib.auth import get_user_model
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from evalsite.jobs.models import Job

client = Client()
client.force_login(get_user_model().objects.get(username="researcher"))
started = time.monotonic()
upload = SimpleUploadedFile("prompts.csv", b"context\\nWhat is RLAIF?\\nName a reward model.\\n")
resp = client.post("/admin/evalsite/dataset/import/",
                   {"file": upload, "format": "prompts-csv", "task": "helpful", "split": "train", "name": "outage"})
job = Job.objects.get()
print(json.dumps([resp.status_code, resp.headers.get("Location"), job.status, str(job.sent_at), job.message,
                  time.monotonic() - started]))
"""


@pytest.mark.worker
def test_a_job_submitted_while_the_broker_is_down_runs_once_it_is_back(researcher, worker_env, start_worker,
                                                                        private_redis):
    from evalsite.models import Dataset
    from evalsite.jobs.models import Job

    env = {**worker_env, "CELERY_BROKER_URL": private_redis.url, "JOB_SWEEP_SECONDS": "0.5",
           "JOB_RESEND_AFTER_SECONDS": "1"}
    private_redis.stop()
    out = subprocess.run([sys.executable, "-c", SUBMIT_DURING_OUTAGE], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-4000:]
    status, location, job_status, sent_at, message, seconds = json.loads(out.stdout.splitlines()[-1])
    job = Job.objects.get()
    assert status == 302 and location == f"/admin/jobs/job/{job.pk}/change/"
    assert job_status == "queued" and sent_at == "None" and "waiting for the broker" in message
    assert seconds < 10

    private_redis.start()
    worker = start_worker(extra_env=env)
    wait_for(lambda: Job.objects.get(pk=job.pk).status in Job.FINISHED, timeout=90,
             message="the worker's sweep to send the job and the worker to run it")
    job.refresh_from_db()
    assert job.status == "succeeded", (job.error, worker.read_log()[-3000:])
    assert job.sent_at is not None and job.attempts == 1
    assert Dataset.objects.get(name="outage").prompts.count() == 2
