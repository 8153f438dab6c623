"""One settings module, read from the environment.

With no environment at all the router runs on the embedded default: SQLite (WAL) and kombu's
filesystem transport under ./var, so `make run` works on a machine with nothing but Python.
Production sets DATABASE_URL (PostgreSQL) and CELERY_BROKER_URL (Redis).
"""

import warnings
from datetime import timedelta
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from .env import env_bool, env_float, env_int, env_list, env_str

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("ROUTER_VAR_DIR", str(BASE_DIR / "var")))

# PRODUCTION=true turns on every deployment safeguard and refuses to start without a real secret.
PRODUCTION = env_bool("PRODUCTION", False)
DEBUG = env_bool("DEBUG", False) and not PRODUCTION


def _secret_key() -> str:
    if path := env_str("SECRET_KEY_FILE", ""):
        return Path(path).read_text().strip()
    if key := env_str("SECRET_KEY", ""):
        return key
    if PRODUCTION:
        raise ImproperlyConfigured("PRODUCTION is set: give SECRET_KEY or SECRET_KEY_FILE (50+ random characters).")
    return "embedded-default-not-for-production-" + "x" * 32


SECRET_KEY = _secret_key()
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
if PRODUCTION:
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
    SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    # Behind a TLS-terminating proxy that sets X-Forwarded-Proto (docs/deployment.md).
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    # Prometheus scrapes gunicorn directly on the internal network and cannot follow a redirect to an
    # HTTPS port that is the proxy's (docs/operations.md); /metrics carries counts, no patient data.
    SECURE_REDIRECT_EXEMPT = [r"^metrics$"]
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_AGE = env_int("SESSION_COOKIE_AGE", 8 * 3600)
# A worklist or admin session with no request from its user for this long is logged out; the worklist's
# background poll does not count (apps/accounts/middleware.py, docs/security.md).
SESSION_IDLE_TIMEOUT = env_int("SESSION_IDLE_TIMEOUT", 1800)
# The worklist's push (docs/worklist.md): each server-sent-events stream holds a web thread this long, then
# the browser reconnects; a page whose EventSource fails polls its rows this often instead.
WORKLIST_PUSH_LIFETIME = env_float("WORKLIST_PUSH_LIFETIME", 30.0)
WORKLIST_FALLBACK_POLL = env_float("WORKLIST_FALLBACK_POLL", 5.0)
# Push streams a web process serves at once: half its threads (Procfile: gunicorn --threads $WEB_THREADS), so
# pages, actions, the API and /metrics always find one; a page beyond it polls (docs/worklist.md).
WORKLIST_PUSH_STREAMS = env_int("WORKLIST_PUSH_STREAMS", max(1, env_int("WEB_THREADS", 16) // 2))
if SESSION_IDLE_TIMEOUT < 1:
    raise ImproperlyConfigured("SESSION_IDLE_TIMEOUT must be 1 second or more")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "knox",
    "axes",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "apps.core",
    "apps.accounts",
    "apps.studies",
    "apps.ingest",
    "apps.transforms",
    "apps.routing",
    "apps.priors",
    "apps.reading",
    "apps.notifications",
    "apps.pipeline",
    "apps.configuration",
    "apps.audit",
    "apps.api",
    "apps.archive",
    "apps.dicomweb",
    "apps.ops",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "apps.accounts.middleware.IdleSessionTimeoutMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes asks: it turns a refused login on the worklist or admin form into the lockout page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "routerproject.urls"
WSGI_APPLICATION = "routerproject.wsgi.application"

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
                "apps.reading.context_processors.ui_theme",
            ],
        },
    },
]

# --- Database ---------------------------------------------------------------------------------
DATABASES = {
    "default": dj_database_url.parse(
        env_str("DATABASE_URL", f"sqlite:///{VAR_DIR / 'router.sqlite3'}"),
        conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 0),
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # SQLite creates its file but not the folder; on a fresh checkout var/ does not exist yet.
    Path(DATABASES["default"]["NAME"]).parent.mkdir(parents=True, exist_ok=True)
    # WAL lets the SCP, the worker and the web process read while one writes; IMMEDIATE takes the
    # write lock at BEGIN so two writers queue on the busy timeout instead of failing mid-transaction.
    # synchronous stays FULL: a committed received-instance row must survive a power cut.
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 30,
    }
else:
    DATABASES["default"].setdefault("OPTIONS", {})["connect_timeout"] = env_int("DATABASE_CONNECT_TIMEOUT", 5)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

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
STATIC_ROOT = VAR_DIR / "static"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "worklist"
LOGOUT_REDIRECT_URL = "login"

