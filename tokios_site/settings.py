"""Tokios settings, read from the environment.

Nothing set gives the embedded default: a SQLite file, the in-memory channel layer, a local-memory
cache and a Celery broker on the filesystem — one process, no servers. `DATABASE_URL` switches to
PostgreSQL, `REDIS_URL` to channels-redis, the Redis cache, Redis rate limits and the Redis broker.
Every variable is listed in the README.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from celery.schedules import crontab

from lib.env import database_from_url, env_bool, env_float, env_int, env_list, env_networks, env_str
from lib.private_files import private_sqlite

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = Path(env_str("TOKIOS_DATA_DIR", str(BASE_DIR / ".tokios")))
DATA_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)  # 0700 when created here: it holds the secret key


def _secret_key() -> str:
    """Production sets SECRET_KEY; the embedded default keeps a generated one on disk."""
    configured = env_str("SECRET_KEY")
    if configured:
        return configured
    path = DATA_DIR / "secret_key"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(50))
        path.chmod(0o600)
    return path.read_text().strip()


SECRET_KEY = _secret_key()
DEBUG = env_bool("DEBUG", False)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

DATABASE_URL = env_str("DATABASE_URL")
REDIS_URL = env_str("REDIS_URL")

# HTTPS-only cookies, HSTS and redirects. On by default once a production database is configured,
# off for the embedded default that serves plain http on localhost.
HTTPS = env_bool("TOKIOS_HTTPS", bool(DATABASE_URL))
SECURE_SSL_REDIRECT = HTTPS and env_bool("SECURE_SSL_REDIRECT", True)
SESSION_COOKIE_SECURE = HTTPS
CSRF_COOKIE_SECURE = HTTPS
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000) if HTTPS else 0
SECURE_HSTS_INCLUDE_SUBDOMAINS = HTTPS
SECURE_HSTS_PRELOAD = HTTPS
if env_bool("TRUST_X_FORWARDED_PROTO", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_REDIRECT_EXEMPT = [r"^v1/", r"^healthz$"]
SESSION_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "channels",
    "accounts",
    "deployments",
    "proxy",
    "billing",
    "dashboard",
    "api",
]

# Every middleware here is async-capable: the chain runs on the event loop. (/v1 runs none of it,
# proxy/handler.py; WhiteNoise, which is sync-only, serves /static/ in front of it: tokios_site/asgi.py.)
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "tokios_site.csp.content_security_policy",  # outermost but one: also on the pages other middleware answer
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "tokios_site.urls"
AUTH_USER_MODEL = "accounts.User"
LOGIN_URL = "dashboard:login"
LOGIN_REDIRECT_URL = "dashboard:overview"
LOGOUT_REDIRECT_URL = "dashboard:login"

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
                "dashboard.context_processors.org",
            ],
        },
    },
]

ASGI_APPLICATION = "tokios_site.asgi.application"
WSGI_APPLICATION = "tokios_site.wsgi.application"

if DATABASE_URL:
    DATABASES = {"default": database_from_url(DATABASE_URL)}
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": env_str("SQLITE_PATH", str(DATA_DIR / "tokios.sqlite3")),
            # A file, not memory, so that end-to-end tests can share it with server processes.
            "TEST": {"NAME": env_str("SQLITE_TEST_PATH", str(DATA_DIR / "test.sqlite3"))},
            "OPTIONS": {
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
                "transaction_mode": "IMMEDIATE",
                "timeout": 20,
            },
            # Keep the connection: the usage writer commits from one thread many times a second.
            "CONN_MAX_AGE": 600,
        }
    }
    private_sqlite(DATABASES["default"]["NAME"])  # 0600, and its -wal/-shm: lib/private_files.py

if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "tokios",
        }
    }
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                "hosts": [REDIS_URL],
                # All of a process's reply channels share one list in Redis. What a stream may have
                # in flight is bounded by the tunnel's credit window (TUNNEL_WINDOW blocks of 4 KiB), so the
                # capacity is a backstop sized for 1,000+ streams a process, not the flow control;
                # a sender that finds it full waits and tries again (proxy/tunnel/layer.py).
                "capacity": env_int("CHANNEL_CAPACITY", 100_000),
                "expiry": 60,
                "prefix": "tokios-asgi",
            },
        }
    }
    CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", REDIS_URL)
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", "filesystem://")

CELERY_BROKER_TRANSPORT_OPTIONS = (
    {
        "data_folder_in": str(DATA_DIR / "celery"),
        "data_folder_out": str(DATA_DIR / "celery"),
        "processed_folder": str(DATA_DIR / "celery-processed"),
        "store_processed": False,
        # Broadcasts (worker control) also go to files; by default into ./control of the cwd.
        "control_folder": str(DATA_DIR / "celery-control"),
    }
    if CELERY_BROKER_URL == "filesystem://"
    else {}
)
if CELERY_BROKER_URL == "filesystem://":
    for folder in ("celery", "celery-control"):  # kombu's filesystem transport does not create them
        (DATA_DIR / folder).mkdir(exist_ok=True)
CELERY_TASK_IGNORE_RESULT = True
CELERY_TIMEZONE = "UTC"
CELERY_BEAT_SCHEDULE_FILENAME = str(DATA_DIR / "celerybeat-schedule")
# Metering jobs (billing/tasks.py). Each is idempotent, so a missed or doubled run is harmless;
# `expires` stops a stopped worker from finding a pile of stale roll-ups when it comes back.
ROLLUP_INTERVAL = env_float("TOKIOS_ROLLUP_INTERVAL", 60.0)
CELERY_BEAT_SCHEDULE = {
    "roll-up-usage": {
        "task": "billing.roll_up_usage",
        "schedule": ROLLUP_INTERVAL,
        "options": {"expires": ROLLUP_INTERVAL},
    },
    "build-statements": {
        "task": "billing.build_statements",
        "schedule": crontab(minute=5),  # hourly
        "options": {"expires": 3000},
    },
    "prune-usage-events": {
        "task": "billing.prune_usage_events",
        "schedule": crontab(hour=3, minute=17),  # daily, off the hour
        "options": {"expires": 3600},
    },
    # Stored /v1/responses of conversations idle for RESPONSES_RETENTION_DAYS (proxy/tasks.py).
    "prune-stored-responses": {
        "task": "proxy.prune_stored_responses",
        "schedule": crontab(hour=3, minute=41),
        "options": {"expires": 3600},
    },
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"] if (BASE_DIR / "static").exists() else []
# WhiteNoise serves /static/ (tokios_site/asgi.py), no CDN: what `manage.py collectstatic` gathered in
# STATIC_ROOT, with the gzip copy of each file this storage writes there for clients that accept it.
# Before anything is collected (a fresh checkout, `dev.py run`, the tests) it serves the apps' own
# static folders as they are; DEBUG serves those always, re-read on every request.
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = DEBUG or not STATIC_ROOT.is_dir()
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- E-mail (invitations, password resets). They carry working links, so the default keeps each
# message in a file only this user can read (DATA_DIR/mail, 0600) and logs where, never the body.
EMAIL_BACKEND = env_str("EMAIL_BACKEND", "lib.mail.PrivateFileEmailBackend")
EMAIL_FILE_PATH = env_str("EMAIL_FILE_PATH", str(DATA_DIR / "mail"))
EMAIL_HOST = env_str("EMAIL_HOST", "localhost")
EMAIL_PORT = env_int("EMAIL_PORT", 25)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
EMAIL_USE_SSL = env_bool("EMAIL_USE_SSL", False)
EMAIL_TIMEOUT = min(max(env_float("EMAIL_TIMEOUT", 10.0), 1.0), 300.0)  # an SMTP server that hangs holds a request
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "tokios@localhost")

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        # First, so that an anonymous call gets 401 with a Bearer challenge rather than 403.
        "api.authentication.PersonalAccessTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "api.pagination.BoundedLimitOffsetPagination",
    "PAGE_SIZE": 100,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Tokios management API",
    "VERSION": "1",
    "DESCRIPTION": "Manage an organisation's API keys, deployments, connector tokens, grants and members, "
    "and read its usage and statements. Authenticate with the dashboard session or "
    "`Authorization: Bearer pat-tokios-…` (a personal access token from your profile page).",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
}

# --- API reference (api/docs.py): /api/docs/ (a server-rendered page made from the schema) and the
# schema at /api/schema/ are for signed-in users and token holders; this makes both public.
API_DOCS_PUBLIC = env_bool("TOKIOS_API_DOCS_PUBLIC", False)

# --- The /v1 gateway -------------------------------------------------------------------------
# What carries a request to the model: None for the tunnel (proxy/tunnel/router.py TunnelCall), or
# a callable taking TunnelCall's keyword arguments and returning a proxy.calls.UpstreamCall (the
# in-process tests of the surfaces give a scripted one).
UPSTREAM_CALL = None
# Seconds an access decision may be served from this process's memory. Revocations and grant
# changes delete the shared entry at once; other processes drop theirs within this time.
ACCESS_LOCAL_TTL = env_float("TOKIOS_ACCESS_LOCAL_TTL", 1.0)
MAX_BODY_BYTES = env_int("TOKIOS_MAX_BODY_BYTES", 10 * 1024 * 1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = MAX_BODY_BYTES
UPSTREAM_TIMEOUT = env_float("TOKIOS_UPSTREAM_TIMEOUT", 600.0)
FIRST_BYTE_TIMEOUT = env_float("TOKIOS_FIRST_BYTE_TIMEOUT", 300.0)
KEEPALIVE_INTERVAL = env_float("TOKIOS_KEEPALIVE_INTERVAL", 10.0)
HEARTBEAT_INTERVAL = env_float("TOKIOS_HEARTBEAT_INTERVAL", 15.0)
HEARTBEAT_TIMEOUT = env_float("TOKIOS_HEARTBEAT_TIMEOUT", 45.0)
# A non-streamed response is held in memory before it is answered: above this size, 502.
MAX_RESPONSE_BYTES = env_int("TOKIOS_MAX_RESPONSE_BYTES", 64 * 1024 * 1024)
# However it is going, a /v1 request ends after this many seconds (the idle timeouts above are
# for silence; this is for a model, or a connector, that drips forever).
REQUEST_DEADLINE = env_float("TOKIOS_REQUEST_DEADLINE", 1200.0)
# Credit a connector holds per request before the server hands some back, in 4 KiB blocks (a chunk
# frame costs one block per started 4 KiB): 256 = at most 1 MiB, or 256 frames, in flight.
TUNNEL_WINDOW = min(max(env_int("TOKIOS_TUNNEL_WINDOW", 256), 2), 4096)  # the protocol allows 1..4096
# Seconds between a process republishing its own connectors' presence in Redis.
PRESENCE_REFRESH = env_float("TOKIOS_PRESENCE_REFRESH", 1.0)
# Fair queueing when a deployment is busy (proxy/tunnel/queue.py): when every live connector has
# all its slots taken, a request waits in line, at most this many per deployment (0: none waits,
# a busy deployment answers 503 at once) and at most this many seconds (then 503 / Anthropic 529).
QUEUE_MAX_DEPTH = env_int("TOKIOS_QUEUE_MAX_DEPTH", 256)
if not 0 <= QUEUE_MAX_DEPTH <= 1024:  # Redis mode rewrites the whole line on every change
    raise ValueError(f"TOKIOS_QUEUE_MAX_DEPTH must be between 0 and 1024, got {QUEUE_MAX_DEPTH}")
QUEUE_MAX_WAIT = env_float("TOKIOS_QUEUE_MAX_WAIT", 30.0)
if not 0 <= QUEUE_MAX_WAIT <= 600:
    raise ValueError(f"TOKIOS_QUEUE_MAX_WAIT must be between 0 and 600 seconds, got {QUEUE_MAX_WAIT}")
METERING_ENABLED = env_bool("TOKIOS_METERING", True)
LIMITS_ENABLED = env_bool("TOKIOS_LIMITS", True)
USAGE_RETENTION_DAYS = env_int("TOKIOS_USAGE_RETENTION_DAYS", 90)
# Days a stored /v1/responses conversation (store: true, the default) is kept after its last turn.
RESPONSES_RETENTION_DAYS = env_int("TOKIOS_RESPONSES_RETENTION_DAYS", 30)
if not 1 <= RESPONSES_RETENTION_DAYS <= 36500:  # 0 would delete a conversation before it could go on
    raise ValueError(f"TOKIOS_RESPONSES_RETENTION_DAYS must be between 1 and 36500, got {RESPONSES_RETENTION_DAYS}")
# Seconds of finished requests written to the database as one batch: what a SIGKILL can lose.
USAGE_BATCH_WINDOW = env_float("TOKIOS_USAGE_BATCH_WINDOW", 0.05)
if not 0.001 <= USAGE_BATCH_WINDOW <= 10:  # 0 would write a statement per event, flat out
    raise ValueError(f"TOKIOS_USAGE_BATCH_WINDOW must be between 0.001 and 10 seconds, got {USAGE_BATCH_WINDOW}")

# Every line goes through one handler, which masks secrets and the paths that carry them
# (/invitations/<secret>/, /password/reset/<uid>/<token>/: lib/redact.py). Django's own "django"
# handlers (a second console copy under DEBUG, mail to ADMINS) are dropped, so nothing bypasses it.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"redact_secrets": {"()": "lib.redact.RedactSecrets"}},
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain", "filters": ["redact_secrets"]}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {
        "django": {"handlers": [], "level": "INFO", "propagate": True},
        "django.server": {"handlers": [], "propagate": True},
        "django.request": {"level": "ERROR"},
        "httpx": {"level": "WARNING"},  # it logs each URL at INFO; an alert webhook's may hold a token (alerts/)
    },
}

# --- Accounts: sign-in throttling, password resets, sessions, personal access tokens ---------------
# (docs/security.md.) Failed sign-ins are counted by django-axes in the database, so every process
# shares the counts, on SQLite too: SIGNIN_FAILURE_LIMIT failures lock the account, and lock the client
# address, until SIGNIN_LOCKOUT_MINUTES have passed since the last counted failure; meanwhile even the
# right password is refused (429, with the reason). The dashboard's password re-entry counts too.
SIGNIN_FAILURE_LIMIT = env_int("TOKIOS_SIGNIN_FAILURE_LIMIT", 10)
SIGNIN_LOCKOUT_MINUTES = env_int("TOKIOS_SIGNIN_LOCKOUT_MINUTES", 15)
if not 1 <= SIGNIN_FAILURE_LIMIT <= 1000 or not 1 <= SIGNIN_LOCKOUT_MINUTES <= 10080:
    raise ValueError("TOKIOS_SIGNIN_FAILURE_LIMIT must be 1..1000 and TOKIOS_SIGNIN_LOCKOUT_MINUTES 1..10080")
INSTALLED_APPS += ["axes"]
MIDDLEWARE += ["axes.middleware.AxesMiddleware"]  # async-capable; turns a lockout into the 429 page
AUTHENTICATION_BACKENDS = ["axes.backends.AxesStandaloneBackend", "django.contrib.auth.backends.ModelBackend"]
AXES_FAILURE_LIMIT = SIGNIN_FAILURE_LIMIT
AXES_COOLOFF_TIME = SIGNIN_LOCKOUT_MINUTES / 60  # a float is hours to axes
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]  # either one alone locks
AXES_USERNAME_CALLABLE = "accounts.throttle.signin_username"
AXES_CLIENT_IP_CALLABLE = "accounts.throttle.client_ip"
AXES_LOCKOUT_CALLABLE = "dashboard.views.auth.signin_locked_out"
# Attempts while locked are refused without being recorded: the lockout ends on time, and a client
# hammering a locked account cannot grow its row.
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = False
# Axes' reset-on-success would also clear the client address's count: a stranger with an account
# could sign in to it between guesses at others'. Counts expire with the lockout time instead.
AXES_RESET_ON_SUCCESS = False
AXES_DISABLE_ACCESS_LOG = True  # else a row per successful sign-in, never pruned
# No start-up banner; its log lines mask the e-mail and address (AXES_SENSITIVE_PARAMETERS), never
# show a password.
AXES_VERBOSE = False
# Password-reset e-mails per hour (accounts/throttle.py): beyond either, the same "check your email"
# page, and no e-mail.
PASSWORD_RESET_PER_EMAIL = min(max(env_int("TOKIOS_PASSWORD_RESET_PER_EMAIL", 3), 1), 100)
PASSWORD_RESET_PER_IP = min(max(env_int("TOKIOS_PASSWORD_RESET_PER_IP", 10), 1), 10_000)
# A dashboard session ends after this many hours without a request (saved on every request, so the
# expiry moves with activity).
SESSION_IDLE_HOURS = env_float("TOKIOS_SESSION_IDLE_HOURS", 12.0)
if not 0.1 <= SESSION_IDLE_HOURS <= 720:
    raise ValueError(f"TOKIOS_SESSION_IDLE_HOURS must be between 0.1 and 720, got {SESSION_IDLE_HOURS}")
SESSION_COOKIE_AGE = round(SESSION_IDLE_HOURS * 3600)
SESSION_SAVE_EVERY_REQUEST = True
# Personal access tokens: the expiry offered by default, and the longest allowed (days).
PAT_MAX_DAYS = env_int("TOKIOS_PAT_MAX_DAYS", 365)
PAT_DEFAULT_DAYS = env_int("TOKIOS_PAT_DEFAULT_DAYS", 90)
if not 1 <= PAT_MAX_DAYS <= 3650 or not 1 <= PAT_DEFAULT_DAYS <= PAT_MAX_DAYS:
    raise ValueError("TOKIOS_PAT_MAX_DAYS must be 1..3650 and TOKIOS_PAT_DEFAULT_DAYS 1..TOKIOS_PAT_MAX_DAYS")

# --- /v1 refusals: what a request may cost before it is refused (docs/security.md) ------------------
# Bytes of request headers: the /v1 app answers 431 in the caller's shape above this (names and
# values), and the server protocol dev.py runs (lib/contract.py BoundedHttpToolsProtocol) closes a
# connection whose request line and headers pass it, for every path.
MAX_HEADER_BYTES = env_int("TOKIOS_MAX_HEADER_BYTES", 64 * 1024)
if not 4096 <= MAX_HEADER_BYTES <= 1024 * 1024:
    raise ValueError(f"TOKIOS_MAX_HEADER_BYTES must be between 4096 and 1048576, got {MAX_HEADER_BYTES}")
# Seconds a client has to send a /v1 body once its key was accepted: then 408 and the connection is
# closed. (The server protocol closes any request's body that is still coming 5 s after this.)
BODY_TIMEOUT = env_float("TOKIOS_BODY_TIMEOUT", 30.0)
if not 1 <= BODY_TIMEOUT <= 3600:
    raise ValueError(f"TOKIOS_BODY_TIMEOUT must be between 1 and 3600 seconds, got {BODY_TIMEOUT}")
# Seconds the server protocol gives a connection to send a request's line and headers (from its
# first byte, or from the connection's start): then 408 and the connection is closed.
HEADER_TIMEOUT = env_float("TOKIOS_HEADER_TIMEOUT", 10.0)
if not 1 <= HEADER_TIMEOUT <= 600:
    raise ValueError(f"TOKIOS_HEADER_TIMEOUT must be between 1 and 600 seconds, got {HEADER_TIMEOUT}")

# --- Alerts (alerts/, docs/operations.md "Alert set-up"): budgets, connectors, error rate ---------
INSTALLED_APPS += ["alerts"]
# Seconds between two evaluations of every org's alert rules (the alerts.evaluate task).
ALERTS_INTERVAL = env_float("TOKIOS_ALERTS_INTERVAL", 60.0)
if not 10 <= ALERTS_INTERVAL <= 3600:
    raise ValueError(f"TOKIOS_ALERTS_INTERVAL must be between 10 and 3600 seconds, got {ALERTS_INTERVAL}")
# Days alerts, their delivery log and the connectors' connect history are kept (flapping looks back a week).
ALERTS_RETENTION_DAYS = env_int("TOKIOS_ALERTS_RETENTION_DAYS", 30)
if not 7 <= ALERTS_RETENTION_DAYS <= 3650:
    raise ValueError(f"TOKIOS_ALERTS_RETENTION_DAYS must be between 7 and 3650, got {ALERTS_RETENTION_DAYS}")
# Webhook URLs are dialled by the server: https only (http also with DEBUG or this), and public
# addresses only unless TOKIOS_WEBHOOK_ALLOW_PRIVATE (an internal receiver; the tests' local one).
WEBHOOK_ALLOW_HTTP = env_bool("TOKIOS_WEBHOOK_ALLOW_HTTP", DEBUG)
WEBHOOK_ALLOW_PRIVATE = env_bool("TOKIOS_WEBHOOK_ALLOW_PRIVATE", False)
# Attempts per delivery (webhook or e-mail), the first retry after WEBHOOK_BACKOFF_SECONDS, each
# next one after twice as long (at most an hour apart).
WEBHOOK_MAX_ATTEMPTS = env_int("TOKIOS_WEBHOOK_MAX_ATTEMPTS", 6)
WEBHOOK_BACKOFF_SECONDS = env_int("TOKIOS_WEBHOOK_BACKOFF_SECONDS", 30)
if not 1 <= WEBHOOK_MAX_ATTEMPTS <= 20 or not 1 <= WEBHOOK_BACKOFF_SECONDS <= 3600:
    raise ValueError("TOKIOS_WEBHOOK_MAX_ATTEMPTS must be 1..20 and TOKIOS_WEBHOOK_BACKOFF_SECONDS 1..3600")
CELERY_BEAT_SCHEDULE["evaluate-alerts"] = {
    "task": "alerts.evaluate",
    "schedule": ALERTS_INTERVAL,
    "options": {"expires": ALERTS_INTERVAL},
}
CELERY_BEAT_SCHEDULE["prune-alerts"] = {
    "task": "alerts.prune",
    "schedule": crontab(hour=3, minute=53),  # daily, off the hour and off the other prunes
    "options": {"expires": 3600},
}

# --- Metering: what waits for the database --------------------------------------------------------
# Usage events kept in memory while the database cannot be reached (~0.3 KB each: 30 MB); beyond, the
# oldest are dropped with an error line. Rows the database refuses never wait (billing/metering.py).
USAGE_MAX_QUEUED = env_int("TOKIOS_USAGE_MAX_QUEUED", 100_000)
if not 1_000 <= USAGE_MAX_QUEUED <= 10_000_000:
    raise ValueError(f"TOKIOS_USAGE_MAX_QUEUED must be between 1000 and 10000000, got {USAGE_MAX_QUEUED}")

# --- Tracing: OpenTelemetry spans of /v1 requests over OTLP/HTTP (proxy/tracing.py) -------------------
# Off unless an OTLP endpoint is configured (OTEL_EXPORTER_OTLP_ENDPOINT or
# OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) or TOKIOS_TRACING=otlp (then the SDK's default endpoint,
# http://localhost:4318); TOKIOS_TRACING=off or OTEL_SDK_DISABLED=true keep it off whatever else is
# set. Service name, sampler, export headers and batching are the SDK's own OTEL_* variables.
TRACING_MODE = env_str("TOKIOS_TRACING", "").strip().lower()
if TRACING_MODE not in ("", "otlp", "off"):
    raise ValueError(
        f"TOKIOS_TRACING must be otlp, off or empty (on when an OTLP endpoint is set), got {TRACING_MODE!r}"
    )
TRACING = (
    TRACING_MODE != "off"
    and not env_bool("OTEL_SDK_DISABLED", False)
    and (
        TRACING_MODE == "otlp"
        or bool(env_str("OTEL_EXPORTER_OTLP_ENDPOINT").strip() or env_str("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").strip())
    )
)
# Prompts and answers on spans: off unless the operator opts in, and then cut to this many characters.
TRACE_CONTENT = env_bool("TOKIOS_TRACE_CONTENT", False)
TRACE_CONTENT_MAX_CHARS = env_int("TOKIOS_TRACE_CONTENT_MAX_CHARS", 4096)
if not 1 <= TRACE_CONTENT_MAX_CHARS <= 1_000_000:
    raise ValueError(f"TOKIOS_TRACE_CONTENT_MAX_CHARS must be between 1 and 1000000, got {TRACE_CONTENT_MAX_CHARS}")

# --- Content-Security-Policy (tokios_site/csp.py, docs/security.md) ------------------------------------
# Same-origin scripts, styles, images and fonts only; no inline script or style, no eval, no plugins,
# no framing, forms post to this origin only. A path prefix may get its own policy (none needs one).
CONTENT_SECURITY_POLICY: dict[str, list[str]] = {
    "default-src": ["'self'"],
    "script-src": ["'self'"],
    "style-src": ["'self'"],
    "img-src": ["'self'", "data:"],  # data: for the icons Swagger UI's stylesheet embeds
    "font-src": ["'self'"],
    "connect-src": ["'self'"],
    "object-src": ["'none'"],
    "base-uri": ["'none'"],
    "form-action": ["'self'"],
    "frame-ancestors": ["'none'"],
}
if HTTPS:
    CONTENT_SECURITY_POLICY["upgrade-insecure-requests"] = []
CONTENT_SECURITY_POLICY_PATHS: dict[str, dict[str, list[str]]] = {}

# --- Access log and readiness (proxy/access_log.py, tokios_site/health.py) -------------------------
# One line per /v1 request on the `tokios.access` logger, written bare to stderr (no prefix: a JSON
# line stays JSON): `json` (one object per line), `text` (key=value pairs) or `off`. It has its own
# level, so LOG_LEVEL=WARNING leaves it on. proxy/access_log.py masks secrets in the fields a client
# writes itself; the handler goes without the redact filter, which would double the line's cost.
ACCESS_LOG = env_str("TOKIOS_ACCESS_LOG", "json").strip().lower() or "json"
if ACCESS_LOG not in {"json", "text", "off"}:
    raise ValueError(f"TOKIOS_ACCESS_LOG must be json, text or off, got {ACCESS_LOG!r}")
# (LOGGING's values are `object` to mypy until narrowed.)
assert isinstance(LOGGING["formatters"], dict) and isinstance(LOGGING["handlers"], dict)
assert isinstance(LOGGING["loggers"], dict) and isinstance(LOGGING["filters"], dict)
LOGGING["formatters"]["bare"] = {"format": "%(message)s"}
LOGGING["handlers"]["access"] = {"class": "logging.StreamHandler", "formatter": "bare"}
LOGGING["loggers"]["tokios.access"] = {"handlers": ["access"], "level": "INFO", "propagate": False}
# A 503 from /readyz is not logged as a django.request error per probe (tokios_site/probe_logging.py).
LOGGING["filters"]["quiet_readiness"] = {"()": "tokios_site.probe_logging.QuietReadiness"}
LOGGING["loggers"]["django.request"] = {**LOGGING["loggers"]["django.request"], "filters": ["quiet_readiness"]}
# /readyz: the database and Redis must each answer within READY_TIMEOUT seconds; the usage writer is
# not ready once its batch writes have failed for READY_WRITER_FAILING seconds in a row, or once a
# record has waited READY_WRITER_MAX_AGE seconds for the database (0 turns either check off).
READY_TIMEOUT = env_float("TOKIOS_READY_TIMEOUT", 2.0)
READY_WRITER_FAILING = env_float("TOKIOS_READY_WRITER_FAILING", 60.0)
READY_WRITER_MAX_AGE = env_float("TOKIOS_READY_WRITER_MAX_AGE", 120.0)
if not 0.1 <= READY_TIMEOUT <= 30:
    raise ValueError(f"TOKIOS_READY_TIMEOUT must be between 0.1 and 30 seconds, got {READY_TIMEOUT}")
if not (0 <= READY_WRITER_FAILING <= 86_400 and 0 <= READY_WRITER_MAX_AGE <= 86_400):
    raise ValueError("TOKIOS_READY_WRITER_FAILING and TOKIOS_READY_WRITER_MAX_AGE must be between 0 and 86400 seconds")
SECURE_REDIRECT_EXEMPT += [r"^readyz$"]  # probes speak plain http to the pod, as for /healthz

# --- Metrics (lib/metrics.py, tokios_site/metrics.py): GET /metrics in Prometheus's format ------------
# Off (404) unless a bearer token or admin networks are configured; with both, a scrape needs both:
# an address in TOKIOS_METRICS_ALLOW (comma-separated networks, e.g. 10.0.0.0/8,127.0.0.1; else 403) and
# `Authorization: Bearer <TOKIOS_METRICS_TOKEN>` (else 401). With DEBUG and neither, loopback may scrape.
# Several uvicorn workers: set PROMETHEUS_MULTIPROC_DIR (prometheus_client's own variable) to an empty
# directory of this server, and a scrape sums every worker.
METRICS_TOKEN = env_str("TOKIOS_METRICS_TOKEN").strip()
if METRICS_TOKEN and (len(METRICS_TOKEN) < 16 or not METRICS_TOKEN.isprintable() or " " in METRICS_TOKEN):
    raise ValueError("TOKIOS_METRICS_TOKEN must be at least 16 printable characters without spaces")
METRICS_ALLOW = env_networks("TOKIOS_METRICS_ALLOW")
# Distinct `deployment` label values per process; the deployments seen after these are labelled `other`.
METRICS_MAX_DEPLOYMENTS = env_int("TOKIOS_METRICS_MAX_DEPLOYMENTS", 1000)
if not 1 <= METRICS_MAX_DEPLOYMENTS <= 100_000:
    raise ValueError(f"TOKIOS_METRICS_MAX_DEPLOYMENTS must be between 1 and 100000, got {METRICS_MAX_DEPLOYMENTS}")
SECURE_REDIRECT_EXEMPT += [r"^metrics$"]  # a scraper's request was sent already: a redirect protects nothing
