"""Settings for the RLAIF workbench, read from the environment (django-environ).

Everything has a default that works on a laptop with nothing else installed:
SQLite under ``var/``, kombu's filesystem broker under ``var/broker``. Set
``DATABASE_URL`` / ``REDIS_URL`` (or ``CELERY_BROKER_URL``) for PostgreSQL and
Redis in production (see docker-compose.yml).
"""
from datetime import timedelta
from pathlib import Path

import environ

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env")  # optional; silently absent

VAR_DIR = Path(env("EVALSITE_VAR_DIR", default=str(BASE_DIR / "var")))
VAR_DIR.mkdir(parents=True, exist_ok=True)

DEBUG = env.bool("DEBUG", default=False)

# A development key is only acceptable while DEBUG is on; production must set one.
_DEV_SECRET = "dev-insecure-key-change-me-for-production-use-only-0123456789abcdef"
SECRET_KEY = env("SECRET_KEY", default=_DEV_SECRET if DEBUG else None) or ""
if not SECRET_KEY:
    from django.core.exceptions import ImproperlyConfigured

    raise ImproperlyConfigured("Set SECRET_KEY in the environment (or DEBUG=1 for development).")

ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django_celery_results",
    "evalsite",
    "evalsite.jobs",
    "evalsite.experiments",
    "evalsite.humaneval",
    "evalsite.reports",
    "labeling",
    "rl",
    "axes",  # login throttling (see AXES_* below)
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "evalsite.middleware.RefuseNulMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes asks: turns a login refused during a lockout into the lockout page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "evalsite.urls"
WSGI_APPLICATION = "evalsite.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
    {
        # The annotator's item page (see evalsite/jinja2.py); everything else is a Django template.
        # jinja2/ holds the shared base page, evalsite/humaneval/jinja2/ the item page.
        "BACKEND": "django.template.backends.jinja2.Jinja2",
        "DIRS": [BASE_DIR / "jinja2"],
        "APP_DIRS": True,
        "OPTIONS": {
            "environment": "evalsite.jinja2.environment",
            "context_processors": [
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "evalsite.jinja2.csrf_field",
            ],
        },
    },
]

DATABASES = {
    "default": env.db("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'evalsite.sqlite3'}"),
}
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # Worker processes and the web server share the file: wait on locks instead of failing at
    # once, take the write lock when a transaction starts (no read-then-write deadlocks between
    # processes), and let readers work while a writer writes (WAL).
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        timeout=30, transaction_mode="IMMEDIATE",
        init_command="PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    )
    # A file (not :memory:) so that a worker process started by a test sees the test database.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test-evalsite.sqlite3")}
else:
    DATABASES["default"].setdefault("CONN_MAX_AGE", env.int("CONN_MAX_AGE", default=60))
    # Each request checks that the server has not dropped the persistent connection; this
    # backend checks the socket instead of sending SELECT 1 (see evalsite/postgres/base.py).
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
    if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
        DATABASES["default"]["ENGINE"] = "evalsite.postgres"
    # Parameters travel apart from the SQL, so psycopg prepares a statement the fifth time it
    # sees it and PostgreSQL stops parsing and planning the queue's queries on every request.
    # Behind PgBouncer in transaction mode (no prepared statements) set DATABASE_PREPARE=0.
    if env.bool("DATABASE_PREPARE", default=True):
        DATABASES["default"].setdefault("OPTIONS", {}).update(server_side_binding=True, prepare_threshold=5)

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = env("TIME_ZONE", default="UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = Path(env("STATIC_ROOT", default=str(VAR_DIR / "staticfiles")))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if not DEBUG and env.bool("STATIC_MANIFEST", default=True)
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}

MEDIA_ROOT = Path(env("MEDIA_ROOT", default=str(VAR_DIR / "media")))
MEDIA_URL = "media/"
MODELS_DIR = Path(env("MODELS_DIR", default=str(VAR_DIR / "models")))
CHECKPOINTS_DIR = Path(env("CHECKPOINTS_DIR", default=str(VAR_DIR / "checkpoints")))
UPLOADS_DIR = MEDIA_ROOT / "uploads"
# Where preference exports started from the admin are written (the command writes where it is told).
EXPORTS_DIR = Path(env("EXPORTS_DIR", default=str(VAR_DIR / "exports")))
for _d in (MEDIA_ROOT, MODELS_DIR, CHECKPOINTS_DIR, UPLOADS_DIR, STATIC_ROOT, EXPORTS_DIR):
    _d.mkdir(parents=True, exist_ok=True)

# Largest upload accepted by the admin import form (datasets are uploaded whole).
DATA_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024 * 1024
FILE_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024 * 1024
DATASET_UPLOAD_MAX_BYTES = env.int("DATASET_UPLOAD_MAX_BYTES", default=500 * 1024 * 1024)
# The most a gzip-compressed dataset file may decompress to (a 100 KB file can inflate to 100 MB).
DATASET_DECOMPRESSED_MAX_BYTES = env.int("DATASET_DECOMPRESSED_MAX_BYTES", default=2 * 1024 ** 3)

# The only environment variables a server labeler may read its API key from (comma-separated
# names): a labeler config is written by researchers, and the key goes to the URL they chose.
LABELER_API_KEY_VARS = [name.strip() for name in env.list("LABELER_API_KEY_VARS", default=[]) if name.strip()]

