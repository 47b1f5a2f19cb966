"""Settings for chatsite, read from the environment with safe local defaults (12-factor).

Every variable is listed in `.env.example` and in the README's settings table.
"""

from __future__ import annotations

from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

from chatsite import env_file_read

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
env_file_read(BASE_DIR)

DEBUG = env.bool("DJANGO_DEBUG", default=True)

_INSECURE_DEV_KEY = "django-insecure-local-development-key-do-not-deploy"
SECRET_KEY = env.str("DJANGO_SECRET_KEY", default="")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("Set DJANGO_SECRET_KEY when DJANGO_DEBUG is off.")
    SECRET_KEY = _INSECURE_DEV_KEY

ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "django_ratelimit",
    "runs",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    # Above the session middleware, so it acts after the session is saved (runs/middleware.py).
    "runs.middleware.session_ended_middleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "chatsite.urls"

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
                "runs.context_processors.accounts",
            ],
        },
    },
]

WSGI_APPLICATION = None
ASGI_APPLICATION = "chatsite.asgi.application"

DATABASES = {
    "default": env.db_url("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}"),
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Several writers (the relay tasks, the views) share one file: wait for the lock instead of
    # failing at once, and let readers run beside the writer.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "timeout": 20,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    )
else:
    DATABASES["default"].setdefault("CONN_MAX_AGE", env.int("DATABASE_CONN_MAX_AGE", default=0))

REDIS_URL = env.str("REDIS_URL", default="")
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            # Redis pub/sub: a group send is one PUBLISH, where the list-based layer runs a
            # script and a blocking pop per message (measured at 10 chats: a fifth less daphne
            # CPU per relayed token; 2 ms of added token latency instead of 9). Nothing is
            # queued for a socket that is gone, which suits deltas: a socket that comes back
            # asks for a snapshot. channels-redis's layer with its publishes pipelined
            # (runs.layers): a quarter less daphne CPU a relayed token at 100 chats.
            "BACKEND": "runs.layers.PipelinedRedisPubSubChannelLayer",
            "CONFIG": {
                # redis-py 8 reads with a 5 s socket timeout by default; the layer's reader
                # waits on its own short timeout, so the client needs none.
                "hosts": [{"address": REDIS_URL, "socket_timeout": None}],
            },
        }
    }
else:
    # One process only: the in-memory layer cannot reach sockets served by another process.
    CHANNEL_LAYERS = {
        "default": {"BACKEND": "runs.layers.LocalChannelLayer", "CONFIG": {"capacity": 1000}}
    }

# The cache holds the counts of the limits on sign-in, sign-up and reset mails (django-ratelimit).
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "chat",
        }
    }
    # Django's own Redis cache, whose increments are atomic, is not on the library's list.
    SILENCED_SYSTEM_CHECKS = ["django_ratelimit.W001"]
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    # Without Redis the site is one process (see CHANNEL_LAYERS): its memory is shared by every
    # request there is.
    SILENCED_SYSTEM_CHECKS = ["django_ratelimit.E003", "django_ratelimit.W001"]

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
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = BASE_DIR / "staticfiles"
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

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "chat"
LOGOUT_REDIRECT_URL = "chat"

SESSION_COOKIE_AGE = env.int("DJANGO_SESSION_COOKIE_AGE", default=60 * 60 * 24 * 30)

# Production hardening: on whenever DEBUG is off (see README, "Deployment").
if not DEBUG:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = env.bool("DJANGO_SECURE_SSL_REDIRECT", default=True)
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env.int("DJANGO_SECURE_HSTS_SECONDS", default=60 * 60 * 24 * 365)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SECURE_CONTENT_TYPE_NOSNIFF = True
    SECURE_REFERRER_POLICY = "same-origin"

