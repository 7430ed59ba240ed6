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

from lib.env import database_from_url, env_bool, env_float, env_int, env_list, env_str

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = Path(env_str("TOKIOS_DATA_DIR", str(BASE_DIR / ".tokios")))
DATA_DIR.mkdir(parents=True, exist_ok=True)


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
    "drf_spectacular_sidecar",
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

EMAIL_BACKEND = env_str("EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")
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
    # Swagger UI from the drf-spectacular-sidecar package, served by Tokios: no CDN. (No Redoc: its
    # page template links Google Fonts.)
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
}

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

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {"django.request": {"level": "ERROR"}},
}