# django-axes first: it refuses a login attempt while its username and address are locked out,
# and authenticates no one itself. Then Django's ModelBackend, reading each request's user with
# written-out SQL (evalsite/auth.py).
AUTHENTICATION_BACKENDS = ["axes.backends.AxesStandaloneBackend", "evalsite.auth.ModelBackend"]

# --- Login throttling (django-axes) ----------------------------------------------------
# After AXES_FAILURE_LIMIT wrong passwords for one username from one address, that pair is
# refused, even with the right password, until AXES_COOLOFF_MINUTES pass without another try.
# The same user can still log in from any other address, so an attacker cannot lock a person
# out everywhere. A successful login clears the count. `manage.py axes_reset` lifts every lockout.
AXES_FAILURE_LIMIT = env.int("AXES_FAILURE_LIMIT", default=10)
AXES_COOLOFF_TIME = timedelta(minutes=env.float("AXES_COOLOFF_MINUTES", default=15))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "axes/lockout.html"
# The client's address. Facing clients directly (AXES_REVERSE_PROXIES=0), the connection's own.
# Behind N reverse proxies that each append the address they were called from to X-Forwarded-For
# (nginx: `proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;`), the N-th entry from
# the right, written by the outermost proxy; entries to its left come from the client: ignored.
_reverse_proxies = env.int("AXES_REVERSE_PROXIES", default=0)
if _reverse_proxies:
    AXES_IPWARE_META_PRECEDENCE_ORDER = ["HTTP_X_FORWARDED_FOR", "REMOTE_ADDR"]
    AXES_IPWARE_PROXY_ORDER = "left-most"
    AXES_IPWARE_PROXY_COUNT = _reverse_proxies - 1  # ipware counts the proxies named in the header
    IPWARE_STRICT = False  # a header the client sent too is longer, not invalid: still count from the right

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

# --- Cache and sessions ---------------------------------------------------------------
_redis_url = env("REDIS_URL", default="")
if _redis_url:
    # Shared by every web worker: sessions are read from Redis and written through to the
    # database, saving a query on each annotator request. While Redis is unreachable the cache
    # answers "miss" and sessions come from the database (evalsite/cache.py); the short timeouts
    # keep a Redis that hangs from holding requests up.
    CACHES = {"default": {
        "BACKEND": "evalsite.cache.RedisCache",  # Django's, keeping its client objects
        "LOCATION": env("CACHE_URL", default=_redis_url),
        "KEY_PREFIX": env("CACHE_KEY_PREFIX", default="evalsite"),
        "OPTIONS": {
            "socket_connect_timeout": env.float("CACHE_TIMEOUT_SECONDS", default=1.0),
            "socket_timeout": env.float("CACHE_TIMEOUT_SECONDS", default=1.0),
        },
    }}
    SESSION_ENGINE = "django.contrib.sessions.backends.cached_db"

# --- Celery ---------------------------------------------------------------------------
CELERY_BROKER_URL = env("CELERY_BROKER_URL", default=_redis_url or "filesystem://")
if CELERY_BROKER_URL == "filesystem://":
    # Embedded default: a folder queue that any number of local worker processes share.
    _broker_dir = VAR_DIR / "broker"
    (_broker_dir / "queue").mkdir(parents=True, exist_ok=True)
    (_broker_dir / "processed").mkdir(parents=True, exist_ok=True)
    (_broker_dir / "control").mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir / "queue"),
        "data_folder_out": str(_broker_dir / "queue"),
        "processed_folder": str(_broker_dir / "processed"),
        "control_folder": str(_broker_dir / "control"),
        "store_processed": False,
    }
else:
    # Jobs can run for hours; redelivery of an unacknowledged task must not start a second copy.
    CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 7 * 24 * 3600}
CELERY_RESULT_BACKEND = "django-db"
CELERY_RESULT_EXTENDED = True
CELERY_TASK_DEFAULT_QUEUE = env("CELERY_TASK_DEFAULT_QUEUE", default="evalsite")
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = False
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_TRACK_STARTED = True
CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=False)
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False

# A running job whose worker has not written a heartbeat for this long is failed by the
# workers' sweep (every JOB_SWEEP_SECONDS, in each worker's main process), and resumable kinds
# are queued again, at most JOB_AUTO_RESUME_ATTEMPTS times in all. The sweep also sends jobs
# again whose task the broker did not take (it was down when they were submitted).
# The job queue adapter the job runtime publishes through (evalsite/celery.py).
JOB_QUEUE = "evalsite.celery.queue"
JOB_HEARTBEAT_SECONDS = env.float("JOB_HEARTBEAT_SECONDS", default=10.0)
JOB_STALE_AFTER_SECONDS = env.float("JOB_STALE_AFTER_SECONDS", default=120.0)
JOB_SWEEP_SECONDS = env.float("JOB_SWEEP_SECONDS", default=30.0)
JOB_AUTO_RESUME_ATTEMPTS = env.int("JOB_AUTO_RESUME_ATTEMPTS", default=3)
JOB_RESEND_AFTER_SECONDS = env.float("JOB_RESEND_AFTER_SECONDS", default=10.0)

# --- Production hardening (manage.py check --deploy is clean when DEBUG is off) -------
if not DEBUG:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=True)
    SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=True)
    CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=True)
    SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=3600)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=True)
    SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=True)
    SECURE_CONTENT_TYPE_NOSNIFF = True
    X_FRAME_OPTIONS = "DENY"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env("LOG_LEVEL", default="INFO")},
    "loggers": {"django.db.backends": {"level": "INFO"}},
}
