"""Gateway access: (presented key, model name) → the key and deployment, or the reason it may not.

The gateway (proxy/gateway.py, proxy/surfaces/models.py) reads keys and deployments through this
module on every /v1 request, so the warm path touches no database: decisions are built from two
cached records, the key's and the deployment's. Each lives in this process's memory for
`ACCESS_LOCAL_TTL` seconds (default 1 s) and, when Redis is configured, in Redis until a change
deletes it. Revoking a key or changing a grant deletes the shared entry at once, so every process
sees the change within about a second without waiting for a long TTL. The cold path makes one
query per record.

The apps below the gateway never call it: the receivers at the end of this module listen to their
model signals (saves and deletes, wherever they come from: actions, the Django admin, bulk edits)
and to `deployments.signals.connector_token_revoked`. `ProxyConfig.ready()` connects them.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from dataclasses import fields as dataclass_fields

import orjson
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.db.models.signals import m2m_changed, post_delete, post_save
from redis.exceptions import RedisError

from accounts.models import ApiKey, Organization
from accounts.secrets import API_KEY_PREFIX, hash_secret
from accounts.signals import api_key_secrets_retired
from deployments.models import DEPLOYMENT_NAME_RE, Deployment, DeploymentFallback, ModelGrant
from deployments.signals import connector_token_revoked
from lib.redis import get_async_redis, get_sync_redis, redis_enabled, report_outage

from .tunnel import presence

log = logging.getLogger("tokios.gateway")  # "tokios.access" is the access log (proxy/access_log.py)

SHARED_TTL = 300  # seconds a record may sit in Redis; changes delete it explicitly before that


@dataclass(frozen=True, slots=True)
class KeyRecord:
    id: int
    org_id: int
    org_slug: str
    key_hash: str
    prefix: str
    revoked: bool
    expires_at: float | None  # unix seconds
    all_models: bool
    allowed: tuple[int, ...]
    rpm_limit: int | None
    tpm_limit: int | None
    budget_micros: int | None
    org_rpm_limit: int | None
    org_tpm_limit: int | None
    org_budget_micros: int | None
    # Defaulted, like DeploymentRecord.disabled, for records cached by an older version.
    paused: bool = False
    # For the secret a rotation replaced: when it stops being accepted (unix seconds); None for the
    # key's current secret. Checked on every request, so the grace period ends on time however long
    # the record is cached.
    valid_until: float | None = None
    # The key opted in to its deployments' fallbacks (Deployment.fallbacks).
    use_fallbacks: bool = False


@dataclass(frozen=True, slots=True)
class DeploymentRecord:
    id: int
    name: str
    org_id: int
    upstream_model: str
    price_input_micros: int
    price_output_micros: int
    created_at: float
    granted_orgs: tuple[int, ...]
    # Switched off by an admin (deployments.lifecycle). Defaulted, so that a record cached by an
    # older version (without the field) still reads.
    disabled: bool = False
    # "auto", "translate" or "passthrough" (deployments.models.SurfaceMode).
    surface_mode: str = "auto"
    # The deployment whose connectors serve this one (Deployment.served_by), or None: its own.
    served_by: int | None = None
    # Names of the deployments tried, in order, when this one is offline or full.
    fallbacks: tuple[str, ...] = ()

    @property
    def pool(self) -> int:
        """The id its connectors announce themselves under: presence and the queue are keyed by it."""
        return self.served_by or self.id

    def cost_micros(self, input_tokens: int, output_tokens: int) -> int:
        total = input_tokens * self.price_input_micros + output_tokens * self.price_output_micros
        return -(-total // 1_000_000)


class AccessDenied(Exception):
    """Why a request may not proceed; `status` is the HTTP status of the error contract."""

    def __init__(
        self, status: int, code: str, message: str, param: str | None = None, headers: dict[str, str] | None = None
    ):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.param = param
        self.headers = headers or {}


def key_allows(key: KeyRecord, deployment: DeploymentRecord) -> bool:
    """The one rule for whether a key may call a deployment (used by /v1/models too)."""
    if deployment.org_id != key.org_id and key.org_id not in deployment.granted_orgs:
        return False
    return key.all_models or deployment.id in key.allowed


# --- the two caches -----------------------------------------------------------------------------

_MISSING = object()
_local: dict[str, tuple[float, object]] = {}


def _key_cache_id(key_hash: str) -> str:
    return f"tokios:access:key:{key_hash}"


def _deployment_cache_id(name: str) -> str:
    return f"tokios:access:dep:{name}"


def _local_get(cache_id: str):
    entry = _local.get(cache_id)
    if entry is None:
        return None
    expires, value = entry
    if expires < time.monotonic():
        _local.pop(cache_id, None)
        return None
    return value


def _local_put(cache_id: str, value: object) -> None:
    if len(_local) > 100_000:  # bounded: a flood of random keys must not grow memory forever
        _local.clear()
    _local[cache_id] = (time.monotonic() + settings.ACCESS_LOCAL_TTL, value)


async def _cached(cache_id: str, record_type: type, load):
    value = _local_get(cache_id)
    if value is not None:
        return None if value is _MISSING else value
    if redis_enabled():
        raw = await _shared_get(cache_id)
        if raw is not None:
            data = orjson.loads(raw)
            value = _MISSING if data is None else _from_dict(record_type, data)
            _local_put(cache_id, value)
            return None if value is _MISSING else value
    record = await sync_to_async(load)()
    _local_put(cache_id, _MISSING if record is None else record)
    if redis_enabled():
        payload = orjson.dumps(None if record is None else asdict(record))
        # Unknown ids are remembered only briefly: creating one later also invalidates it.
        await _shared_set(cache_id, payload, SHARED_TTL if record else 5)
    return record


# A Redis outage must not take /v1 down: the shared layer is only a cache, so its errors count as
# misses and the database answers.
def _redis_failed(exc: Exception) -> None:
    report_outage(log, "the shared access cache (Redis) failed, reading from the database", exc)


async def _shared_get(cache_id: str) -> bytes | None:
    try:
        return await get_async_redis().get(cache_id)
    except (RedisError, OSError) as exc:
        _redis_failed(exc)
        return None


async def _shared_set(cache_id: str, payload: bytes, ttl: int) -> None:
    try:
        await get_async_redis().set(cache_id, payload, ex=ttl)
    except (RedisError, OSError) as exc:
        _redis_failed(exc)


def _from_dict(record_type: type, data: dict):
    for name in ("allowed", "granted_orgs"):
        if name in data:
            data[name] = tuple(data[name])
    # Fields a newer version added are left out: processes of two versions side by side (a rolling
    # upgrade) share this cache.
    known = {field.name for field in dataclass_fields(record_type)}
    return record_type(**{name: value for name, value in data.items() if name in known})


def _load_key(key_hash: str) -> KeyRecord | None:
    # One query: the join yields a row per allowed deployment (or one row with None). The hash is
    # a key's current secret's, or the one its last rotation replaced (both columns are unique).
    rows = list(
        ApiKey.objects.filter(Q(key_hash=key_hash) | Q(previous_key_hash=key_hash)).values_list(
            "key_hash",
            "previous_valid_until",
            "paused_at",
            "id",
            "org_id",
            "org__slug",
            "prefix",
            "revoked_at",
            "expires_at",
            "all_models",
            "rpm_limit",
            "tpm_limit",
            "monthly_budget_micros",
            "use_fallbacks",
            "org__rpm_limit",
            "org__tpm_limit",
            "org__monthly_budget_micros",
            "allowed_deployments__id",
        )
    )
    if not rows:
        return None
    (current_hash, previous_valid_until, paused_at, kid, org_id, slug, prefix, revoked_at, expires_at, all_models) = (
        rows[0][:10]
    )
    rpm, tpm, budget, use_fallbacks, orpm, otpm, obudget = rows[0][10:17]
    valid_until = None
    if current_hash != key_hash:  # the replaced secret: accepted until the end of its grace
        valid_until = previous_valid_until.timestamp() if previous_valid_until else 0.0
    return KeyRecord(
        id=kid,
        org_id=org_id,
        org_slug=slug,
        key_hash=key_hash,
        prefix=prefix,
        revoked=revoked_at is not None,
        expires_at=expires_at.timestamp() if expires_at else None,
        all_models=all_models,
        allowed=tuple(sorted(row[-1] for row in rows if row[-1] is not None)),
        rpm_limit=rpm,
        tpm_limit=tpm,
        budget_micros=budget,
        org_rpm_limit=orpm,
        org_tpm_limit=otpm,
        org_budget_micros=obudget,
        paused=paused_at is not None,
        valid_until=valid_until,
        use_fallbacks=use_fallbacks,
    )


def _load_deployment(name: str) -> DeploymentRecord | None:
    rows = list(
        Deployment.objects.filter(name=name).values_list(
            "id",
            "org_id",
            "upstream_model",
            "price_input_micros",
            "price_output_micros",
            "created_at",
            "disabled_at",
            "surface_mode",
            "served_by_id",
            "fallback_links__position",
            "fallback_links__fallback__name",
            "grants__org_id",
        )
    )
    if not rows:
        return None
    did, org_id, upstream_model, pin, pout, created_at, disabled_at, surface_mode, served_by = rows[0][:9]
    # One query: a row per (fallback, grant) pair; both lists are short.
    fallbacks = dict.fromkeys(name for _, name in sorted({(row[9], row[10]) for row in rows if row[10] is not None}))
    return DeploymentRecord(
        id=did,
        name=name,
        org_id=org_id,
        upstream_model=upstream_model,
        price_input_micros=pin,
        price_output_micros=pout,
        created_at=created_at.timestamp(),
        granted_orgs=tuple(sorted(row[-1] for row in rows if row[-1] is not None)),
        disabled=disabled_at is not None,
        surface_mode=surface_mode,
        served_by=served_by,
        fallbacks=tuple(fallbacks),
    )


# --- public API ---------------------------------------------------------------------------------


# A refused key stays refused until someone changes it: SDKs that retry on their own are told not to.
# (Each refusal gets its own copy: a response's headers are its own.)
NO_RETRY = {"x-should-retry": "false"}


async def authenticate_key(secret: str | None) -> KeyRecord:
    """The key behind a presented secret, or AccessDenied(401)."""
    if not secret:
        raise AccessDenied(
            401,
            "missing_api_key",
            "You didn't provide an API key. Send it as 'Authorization: Bearer sk-tokios-…' (or x-api-key).",
            headers=dict(NO_RETRY),
        )
    if not secret.startswith(API_KEY_PREFIX) or len(secret) > 200:
        raise AccessDenied(401, "invalid_api_key", "Incorrect API key provided.", headers=dict(NO_RETRY))
    key_hash = hash_secret(secret)
    key = await _cached(_key_cache_id(key_hash), KeyRecord, lambda: _load_key(key_hash))
    # The lookup was by hash; the record's hash is the stored one, so equality is the
    # constant-time comparison of digests, not of secrets.
    if key is None:
        raise AccessDenied(
            401, "invalid_api_key", f"Incorrect API key provided: {secret[:18]}…", headers=dict(NO_RETRY)
        )
    if key.revoked:
        raise AccessDenied(401, "invalid_api_key", "This API key has been revoked.", headers=dict(NO_RETRY))
    now = time.time()
    if key.expires_at is not None and key.expires_at <= now:
        raise AccessDenied(401, "invalid_api_key", "This API key has expired.", headers=dict(NO_RETRY))
    if key.valid_until is not None and key.valid_until <= now:
        raise AccessDenied(
            401,
            "invalid_api_key",
            "This API key's secret was replaced (the key was rotated); use its new secret.",
            headers=dict(NO_RETRY),
        )
    if key.paused:
        raise AccessDenied(
            401,
            "key_paused",
            "This API key is paused: an admin of its organization paused it, and requests with it are "
            "refused until they resume it.",
            headers=dict(NO_RETRY),
        )
    return key


async def get_deployment(name: str) -> DeploymentRecord | None:
    # A name no deployment can have is unknown without a query (PostgreSQL refuses a NUL in a text
    # parameter) and without a cache entry.
    if not DEPLOYMENT_NAME_RE.fullmatch(name):
        return None
    return await _cached(_deployment_cache_id(name), DeploymentRecord, lambda: _load_deployment(name))


async def deployment_for(key: KeyRecord, model: object) -> DeploymentRecord:
    """The deployment a key may call under this model name, or AccessDenied (400 / 404 / 403 / 503)."""
    if not isinstance(model, str) or not model:
        raise AccessDenied(400, "missing_model", "you must provide a model parameter (a string)", "model")
    deployment = await get_deployment(model)
    if deployment is None:
        raise AccessDenied(
            404, "model_not_found", f"The model `{model}` does not exist or you do not have access to it.", "model"
        )
    if not key_allows(key, deployment):
        raise AccessDenied(
            403, "model_not_allowed", f"This API key is not allowed to use the model `{model}`.", "model"
        )
    if deployment.disabled:
        raise deployment_disabled(model)
    return deployment


def deployment_disabled(model: str) -> AccessDenied:
    """A deployment its owner switched off. Told only to keys that may call it (checked before), as
    a 503 like a deployment with no connector: the model exists and the key may use it, so neither
    a 404 nor a 403 (which send the caller to fix the name or the key) is true. Clients' SDKs retry
    a 503, but an admin must act first: `x-should-retry: false` stops them."""
    return AccessDenied(
        503,
        "deployment_disabled",
        f"The model `{model}` is disabled by its owner; it answers again once they enable it.",
        "model",
        headers={"x-should-retry": "false"},
    )


def _invalidate(cache_id: str) -> None:
    def run() -> None:
        _local.pop(cache_id, None)
        if redis_enabled():
            try:
                get_sync_redis().delete(cache_id)
            except (RedisError, OSError):
                # The change is saved; only the shared cache could not be told. Entries expire
                # after SHARED_TTL, so say loudly that one may be stale until then.
                log.error("could not drop %s from the shared access cache (Redis)", cache_id, exc_info=True)

    transaction.on_commit(run)


def invalidate_key(key_hash: str) -> None:
    """Forget a key's cached record once the current transaction commits."""
    _invalidate(_key_cache_id(key_hash))


