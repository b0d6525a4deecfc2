"""Shared fixtures: real Celery workers, the tiny model, the shared data folder, users."""
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from evalsite.processes import kill_group, stop_group

# Playwright's sync API runs an event loop in the test thread; the ORM calls tests make beside it
# are still plain synchronous code.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("SHARED_DATA_DIR", ROOT.parent / "shared" / "data"))
# CI sets this: a missing service or data folder is then a failure, not a silent skip.
REQUIRE_SERVICES = os.environ.get("EVALSITE_REQUIRE_SERVICES") == "1"


def skip_or_fail(reason):
    """Skip where an optional service is absent (a laptop); fail in CI, where it must be there."""
    if REQUIRE_SERVICES:
        pytest.fail(f"required for CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def shared_data():
    """The real data folder (../shared/data); tests that need it skip where it is absent."""
    if not SHARED_DATA.is_dir():
        skip_or_fail(f"real data folder {SHARED_DATA} is absent (it exists only beside the project checkout)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny random GPT-2 with its own small tokenizer, built once per test session."""
    from evalsite.modelzoo import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def tiny_chat_model_dir(tmp_path_factory):
    """The tiny model with a chat template, for instruct-model code paths."""
    from evalsite.modelzoo import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-chat-model"), chat_template=True)


CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="session")
def browser():
    """Headless Debian Chromium driven by Playwright (skips where Chromium is not installed)."""
    if not Path(CHROMIUM).exists():
        skip_or_fail(f"Chromium not found at {CHROMIUM} (Debian: apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def researcher(db, django_user_model):
    return django_user_model.objects.create_user("researcher", password="pw-researcher", is_staff=True,
                                                 is_superuser=True)


def _redis_reachable(url):
    from urllib.parse import urlparse

    u = urlparse(url)
    try:
        with socket.create_connection((u.hostname or "127.0.0.1", u.port or 6379), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture
def redis_url():
    """REDIS_URL (or the local default) where Redis answers; skip (fail in CI) where it does not."""
    url = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
    if not _redis_reachable(url):
        skip_or_fail(f"Redis at {url} is not reachable")
    return url


def _database_url_for_worker(connection):
    s = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{s['NAME']}"
    if connection.vendor == "postgresql":
        auth = s["USER"] + (f":{s['PASSWORD']}" if s.get("PASSWORD") else "")
        return f"postgres://{auth}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{s['NAME']}"
    pytest.skip(f"worker tests do not support the {connection.vendor} backend")


class WorkerProcess:
    """A real ``celery worker`` process on this test session's queue and test database."""

    def __init__(self, env, name, concurrency=1, extra_env=None):
        self.env = {**env, **(extra_env or {})}
        self.name = name
        self.concurrency = concurrency
        self.proc = None
        self.logfile = ROOT / "var" / f"test-worker-{name}.log"

    def start(self, wait=True):
        self.logfile.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.logfile, "ab")
        self._log_start = self.logfile.stat().st_size  # a restart under the same name appends
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "evalsite", "worker", "-l", "info", "-P", "prefork",
             "-c", str(self.concurrency), "-n", f"{self.name}@%h", "-Q", self.env["CELERY_TASK_DEFAULT_QUEUE"],
             "--without-gossip", "--without-mingle", "--without-heartbeat"],
            cwd=ROOT, env=self.env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout=60):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}:\n{self.read_log()[-6000:]}")
            if b" ready." in self.logfile.read_bytes()[self._log_start:]:
                return
            time.sleep(0.2)
        raise TimeoutError(f"worker not ready after {timeout}s:\n{self.read_log()[-3000:]}")

    def read_log(self):
        return self.logfile.read_text(errors="replace")

    def kill(self):
        """SIGKILL the whole worker (main process and pool children), as a crash would."""
        if self.proc:
            kill_group(self.proc)

    def stop(self):
        """SIGTERM the worker's group (a warm shutdown), SIGKILL what is left after 20 s."""
        if self.proc:
            stop_group(self.proc, grace=20)
        if getattr(self, "_log", None):
            self._log.close()


@pytest.fixture
def worker_env(transactional_db, settings):
    """Environment for worker processes that share this test's database and broker queue."""
    from django.db import connection

    broker = settings.CELERY_BROKER_URL
    if broker.startswith("redis") and not _redis_reachable(broker):
        skip_or_fail(f"Redis broker {broker} is not reachable")
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "evalsite.test_settings",
        "DATABASE_URL": _database_url_for_worker(connection),
        "CELERY_BROKER_URL": broker,
        "CELERY_TASK_DEFAULT_QUEUE": settings.CELERY_TASK_DEFAULT_QUEUE,
        "PYTHONUNBUFFERED": "1",
    }
    return env


@pytest.fixture
def start_worker(worker_env):
    """Factory: ``start_worker(name=..., concurrency=...)`` starts a real worker; all are stopped after."""
    workers = []

    def start(name=None, concurrency=1, wait=True, extra_env=None):
        w = WorkerProcess(worker_env, name or f"w{len(workers)}-{uuid.uuid4().hex[:6]}", concurrency, extra_env)
        workers.append(w)
        return w.start(wait=wait)

    yield start
    for w in workers:
        w.stop()


@pytest.fixture
def celery_worker_process(start_worker):
    """One real worker process for the test."""
    return start_worker()