# --- Accounts: login lockout (django-axes) and API tokens (django-rest-knox); docs/security.md -----------
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",  # first: refuses a locked-out login before the password is checked
    "django.contrib.auth.backends.ModelBackend",
]
# After AXES_FAILURE_LIMIT failures, logins are refused for that username, and separately for that address,
# on the worklist, admin and API logins, until the failures are AXES_COOLOFF_MINUTES old (axes dates each
# username/address/browser row by its latest failure) or staff delete them in admin. A refused attempt is
# audited but not counted, so it does not extend the lock.
AXES_FAILURE_LIMIT = env_int("AXES_FAILURE_LIMIT", 5)
AXES_COOLOFF_MINUTES = env_float("AXES_COOLOFF_MINUTES", 15.0)
AXES_COOLOFF_TIME = timedelta(minutes=AXES_COOLOFF_MINUTES)
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]  # each on its own, not the pair
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = False
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"
# The same address as the audit trail: the connection's. Behind a proxy, the proxy must pass the real one.
AXES_CLIENT_IP_CALLABLE = "apps.audit.services.client_address"
if AXES_FAILURE_LIMIT < 1 or AXES_COOLOFF_MINUTES <= 0:
    raise ImproperlyConfigured("AXES_FAILURE_LIMIT and AXES_COOLOFF_MINUTES must be above 0")
# Tokens are stored as SHA-512 digests, named, and expire API_TOKEN_DAYS after they are issued (no sliding).
API_TOKEN_DAYS = env_int("API_TOKEN_DAYS", 90)
if API_TOKEN_DAYS < 1:
    raise ImproperlyConfigured("API_TOKEN_DAYS must be 1 or more")
KNOX_TOKEN_MODEL = "accounts.ApiToken"  # knox's own AuthToken is swapped out for ours, which has a name
# knox's migrations hold nothing but that AuthToken and create its table even when it is swapped out (they do
# not declare it swappable): an empty table whose key to auth_user blocks `flush`. Without them there is none.
MIGRATION_MODULES = {"knox": None}
REST_KNOX = {
    "TOKEN_MODEL": KNOX_TOKEN_MODEL,
    "TOKEN_TTL": timedelta(days=API_TOKEN_DAYS),
    "AUTO_REFRESH": False,
    "AUTH_HEADER_PREFIX": "Token",  # what clients of rest_framework.authtoken already send
}

# --- REST API ---------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "knox.auth.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "apps.api.errors.handler",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "DICOM router API",
    "DESCRIPTION": (
        "Studies, deliveries and reading assignments. Token or session authentication: POST HTTP Basic "
        "credentials to auth/login/ for a token, then send 'Authorization: Token ...'."
    ),
    "VERSION": "1",
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "SERVE_INCLUDE_SCHEMA": False,
}

# --- Email (notifications) ---------------------------------------------------------------------
# The embedded default writes each email to a file under var/mail so a newcomer can read them.
EMAIL_BACKEND = env_str("EMAIL_BACKEND", "django.core.mail.backends.filebased.EmailBackend")
EMAIL_FILE_PATH = env_str("EMAIL_FILE_PATH", str(VAR_DIR / "mail"))
EMAIL_HOST = env_str("EMAIL_HOST", "localhost")
EMAIL_PORT = env_int("EMAIL_PORT", 25)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
EMAIL_TIMEOUT = env_int("EMAIL_TIMEOUT", 10)
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "router@localhost")