def invalidate_deployment(name: str) -> None:
    _invalidate(_deployment_cache_id(name))


def clear_local_cache() -> None:
    _local.clear()


# --- what the gateway hears of changes made below it ---------------------------------------------


def forget_key(sender: type[ApiKey], instance: ApiKey, **kwargs: object) -> None:
    invalidate_key(instance.key_hash)
    if instance.previous_key_hash:  # the secret a rotation replaced, cached on its own
        invalidate_key(instance.previous_key_hash)


def forget_retired_secrets(sender: type[ApiKey], *, key_hashes: list[str], **kwargs: object) -> None:
    """Secrets a key no longer names (accounts.signals.api_key_secrets_retired)."""
    for key_hash in key_hashes:
        invalidate_key(key_hash)


def forget_key_models(sender: type, instance: object, action: str, pk_set: set[int] | None, **kwargs: object) -> None:
    """A key's model list changed, from the key's side or from a deployment's (the admin's inline)."""
    if isinstance(instance, ApiKey):
        invalidate_key(instance.key_hash)
    elif action == "pre_clear" and isinstance(instance, Deployment):
        for key_hash in instance.allowed_keys.values_list("key_hash", flat=True):
            invalidate_key(key_hash)
    elif pk_set:
        for key_hash in ApiKey.objects.filter(pk__in=pk_set).values_list("key_hash", flat=True):
            invalidate_key(key_hash)


