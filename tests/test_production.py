"""Production as the Dockerfile and docker-compose run it: collectstatic and gunicorn with DEBUG=0.

With DEBUG off, static files are served by WhiteNoise from hashed names listed in a manifest that
``collectstatic`` writes; a page that names a file missing from the manifest answers 500, and
``collectstatic`` itself stops on a reference (such as a source map) to a file that does not exist.
"""
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from evalsite.processes import stop_group
from tests.conftest import ROOT, _database_url_for_worker

pytestmark = pytest.mark.worker  # starts real processes


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url, timeout=10):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


@pytest.fixture
def production_env(transactional_db, tmp_path):
    """The environment docker-compose gives the web container, on this test's database."""
    from django.db import connection

    env = {k: v for k, v in os.environ.items() if k not in ("DJANGO_SETTINGS_MODULE", "DEBUG", "STATIC_MANIFEST")}
    env.update(
        DJANGO_SETTINGS_MODULE="evalsite.settings",
        DEBUG="0",
        SECRET_KEY="production-test-" + "x" * 50,
        ALLOWED_HOSTS="127.0.0.1,localhost",
        # docker-compose's defaults: plain HTTP behind the compose network.
        SECURE_SSL_REDIRECT="0", SESSION_COOKIE_SECURE="0", CSRF_COOKIE_SECURE="0",
        DATABASE_URL=_database_url_for_worker(connection),
        EVALSITE_VAR_DIR=str(tmp_path / "var"),
        STATIC_ROOT=str(tmp_path / "staticfiles"),
        PYTHONUNBUFFERED="1",
    )
    return env


def test_collectstatic_and_gunicorn_serve_pages_and_static_files_with_debug_off(production_env, tmp_path):
    collect = subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput"],
        cwd=ROOT, env=production_env, capture_output=True, text=True, timeout=300,
    )
    assert collect.returncode == 0, collect.stdout[-3000:] + collect.stderr[-3000:]
    manifest = tmp_path / "staticfiles" / "staticfiles.json"
    assert manifest.is_file(), "collectstatic with DEBUG=0 wrote no manifest"

    port = _free_port()
    log = open(tmp_path / "gunicorn.log", "wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "evalsite.wsgi", "--bind", f"127.0.0.1:{port}", "--workers", "1",
         "--threads", "2"],
        cwd=ROOT, env=production_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.time() + 60
        while True:
            try:
                status, body, _ = _get(base + "/login/")
                break
            except (ConnectionError, urllib.error.URLError):
                assert server.poll() is None, (tmp_path / "gunicorn.log").read_text()[-3000:]
                assert time.time() < deadline, "gunicorn did not answer within 60 s"
                time.sleep(0.3)
        page = body.decode()
        assert status == 200, page[-2000:] + (tmp_path / "gunicorn.log").read_text()[-3000:]
        assert 'name="password"' in page

        # The page links its stylesheet under the hashed name, and WhiteNoise serves that file.
        css = re.search(r'href="(/static/evalsite/site\.[0-9a-f]{12}\.css)"', page)
        assert css, "the login page does not link the hashed site.css"
        status, body, headers = _get(base + css.group(1))
        assert status == 200 and b"{" in body
        assert "max-age=315360000" in headers.get("Cache-Control", ""), headers  # hashed: cached for good

        # The vendored Chart.js and the source map it names are both served.
        status, body, _ = _get(base + "/static/vendor/chart-4.6.1.umd.min.js")
        assert status == 200 and b"Chart" in body
        status, body, _ = _get(base + "/static/vendor/chart.umd.min.js.map")
        assert status == 200 and body.startswith(b"{")

        # The health check docker-compose runs against the web container.
        check = subprocess.run(
            [sys.executable, "-c", f"import urllib.request; urllib.request.urlopen('{base}/login/')"],
            capture_output=True, timeout=30,
        )
        assert check.returncode == 0, check.stderr
    finally:
        stop_group(server, grace=20)
        log.close()


def test_compose_and_dockerfile_collect_static_files_with_debug_off():
    """The image collects with the settings it runs with; DEBUG=1 there skips the manifest."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    collect = [line for line in dockerfile.splitlines() if "collectstatic" in line]
    assert collect and all("DEBUG=0" in line for line in collect), collect
    compose = (ROOT / "docker-compose.yml").read_text()
    assert 'DEBUG: "0"' in compose