# The run backend: a LangGraph Agent Server (LangGraph Platform, or `langgraph dev` locally).
LANGGRAPH_URL = env.str("LANGGRAPH_URL", default="http://127.0.0.1:2024").rstrip("/")
LANGGRAPH_API_KEY = env.str("LANGGRAPH_API_KEY", default="")
LANGGRAPH_ASSISTANT_ID = env.str("LANGGRAPH_ASSISTANT_ID", default="agent")
LANGGRAPH_CONNECT_TIMEOUT = env.float("LANGGRAPH_CONNECT_TIMEOUT", default=3.0)
# Outlives the server's 5 s stream heartbeats and a slow model's pauses between tokens.
LANGGRAPH_READ_TIMEOUT = env.float("LANGGRAPH_READ_TIMEOUT", default=60.0)
LANGGRAPH_WRITE_TIMEOUT = env.float("LANGGRAPH_WRITE_TIMEOUT", default=10.0)
LANGGRAPH_POOL_TIMEOUT = env.float("LANGGRAPH_POOL_TIMEOUT", default=10.0)
# How long a wait run (the JSON API, the no-JavaScript form) may take in all.
LANGGRAPH_WAIT_TIMEOUT = env.float("LANGGRAPH_WAIT_TIMEOUT", default=120.0)
# Streams are spread over this many clients: a pool's bookkeeping grows with the square of its
# connections (httpcore 1.0), so many small pools cost far less than a few large ones.
LANGGRAPH_STREAM_CLIENTS = env.int("LANGGRAPH_STREAM_CLIENTS", default=16)
LANGGRAPH_MAX_CONNECTIONS = env.int("LANGGRAPH_MAX_CONNECTIONS", default=500)
# Below uvicorn's 5 s keep-alive, so the backend never closes a connection under a new request
# (`make run` sets 60 for its embedded backend, which keeps them 120 s).
LANGGRAPH_KEEPALIVE_EXPIRY = env.float("LANGGRAPH_KEEPALIVE_EXPIRY", default=4.0)

# The chat.
CHAT_MAX_MESSAGE_CHARS = env.int("CHAT_MAX_MESSAGE_CHARS", default=8000)
CHAT_MEMORY_DEFAULT = env.bool("CHAT_MEMORY_DEFAULT", default=True)
CHAT_REQUIRE_LOGIN = env.bool("CHAT_REQUIRE_LOGIN", default=False)
# Anyone may create an account at /accounts/signup/ (false: only staff create them, in the admin).
CHAT_SIGNUP_OPEN = env.bool("CHAT_SIGNUP_OPEN", default=True)
# E-mail, for the link that resets a forgotten password. Without EMAIL_URL, DEBUG prints each
# mail on the console (`make run`'s terminal) and, with DEBUG off, resetting by e-mail is off.
# Not a setting of its own: the URL holds the SMTP password, which Django's error pages hide
# only under a name like EMAIL_HOST_PASSWORD.
_email_url = env.str("EMAIL_URL", default="")
if _email_url:
    vars().update(env.email_url_config(_email_url))
elif DEBUG:
    EMAIL_BACKEND = "django.core.mail.backends.console.EmailBackend"
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="chat@localhost")
CHAT_PASSWORD_RESET = bool(_email_url) or DEBUG
PASSWORD_RESET_TIMEOUT = 60 * 60 * 24  # a reset link works for a day, and once
# An hour, per client address: failed sign-ins, accounts created, reset links asked for; and
# reset mails per e-mail address (0: no limit).
CHAT_ACCOUNT_RATE_LIMIT = env.int("CHAT_ACCOUNT_RATE_LIMIT", default=10)
CHAT_RATE_LIMIT = env.int("CHAT_RATE_LIMIT", default=20)  # messages a minute per user/session
CHAT_MAX_SOCKETS_PER_SESSION = env.int("CHAT_MAX_SOCKETS_PER_SESSION", default=10)
CHAT_MAX_SOCKETS = env.int("CHAT_MAX_SOCKETS", default=2000)  # per process, all owners
# Under load, a reply's deltas after its first go out at most every CHAT_BATCH_DELTAS_MS (0: never
# batched), while the process relays at least CHAT_BATCH_DELTAS_FROM replies.
CHAT_BATCH_DELTAS_FROM = env.int("CHAT_BATCH_DELTAS_FROM", default=8)
CHAT_BATCH_DELTAS_MS = env.int("CHAT_BATCH_DELTAS_MS", default=100)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {
        "httpx": {"level": "WARNING"},
        "httpcore": {"level": "WARNING"},
        "daphne": {"level": "WARNING"},
    },
}

# Static files: WhiteNoise serves them under daphne; in development straight from static/.
WHITENOISE_USE_FINDERS = DEBUG
WHITENOISE_AUTOREFRESH = DEBUG
CSRF_FAILURE_VIEW = "runs.api.csrf_failure"
# Relays record their progress this often; a run silent for three beats is swept as interrupted.
CHAT_RELAY_HEARTBEAT_SECONDS = env.float("CHAT_RELAY_HEARTBEAT_SECONDS", default=5.0)