# --- DICOM -------------------------------------------------------------------------------------
STORAGE_ROOT = Path(env_str("STORAGE_ROOT", str(VAR_DIR / "storage")))
SCP_AE_TITLE = env_str("SCP_AE_TITLE", "ROUTER")
SCP_HOST = env_str("SCP_HOST", "0.0.0.0")
SCP_PORT = env_int("SCP_PORT", 11112)  # 0: no plain listener (TLS only)
# DICOM TLS (docs/security.md): a second listener with the same handlers, custody and limits. SCP_TLS_CA, if
# set, holds the CAs whose client certificates callers may present (an allow-list entry may require one).
SCP_TLS_PORT = env_int("SCP_TLS_PORT", 0)  # 0: no TLS listener
SCP_TLS_CERT = env_str("SCP_TLS_CERT", "")
SCP_TLS_KEY = env_str("SCP_TLS_KEY", "")
SCP_TLS_CA = env_str("SCP_TLS_CA", "")
# Certificates (ours, the destinations') that expire within this many days are told to staff, once each.
TLS_EXPIRY_WARNING_DAYS = env_int("TLS_EXPIRY_WARNING_DAYS", 14)
# SCP processes accepting on the port (runscp --processes): one receives on one core at most. Each process
# takes up to SCP_MAX_ASSOCIATIONS connections.
SCP_PROCESSES = env_int("SCP_PROCESSES", 1)
# Behind a TCP load balancer (docs/scale-out.md): connections from SCP_PROXY_FROM (addresses or networks,
# comma-separated) must start with a PROXY protocol header (v1 or v2) naming the modality, which admission
# and the received-instance rows then see; never read from any other address. Plain port only.
SCP_PROXY_PROTOCOL = env_bool("SCP_PROXY_PROTOCOL", False)
SCP_PROXY_FROM = env_list("SCP_PROXY_FROM", [])
SCP_MAX_ASSOCIATIONS = env_int("SCP_MAX_ASSOCIATIONS", 16)
# Seconds between two heartbeats of an SCP or worker process (/healthz, and the SCP's refusal counts).
HEARTBEAT_INTERVAL = env_float("HEARTBEAT_INTERVAL", 30.0)
# The door (apps/ingest/door.py, docs/security.md): connections not associated yet are counted apart from
# associations, and bounded per process and per source address; one host holds at most
# SCP_MAX_ASSOCIATIONS_PER_ADDRESS associations (an allow-list entry with a host may set its own figure).
SCP_MAX_PENDING = env_int("SCP_MAX_PENDING", 64)
SCP_MAX_PENDING_PER_ADDRESS = env_int("SCP_MAX_PENDING_PER_ADDRESS", 8)
SCP_MAX_ASSOCIATIONS_PER_ADDRESS = env_int("SCP_MAX_ASSOCIATIONS_PER_ADDRESS", 8)
# From the connect to the whole A-ASSOCIATE-RQ (a PROXY header and the TLS handshake included).
SCP_NEGOTIATION_TIMEOUT = env_float("SCP_NEGOTIATION_TIMEOUT", 5.0)
# New connections from one address, a second on average (bursts up to 2.5 s worth); beyond, closed at once.
# Off (0) by default: a sender with an association per instance can be fast (docs/security.md).
SCP_CONNECTION_RATE_PER_ADDRESS = env_float("SCP_CONNECTION_RATE_PER_ADDRESS", 0.0)
# While another address holds an association, one address starts at most this many associations a second
# (bursts of 2.5 s); one beyond waits its turn, up to 1 s, before it is answered. 0: never paced.
SCP_ASSOCIATION_PACE_PER_ADDRESS = env_float("SCP_ASSOCIATION_PACE_PER_ADDRESS", 25.0)
# Advertising 128 KB instead of pynetdicom's 16 KB saves about a quarter of the time on CT studies.
SCP_MAX_PDU = env_int("SCP_MAX_PDU", 131072)
SCP_SHUTDOWN_GRACE = env_float("SCP_SHUTDOWN_GRACE", 30.0)
# Before association a peer has this long to send its A-ASSOCIATE-RQ; after it, an association silent for
# SCP_IDLE_TIMEOUT is aborted. Any one PDU must arrive in full within the same time.
SCP_ACSE_TIMEOUT = env_float("SCP_ACSE_TIMEOUT", 30.0)
SCP_IDLE_TIMEOUT = env_float("SCP_IDLE_TIMEOUT", 120.0)
# A PDU other than P-DATA-TF (in practice the A-ASSOCIATE-RQ) declaring more is refused unread; a P-DATA-TF
# may declare SCP_MAX_PDU (plus 1 KB).
SCP_MAX_ASSOCIATE_PDU = env_int("SCP_MAX_ASSOCIATE_PDU", 65536)
# Below this much free space the SCP answers 0xA700 (senders retry later) instead of filling the disk.
# Query/retrieve on the SCP's ports and DICOMweb (docs/query-retrieve.md). Who may: the allow-list's
# "may query" / "may retrieve". The most matches one query answers (C-FIND says so with status B001).
QR_ENABLED = env_bool("QR_ENABLED", True)
QR_MAX_RESULTS = env_int("QR_MAX_RESULTS", 1000)
# Person names (PatientName, ReferringPhysicianName) match regardless of case; the standard's default is exact.
QR_FOLD_PERSON_NAMES = env_bool("QR_FOLD_PERSON_NAMES", False)
STORAGE_MIN_FREE_BYTES = env_int("STORAGE_MIN_FREE_BYTES", 1024 * 1024 * 1024)
# STOW-RS (POST /dicomweb/studies): the largest request body taken, and so the largest instance. A body
# declaring more answers 413 unread; a chunked one is cut off there (docs/configuration.md).
STOW_MAX_BYTES = env_int("STOW_MAX_BYTES", 4 * 1024 * 1024 * 1024)
WEB_PORT = env_int("WEB_PORT", 8000)
# QC decodes pixel data in the worker; an instance needing more memory than this is not decoded (and says so).
QC_MAX_DECODE_BYTES = env_int("QC_MAX_DECODE_BYTES", 256 * 1024 * 1024)

