"""Settings for the test suite: the normal settings with development defaults.

Tests talk plain HTTP to a local server, so production redirects to HTTPS are off.
Worker processes started by tests use this module too.
"""
import os

os.environ.setdefault("DEBUG", "1")
os.environ.setdefault("JOB_HEARTBEAT_SECONDS", "1")

# Models, checkpoints, uploads and exports a test session writes go to its own folder (shared with the
# worker processes it starts, which inherit the environment), not into the project's var/.
import tempfile  # noqa: E402

_run_dir = os.environ.setdefault("EVALSITE_TEST_RUN_DIR", tempfile.mkdtemp(prefix="evalsite-test-"))
for _name in ("MODELS_DIR", "CHECKPOINTS_DIR", "MEDIA_ROOT", "EXPORTS_DIR"):
    os.environ.setdefault(_name, os.path.join(_run_dir, _name.lower()))

from .settings import *  # noqa: E402,F401,F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # fast user creation
STORAGES["staticfiles"]["BACKEND"] = "django.contrib.staticfiles.storage.StaticFilesStorage"  # noqa: F405

# Each test session gets its own broker queue, so parallel runs (and stale messages) never mix.
import uuid as _uuid  # noqa: E402

CELERY_TASK_DEFAULT_QUEUE = os.environ.setdefault("CELERY_TASK_DEFAULT_QUEUE", f"evalsite-test-{_uuid.uuid4().hex[:8]}")

if "CACHES" in globals():
    # Redis is shared: keep this session's cache keys (sessions) apart from other runs'.
    CACHES["default"]["KEY_PREFIX"] = f"evalsite-test-{_uuid.uuid4().hex[:8]}"  # noqa: F405
