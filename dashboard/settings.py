"""Settings for the checkpoint dashboard: one file, driven by the environment.

Local defaults are safe and need nothing installed: SQLite and data under ``var/``, a private
``redis-server`` (started by ``make run``) on a Unix socket under ``var/``. Production sets
``DATABASE_URL``, ``REDIS_URL``, ``SECRET_KEY``, ``ALLOWED_HOSTS``, ``CHECKPOINT_ROOTS`` and
``EXPORT_ROOT``. A value that cannot be right fails loudly at start-up, not on the first request.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def _env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (1/0, true/false, yes/no), not {raw!r}")


def _env_float(name: str, default: float, *, minimum: float = 0.0) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a number, not {raw!r}") from None
    if value < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, not {raw!r}")
    return value


def _env_path(name: str, default: Path) -> Path:
    raw = os.environ.get(name)
    return Path(raw).expanduser().resolve() if raw else default


DEBUG = _env_bool("DEBUG", default=True)

VAR_DIR = _env_path("VAR_DIR", BASE_DIR / "var")

SECRET_KEY = os.environ.get("SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off")
    # Development only: a fixed key is fine for a dashboard bound to 127.0.0.1.
    SECRET_KEY = "django-insecure-local-checkpoint-dashboard"

ALLOWED_HOSTS = [h.strip() for h in os.environ.get("ALLOWED_HOSTS", "").split(",") if h.strip()]
if not ALLOWED_HOSTS:
    if not DEBUG:
        raise ImproperlyConfigured("ALLOWED_HOSTS must be set when DEBUG is off")
    ALLOWED_HOSTS = ["127.0.0.1", "localhost", "[::1]", "testserver"]

CSRF_TRUSTED_ORIGINS = [o.strip() for o in os.environ.get("CSRF_TRUSTED_ORIGINS", "").split(",") if o.strip()]

# --- Checkpoint storage ---------------------------------------------------------------------

_roots_raw = os.environ.get("CHECKPOINT_ROOTS", "")


def _split_roots(raw: str) -> list[str]:
    """Entries separated by os.pathsep, where a URL keeps its own colons: the one before "//", and
    any in its host part (so "s3://key:secret@bucket/x" stays one entry, to be refused whole)."""
    entries: list[str] = []
    in_authority = False
    for part in raw.split(os.pathsep):
        if entries and (part.startswith("//") and re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", entries[-1])
                        or in_authority):
            entries[-1] += os.pathsep + part
        else:
            entries.append(part)
        url = entries[-1]
        in_authority = "://" in url and "/" not in url.split("://", 1)[1]
    return [entry.strip() for entry in entries if entry.strip()]


_root_entries = _split_roots(_roots_raw)
# Local directories here; ``s3://bucket/prefix`` entries go to CHECKPOINT_OBJECT_ROOTS, so that no
# local path check can ever take a URL for a directory.
CHECKPOINT_ROOTS: list[Path] = (
    [Path(p).expanduser().resolve() for p in _root_entries if "://" not in p]
    if _root_entries
    else [VAR_DIR / "checkpoints"]
)
CHECKPOINT_OBJECT_ROOTS: list[str] = []
for _entry in _root_entries:
    if "://" in _entry:
        from persistence.storage import OutsideRoots, parse_url

        try:
            CHECKPOINT_OBJECT_ROOTS.append(str(parse_url(_entry)))
        except OutsideRoots as _exc:
            raise ImproperlyConfigured(f"CHECKPOINT_ROOTS entry {_entry!r}: {_exc}") from None
for _root in CHECKPOINT_ROOTS:
    if _root == Path(_root.anchor):
        raise ImproperlyConfigured(f"CHECKPOINT_ROOTS must not contain the file-system root ({_root})")

# A local directory, or an ``s3://bucket/prefix`` URL (kept as that string: no local path check can
# take it for a directory). Exports into a bucket are written and verified in EXPORT_WORK_DIR first,
# uploaded under the root's ``.tmp/`` and copied to their final keys only once whole.
_export_root_raw = os.environ.get("EXPORT_ROOT", "").strip()
EXPORT_ROOT: Path | str
if "://" in _export_root_raw:
    from persistence.storage import OutsideRoots, parse_url

    try:
        EXPORT_ROOT = str(parse_url(_export_root_raw))
    except OutsideRoots as _exc:
        raise ImproperlyConfigured(f"EXPORT_ROOT: {_exc}") from None
    if not EXPORT_ROOT.startswith("s3://"):
        # Runs may live in gs:// buckets; exports go to S3 (or a local directory) only: a GCS
        # download needs signing credentials that a redirect cannot count on.
        raise ImproperlyConfigured("EXPORT_ROOT: exports can go to a local directory or an s3:// bucket only")
else:
    EXPORT_ROOT = _env_path("EXPORT_ROOT", VAR_DIR / "exports")
EXPORT_WORK_DIR = _env_path("EXPORT_WORK_DIR", VAR_DIR / "export-work")
# How exports in a bucket are downloaded: "redirect" sends the browser a short-lived presigned URL
# (the bytes never pass through the dashboard); "stream" sends them through the dashboard, with
# ranges and ETags as for local exports. Local exports are always streamed (or handed to nginx).
EXPORT_DOWNLOADS = os.environ.get("EXPORT_DOWNLOADS", "redirect").strip().lower() or "redirect"
if EXPORT_DOWNLOADS not in ("redirect", "stream"):
    raise ImproperlyConfigured(f"EXPORT_DOWNLOADS must be redirect or stream, not {EXPORT_DOWNLOADS!r}")
# Lifetime of a presigned download URL: long enough to start the download, short enough that a
# leaked link soon stops working.
EXPORT_DOWNLOAD_URL_SECONDS = int(_env_float("EXPORT_DOWNLOAD_URL_SECONDS", 300, minimum=10))
# Jobs that read a checkpoint in a bucket (verify, export, compare) fetch its files into this local
# cache first (TensorFlow cannot read s3:// itself). Least recently used objects are evicted to stay
# under STAGING_CACHE_BYTES; a checkpoint larger than that cannot be staged. One cache per machine.
STAGING_CACHE_DIR = _env_path("STAGING_CACHE_DIR", VAR_DIR / "stage")
STAGING_CACHE_BYTES = int(_env_float("STAGING_CACHE_BYTES", 20e9, minimum=1))
# Where serving targets (TF Serving model base paths) may be: published versions and models.config
# are written only beneath it.
SERVING_ROOT = _env_path("SERVING_ROOT", VAR_DIR / "serving")

# Hand export downloads to nginx: the URL prefix of an ``internal`` location whose alias is
# EXPORT_ROOT (e.g. "/protected-exports/"). Empty: Django streams the file itself (Range included).
DOWNLOAD_X_ACCEL_REDIRECT = os.environ.get("DOWNLOAD_X_ACCEL_REDIRECT", "").strip()
if DOWNLOAD_X_ACCEL_REDIRECT and not (DOWNLOAD_X_ACCEL_REDIRECT.startswith("/") and DOWNLOAD_X_ACCEL_REDIRECT.endswith("/")):
    raise ImproperlyConfigured(
        f"DOWNLOAD_X_ACCEL_REDIRECT must be a URL path starting and ending with '/', not {DOWNLOAD_X_ACCEL_REDIRECT!r}"
    )

# How often the worker rescans every tracked run, so checkpoints written by trainers outside the
# dashboard appear by themselves. 0 turns the periodic rescan off.
SCAN_INTERVAL_SECONDS = _env_float("SCAN_INTERVAL_SECONDS", 60.0)

# How ``manage.py watch`` sees changes: unset or "auto" uses inotify, and polls for directories on
# network file systems (another host's writes raise no inotify event) or when inotify fails;
# 1 always polls, 0 never does. WATCH_POLL_INTERVAL_MS is how often polling lists a directory.
WATCH_POLLING = None if os.environ.get("WATCH_POLLING", "auto").strip().lower() in {"", "auto"} else _env_bool(
    "WATCH_POLLING", False
)
WATCH_POLL_INTERVAL_MS = int(_env_float("WATCH_POLL_INTERVAL_MS", 300.0, minimum=50.0))

# Model recipes that save jobs can train, as dotted paths.
CHECKPOINT_RECIPES = [
    r.strip()
    for r in os.environ.get("CHECKPOINT_RECIPES", "persistence.recipes.antispam.AntiSpamRecipe").split(",")
    if r.strip()
]


def _env_retention(name: str) -> dict:
    """The retention policy new runs start with: the model's defaults, updated from JSON in ``name``.

    e.g. ``DEFAULT_RETENTION='{"max_to_keep": 5, "keep_checkpoint_every_n_hours": 2}'``. Keys are
    the run's policy fields; a value that cannot be a policy stops start-up.
    """
    import json

    from persistence.retention import RetentionPolicy

    policy = {
        "max_to_keep": None, "keep_checkpoint_every_n_hours": None, "keep_every_n_steps": None,
        "keep_best_n": None, "best_metric": "", "best_mode": "min", "min_age_seconds": 600,
        "protect_exported": True, "auto_prune": False,
    }
    raw = os.environ.get(name, "").strip()
    if not raw:
        return policy
    try:
        given = json.loads(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} must be a JSON object: {exc}") from None
    if not isinstance(given, dict):
        raise ImproperlyConfigured(f"{name} must be a JSON object, not {raw!r}")
    unknown = sorted(set(given) - set(policy))
    if unknown:
        raise ImproperlyConfigured(f"{name}: unknown keys {', '.join(unknown)}; known: {', '.join(policy)}")
    policy.update(given)
    if not isinstance(policy["auto_prune"], bool) or not isinstance(policy["best_metric"] or "", str):
        raise ImproperlyConfigured(f"{name}: auto_prune must be true/false and best_metric a string")
    if isinstance(policy["min_age_seconds"], bool) or not isinstance(policy["min_age_seconds"], int):
        raise ImproperlyConfigured(f"{name}: min_age_seconds must be a whole number of seconds")
    policy["best_metric"] = policy["best_metric"] or ""  # the run's field is text, never null
    rules = {k: v for k, v in policy.items() if k != "auto_prune"}
    errors = RetentionPolicy(**{**rules, "best_metric": rules["best_metric"] or None}).validate()
    if errors:
        raise ImproperlyConfigured(f"{name}: {' '.join(errors)}")
    return policy


# Retention policy given to every new run; maintainers change it per run.
DEFAULT_RETENTION = _env_retention("DEFAULT_RETENTION")


def _env_days(name: str) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return 0
    try:
        value = int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a whole number of days (0 turns it off), not {raw!r}") from None
    if value < 0:
        raise ImproperlyConfigured(f"{name} cannot be negative (0 turns it off), not {raw!r}")
    return value


# Days a prune's files stay in the run's trash (.trash/<batch>/) before they are deleted; a
# maintainer may restore them meanwhile. 0: a prune deletes at once.
TRASH_DAYS = _env_days("TRASH_DAYS")
# How often the scheduler looks for trash batches old enough to delete.
TRASH_SWEEP_SECONDS = 3600
# Fault-injection tests only (tests/faults): seconds a prune job sleeps at each progress report
# (about 100 per prune), so that a worker can be killed in the middle of one. Always 0 in use.
PRUNE_PROGRESS_DELAY_SECONDS = _env_float("PRUNE_PROGRESS_DELAY_SECONDS", 0.0)
# Fault-injection tests only: seconds a scan waits after reading each chunk of checkpoints (250),
# as if every index lived on a slow file system, so that a test can write to the run while a
# scan is in the middle of one. Always 0 in use.
SCAN_CHUNK_DELAY_SECONDS = _env_float("SCAN_CHUNK_DELAY_SECONDS", 0.0)
# Fault-injection tests only: seconds an export into a bucket waits between uploading its
# temporary objects and copying them to their final keys, so that a worker can be killed there.
EXPORT_PUBLISH_DELAY_SECONDS = _env_float("EXPORT_PUBLISH_DELAY_SECONDS", 0.0)

# --- Django ---------------------------------------------------------------------------------

INSTALLED_APPS = [
    "dashboard",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "django_htmx",
    "django_rq",
    "axes",
    "ninja",  # the API's interactive docs, served from its vendored static files
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Outermost but one: every error under /api/, whoever answers it, becomes problem details.
    "dashboard.api.problems.ProblemDetailsMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "dashboard.middleware.RejectNulBytesMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.auth.middleware.LoginRequiredMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "csp.middleware.CSPMiddleware",
    # Last, as django-axes requires: it turns a locked-out login into its lockout response.
    "axes.middleware.AxesMiddleware",
]

# Login throttling: the axes backend goes first so that a locked-out user/address pair is refused
# before the password is even checked.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]

ROOT_URLCONF = "dashboard.urls"
WSGI_APPLICATION = "dashboard.wsgi.application"

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
                "dashboard.context_processors.permissions",
            ],
        },
    },
]

_default_db = f"sqlite:///{VAR_DIR / 'dashboard.sqlite3'}"
DATABASES = {"default": dj_database_url.parse(os.environ.get("DATABASE_URL") or _default_db, conn_max_age=60)}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    Path(DATABASES["default"]["NAME"]).parent.mkdir(parents=True, exist_ok=True)
    # The worker and the web server write to the same file: wait for locks instead of failing.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {"timeout": 20, "transaction_mode": "IMMEDIATE", "init_command": "PRAGMA journal_mode=WAL;"}
    )
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    # A file, not memory: worker processes started by the tests must see the same test database.
    # One per test session (pid), so that concurrent sessions never share one.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / f"test-{os.getpid()}.sqlite3")}
else:
    DATABASES["default"]["TEST"] = {"NAME": f"test_{DATABASES['default']['NAME']}_{os.getpid()}"}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "login"

# After AXES_FAILURE_LIMIT wrong passwords for one user name from one address, that pair is refused
# for AXES_COOLOFF_MINUTES. Locking by user name alone would let anyone lock any account out; by
# address alone, one office behind NAT. Attempts are stored in the database, so every web worker
# and every machine sees the same count.
AXES_FAILURE_LIMIT = int(_env_float("AXES_FAILURE_LIMIT", 5, minimum=1))
AXES_COOLOFF_TIME = dt.timedelta(minutes=_env_float("AXES_COOLOFF_MINUTES", 15, minimum=1))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"
AXES_VERBOSE = False
LOGIN_REDIRECT_URL = "runs"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = os.environ.get("TIME_ZONE", "UTC")
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = _env_path("STATIC_ROOT", VAR_DIR / "static")
WHITENOISE_USE_FINDERS = DEBUG  # serve straight from the app's static/ without collectstatic
if DEBUG:
    STATIC_ROOT.mkdir(parents=True, exist_ok=True)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "django.contrib.staticfiles.storage.StaticFilesStorage"
            if DEBUG
            else "whitenoise.storage.CompressedManifestStaticFilesStorage"
        )
    },
}

# --- Queue ----------------------------------------------------------------------------------

# Unset means the private redis-server that `make run` starts on a socket under var/.
REDIS_URL = os.environ.get("REDIS_URL") or f"unix://{VAR_DIR / 'redis.sock'}"
# The queue our jobs go to. Several dashboards (or a test session) can share one Redis by name.
JOB_QUEUE = os.environ.get("JOB_QUEUE", "default")
RQ_QUEUES = {
    name: {"URL": REDIS_URL, "DEFAULT_TIMEOUT": 600, "SOCKET_CONNECT_TIMEOUT": 2, "SOCKET_TIMEOUT": 10}
    for name in {"default", JOB_QUEUE}
}
RQ_SHOW_ADMIN_LINK = True

# Shared by every web worker (the prune preview keeps its plans here). The key prefix keeps two
# dashboards, or two test sessions, that share one Redis apart.
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": f"dashboard:{JOB_QUEUE}",
        "TIMEOUT": 3600,
        "OPTIONS": {"socket_connect_timeout": 2, "socket_timeout": 5},
    }
}

# --- API -----------------------------------------------------------------------------------

# Requests per client (token, or session user) and period: s, min, hour or day. Empty: no limit.
API_THROTTLE_RATE = os.environ.get("API_THROTTLE_RATE", "600/min").strip()
if API_THROTTLE_RATE and not re.fullmatch(r"[1-9]\d*/(s|sec|second|m|min|minute|h|hour|d|day)", API_THROTTLE_RATE):
    raise ImproperlyConfigured(f"API_THROTTLE_RATE must look like 600/min (per s, min, hour or day), not {API_THROTTLE_RATE!r}")

# --- Production hardening -------------------------------------------------------------------

SECURE_CONTENT_TYPE_NOSNIFF = True
# Every script, style, font and image is vendored and served from here: nothing inline, nothing
# from elsewhere. Pages set colours and sizes through classes or from static scripts, never through
# style attributes, so that injected markup cannot run or restyle anything.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "img-src": ["'self'", "data:"],
        "object-src": ["'none'"],
        "base-uri": ["'none'"],
        "frame-ancestors": ["'none'"],
        "form-action": ["'self'"],
    },
}
X_FRAME_OPTIONS = "DENY"
if not DEBUG:
    SESSION_COOKIE_SECURE = _env_bool("SECURE_COOKIES", True)
    CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
    SECURE_SSL_REDIRECT = _env_bool("SECURE_SSL_REDIRECT", False)
    SECURE_HSTS_SECONDS = int(_env_float("SECURE_HSTS_SECONDS", 0))
    SECURE_HSTS_INCLUDE_SUBDOMAINS = SECURE_HSTS_SECONDS > 0
    SECURE_HSTS_PRELOAD = SECURE_HSTS_SECONDS > 0
    if _env_bool("BEHIND_TLS_PROXY", False):
        SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

LOG_LEVEL = os.environ.get("LOG_LEVEL", "INFO").strip().upper()
if LOG_LEVEL not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
    raise ImproperlyConfigured(f"LOG_LEVEL must be DEBUG, INFO, WARNING, ERROR or CRITICAL, not {LOG_LEVEL!r}")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        # TensorFlow's deprecation notices about tf.compat.v1 (which the graph work here uses on
        # purpose) are warnings nobody can act on; its errors still print.
        "tensorflow": {"level": "DEBUG" if LOG_LEVEL == "DEBUG" else "ERROR"},
        # Object-storage clients log request headers (the access key id is in Authorization) and
        # where they found credentials at DEBUG/INFO: never below WARNING, whatever LOG_LEVEL says.
        **{name: {"level": "WARNING"} for name in ("botocore", "aiobotocore", "boto3", "s3transfer", "s3fs", "fsspec")},
    },
}

# --- Graph sandbox ----------------------------------------------------------------------------
# Work that executes a checkpoint's graph or reads its tensors (verify, restore, freeze) runs in a
# child process. Its memory limit (RLIMIT_DATA: private writable memory, see
# persistence/sandbox.py for why not RLIMIT_AS) is BASE_MB (TensorFlow's own baseline plus what
# the forked worker already holds) + FACTOR x the checkpoint's size on disk.
GRAPH_MEMORY_LIMIT_BASE_MB = _env_float("GRAPH_MEMORY_LIMIT_BASE_MB", 1024, minimum=256)
GRAPH_MEMORY_LIMIT_FACTOR = _env_float("GRAPH_MEMORY_LIMIT_FACTOR", 4, minimum=1)
# CPU seconds (all threads together) before the child is stopped; 0 turns the limit off.
GRAPH_CPU_LIMIT_SECONDS = int(_env_float("GRAPH_CPU_LIMIT_SECONDS", 3600, minimum=0))
# No network and writes only to the scratch/export directories, where the kernel allows it
# (user + network namespaces, Landlock). Off only for debugging.
GRAPH_SANDBOX_ISOLATE = _env_bool("GRAPH_SANDBOX_ISOLATE", default=True)

# --- Webhooks -------------------------------------------------------------------------------


def _env_schedule(name: str, default: str) -> list[float]:
    raw = os.environ.get(name, "").strip() or default
    try:
        delays = [float(part) for part in raw.split(",") if part.strip()]
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be comma-separated seconds, e.g. 30,120,600; not {raw!r}") from None
    if not delays or any(d <= 0 for d in delays):
        raise ImproperlyConfigured(f"{name} must list at least one positive delay in seconds, not {raw!r}")
    return delays


# Receivers on loopback, private or link-local addresses are refused (the dashboard would
# otherwise reach into its own network for whoever registers an endpoint); 1 allows them, for a
# deployment whose receivers live inside its network. Metadata addresses are refused regardless.
WEBHOOK_ALLOW_PRIVATE = _env_bool("WEBHOOK_ALLOW_PRIVATE", default=False)
# Seconds to connect, and for each read of the answer.
WEBHOOK_TIMEOUT_SECONDS = _env_float("WEBHOOK_TIMEOUT_SECONDS", 10, minimum=1)
# Seconds to wait before each retry of a delivery that met a network error, a 429 or a 5xx; its
# length is the number of retries. The default tries 9 times over about 4 h 20 min, so a receiver
# down for an hour still gets every event.
_DEFAULT_RETRY_SCHEDULE = "30,120,300,600,1200,2400,3600,7200"
WEBHOOK_RETRY_SCHEDULE = _env_schedule("WEBHOOK_RETRY_SCHEDULE", _DEFAULT_RETRY_SCHEDULE)
# How often the scheduler hands due retries (and deliveries Redis missed) to the workers.
WEBHOOK_DISPATCH_SECONDS = int(_env_float("WEBHOOK_DISPATCH_SECONDS", 10, minimum=1))
# Delivered and failed deliveries are kept in the log this many days.
WEBHOOK_LOG_DAYS = _env_float("WEBHOOK_LOG_DAYS", 30, minimum=1)
