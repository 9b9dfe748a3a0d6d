"""API keys: created by ops (`loradock keys create`), shown once, stored as sha256 only.

Admin keys may use the ops API; inference keys may call models, optionally only some adapters (a tenant's
own). A key is checked on every request, so lookups are by the hash's unique index.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from sqlalchemy import select

from adapters.database import Database
from adapters.errors import NotFoundError
from adapters.naming import check_name
from adapters.records import ApiKeyView
from adapters.tables import ApiKey, utcnow

KEY_PREFIX = "ldk-"
SCOPES = ("admin", "inference")


@dataclass(frozen=True)
class Principal:
    """Who is calling: a key's scope, tenant and (for restricted inference keys) the adapters it may use."""

    key_id: int | None
    scope: str
    tenant: str
    adapters: frozenset[str] | None
    requests_per_minute: int | None = None
    """This key's own limits; None: the server's defaults (`key_requests_per_minute`, `key_max_concurrent`)."""
    max_concurrent: int | None = None

    @property
    def label(self) -> str:
        """How records name who made them."""
        return f"key:{self.key_id}" if self.key_id is not None else self.tenant

    @property
    def is_admin(self) -> bool:
        return self.scope == "admin"

    def may_use(self, adapter: str) -> bool:
        return self.is_admin or self.adapters is None or adapter in self.adapters


ANONYMOUS_ADMIN = Principal(key_id=None, scope="admin", tenant="local", adapters=None)
"""The caller when auth is off (a loopback-only server)."""


def hash_key(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode()).hexdigest()


def create_key(
    database: Database,
    *,
    scope: str,
    tenant: str = "default",
    adapters: list[str] | None = None,
    description: str = "",
    requests_per_minute: int | None = None,
    max_concurrent: int | None = None,
) -> tuple[str, ApiKeyView]:
    """A new key; the plaintext is returned once and never stored."""
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    for limit, value in (("requests_per_minute", requests_per_minute), ("max_concurrent", max_concurrent)):
        if value is not None and value < 1:
            raise ValueError(f"{limit} must be at least 1, got {value}")
    check_name(tenant, "tenant name")
    for adapter in adapters or []:
        check_name(adapter)
    plaintext = KEY_PREFIX + secrets.token_urlsafe(32)
    with database.session() as session:
        row = ApiKey(
            key_sha256=hash_key(plaintext),
            prefix=plaintext[: len(KEY_PREFIX) + 6],
            scope=scope,
            tenant=tenant,
            adapters=sorted(adapters) if adapters is not None else None,
            description=description,
            requests_per_minute=requests_per_minute,
            max_concurrent=max_concurrent,
        )
        session.add(row)
        session.flush()
        return plaintext, _view(row)


def authenticate(database: Database, plaintext: str, bootstrap_admin: str | None = None) -> Principal | None:
    """The principal a presented key belongs to, or None for an unknown or revoked key."""
    if bootstrap_admin and hmac.compare_digest(plaintext.encode(), bootstrap_admin.encode()):
        return Principal(key_id=None, scope="admin", tenant="admin", adapters=None)
    with database.read() as session:
        row = session.scalar(select(ApiKey).where(ApiKey.key_sha256 == hash_key(plaintext)))
        if row is None or row.revoked_at is not None:
            return None
        adapters = frozenset(row.adapters) if row.adapters is not None else None
        return Principal(
            key_id=row.id,
            scope=row.scope,
            tenant=row.tenant,
            adapters=adapters,
            requests_per_minute=row.requests_per_minute,
            max_concurrent=row.max_concurrent,
        )


def list_keys(database: Database) -> list[ApiKeyView]:
    with database.read() as session:
        return [_view(row) for row in session.scalars(select(ApiKey).order_by(ApiKey.id))]


def revoke_key(database: Database, key_id: int) -> ApiKeyView:
    with database.session() as session:
        row = session.get(ApiKey, key_id)
        if row is None:
            raise NotFoundError(f"no API key with id {key_id}")
        row.revoked_at = row.revoked_at or utcnow()
        session.flush()
        return _view(row)


def _view(row: ApiKey) -> ApiKeyView:
    return ApiKeyView(
        id=row.id,
        prefix=row.prefix,
        scope=row.scope,
        tenant=row.tenant,
        adapters=row.adapters,
        description=row.description,
        created_at=row.created_at,
        revoked_at=row.revoked_at,
        requests_per_minute=row.requests_per_minute,
        max_concurrent=row.max_concurrent,
    )