def forget_org_keys(sender: type[Organization], instance: Organization, created: bool, **kwargs: object) -> None:
    # Org-wide limits and budgets travel inside each key's cached record.
    if not created:
        for key_hash in ApiKey.objects.filter(org=instance).values_list("key_hash", flat=True):
            invalidate_key(key_hash)


def forget_deployment(sender: type[Deployment], instance: Deployment, **kwargs: object) -> None:
    invalidate_deployment(instance.name)


def forget_grant(sender: type[ModelGrant], instance: ModelGrant, **kwargs: object) -> None:
    # Grants deleted in bulk (an org removed, admin bulk delete) bypass revoke_grant.
    invalidate_deployment(instance.deployment.name)


def forget_fallback(sender: type[DeploymentFallback], instance: DeploymentFallback, **kwargs: object) -> None:
    invalidate_deployment(instance.deployment.name)


def disconnect_revoked_token(sender: object, *, token_id: int, **kwargs: object) -> None:
    """Connectors holding a revoked token are closed (4003), in whichever process holds them."""
    presence.disconnect_token(token_id)


def listen() -> None:
    """Connect the receivers above; `ProxyConfig.ready()` calls this once the models are loaded."""
    for event, signal in (("saved", post_save), ("deleted", post_delete)):
        signal.connect(forget_key, sender=ApiKey, dispatch_uid=f"proxy.access.forget_key.{event}")
        signal.connect(forget_deployment, sender=Deployment, dispatch_uid=f"proxy.access.forget_deployment.{event}")
        signal.connect(forget_grant, sender=ModelGrant, dispatch_uid=f"proxy.access.forget_grant.{event}")
        signal.connect(forget_fallback, sender=DeploymentFallback, dispatch_uid=f"proxy.access.forget_fallback.{event}")
    post_save.connect(forget_org_keys, sender=Organization, dispatch_uid="proxy.access.forget_org_keys")
    m2m_changed.connect(
        forget_key_models, sender=Deployment.allowed_keys.through, dispatch_uid="proxy.access.forget_key_models"
    )
    connector_token_revoked.connect(disconnect_revoked_token, dispatch_uid="proxy.access.disconnect_revoked_token")
    api_key_secrets_retired.connect(forget_retired_secrets, dispatch_uid="proxy.access.forget_retired_secrets")