# --- Celery ------------------------------------------------------------------------------------
BROKER_DIR = VAR_DIR / "broker"
# routerfs:// is kombu's filesystem transport with atomic writes (routerproject/broker.py).
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", "routerfs://")
# Redis redelivers a message not acknowledged within the visibility timeout. Every countdown and
# retry stays far below it (checked by a system check); longer waits are next_attempt_at columns.
CELERY_VISIBILITY_TIMEOUT = env_int("CELERY_VISIBILITY_TIMEOUT", 900)
EMBEDDED_BROKER = CELERY_BROKER_URL.startswith(("routerfs", "filesystem"))
if EMBEDDED_BROKER:
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(BROKER_DIR / "queue"),
        "data_folder_out": str(BROKER_DIR / "queue"),
        "processed_folder": str(BROKER_DIR / "processed"),
        "control_folder": str(BROKER_DIR / "control"),
        "store_processed": False,
        "polling_interval": 0.1,
    }
else:
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "visibility_timeout": CELERY_VISIBILITY_TIMEOUT,
        # kombu 5.7 restores unacknowledged messages of a dead worker only every
        # interval x throttle seconds; the defaults (10 x 10 s) delay recovery by 90 s.
        "unacked_restore_interval": 5,
        "unacked_restore_throttle": 1,
    }
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
# One message per process on Redis: a long task never holds messages another worker could run. On the
# embedded filesystem transport Celery's synchronous loop looks for the next message only after a 2 s drain
# timeout once every slot is taken, so there each process takes 8 (docs/BENCHMARKS.md, "Why the code is so").
CELERY_WORKER_PREFETCH_MULTIPLIER = 8 if EMBEDDED_BROKER else 1
# A task running when the broker drops finishes: every task re-checks its rows, so the redelivered copy
# does nothing, whereas cancelling a delivery half way sends its last instance twice (tests/faults).
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = False
CELERY_WORKER_SEND_TASK_EVENTS = True
CELERY_TASK_SEND_SENT_EVENT = True
CELERY_TASK_TIME_LIMIT = env_int("CELERY_TASK_TIME_LIMIT", 600)
CELERY_TASK_SOFT_TIME_LIMIT = env_int("CELERY_TASK_SOFT_TIME_LIMIT", 540)
# Publishing at association end must not hang the SCP when the broker is away: a short retry,
# then the reconciler takes over from the database.
CELERY_TASK_PUBLISH_RETRY_POLICY = {"max_retries": 2, "interval_start": 0.2, "interval_step": 0.3}
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")
CELERY_BEAT_SCHEDULER = "routerproject.beat:Scheduler"  # survives a schedule file cut short

# --- Pipeline timing ---------------------------------------------------------------------------
# How often Beat ticks the sweepers, and how long a unit of work may sit still before the
# reconciler enqueues it again.
RECONCILE_INTERVAL = env_float("RECONCILE_INTERVAL", 15.0)
RECONCILE_AFTER = env_float("RECONCILE_AFTER", 120.0)
DELIVERY_SWEEP_INTERVAL = env_float("DELIVERY_SWEEP_INTERVAL", 5.0)
HEALTH_CHECK_INTERVAL = env_float("HEALTH_CHECK_INTERVAL", 30.0)
# A delivery through a transform profile has its copies made by a helper process beside each delivering
# process while the sender sends (apps/transforms/ahead.py); off: made in the delivering process first.
TRANSFORM_AHEAD = env_bool("TRANSFORM_AHEAD", True)
# How often the purge removes files whose retention passed (docs/storage.md); an emergency runs it at once.
STORAGE_PURGE_INTERVAL = env_float("STORAGE_PURGE_INTERVAL", 3600.0)

# --- Logging: ids and UIDs only, never names or birth dates ------------------------------------
LOG_LEVEL = env_str("LOG_LEVEL", "INFO")
# plain: one line of text per record; json: one JSON object per record (time, level, logger, message,
# process and thread), for a log shipper. Celery's worker and Beat use the same configuration.
LOG_FORMAT = env_str("LOG_FORMAT", "plain")
if LOG_FORMAT not in ("plain", "json"):
    raise ImproperlyConfigured(f"LOG_FORMAT must be plain or json, not {LOG_FORMAT!r}")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s %(process)d %(threadName)s",
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
        },
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        # pynetdicom logs identifiers and PDU dumps at DEBUG/INFO: keep it to warnings.
        "pynetdicom": {"level": "WARNING"},
        # pydicom's warnings quote the value they found invalid (a patient's name, say): errors only.
        "pydicom": {"level": "ERROR"},
    },
}
# The same warnings also go through the warnings module, value included: not to our logs either.
warnings.filterwarnings("ignore", message=r"Invalid value for VR", category=UserWarning)
