"""API-key authentication and scopes for every route.

Keys arrive as `Authorization: Bearer <key>` (what the openai client sends). A loopback-only server may run
without keys (the demo); any other bind address requires them (enforced by Settings).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import time
from typing import Annotated

from fastapi import Depends, Request

from adapters.keys import ANONYMOUS_ADMIN, Principal, authenticate, hash_key
from server.errors import (
    AuthenticationError,
    BrowserAuthenticationError,
    PermissionDeniedError,
    database_unavailable,
)
from server.state import ServerState, get_state

KEY_CACHE_S = 10.0
UNREACHABLE_BACKOFF_S = 5.0


class KeyCache:
    """Recently seen keys, so a request costs no database round trip; revocations apply within KEY_CACHE_S."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[Principal | None, float]] = {}
        self._unreachable_until = 0.0

    def get(self, key_hash: str, *, stale: bool = False) -> tuple[bool, Principal | None]:
        """(known, principal); expired entries too with `stale`, or while the database is marked unreachable."""
        entry = self._entries.get(key_hash)
        now = time.monotonic()
        if entry is None or (entry[1] < now and not stale and now >= self._unreachable_until):
            return False, None
        return True, entry[0]

    def mark_unreachable(self) -> None:
        """The database did not answer: serve known keys from here for a while without asking it."""
        self._unreachable_until = time.monotonic() + UNREACHABLE_BACKOFF_S

    def put(self, key_hash: str, principal: Principal | None) -> None:
        if len(self._entries) > 10_000:
            self._entries.clear()
        self._entries[key_hash] = (principal, time.monotonic() + KEY_CACHE_S)


async def get_principal(request: Request, state: Annotated[ServerState, Depends(get_state)]) -> Principal:
    if not state.settings.auth_required:
        return ANONYMOUS_ADMIN
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise AuthenticationError("Missing API key: send it as 'Authorization: Bearer <key>'.")
    principal = await _principal_for(state, key.strip())
    if principal is None:
        raise AuthenticationError("Incorrect API key provided.")
    state.key_limits.check_rate(principal)
    return principal


async def _principal_for(state: ServerState, key: str) -> Principal | None:
    key_hash = hash_key(key)
    known, principal = state.key_cache.get(key_hash)
    if not known:
        bootstrap = state.settings.admin_key.get_secret_value() if state.settings.admin_key else None
        try:
            principal = await asyncio.to_thread(authenticate, state.hub.database, key, bootstrap)
        except Exception as exc:
            if not database_unavailable(exc):
                raise
            state.key_cache.mark_unreachable()
            seen_before, stale_principal = state.key_cache.get(key_hash, stale=True)
            if not seen_before:
                raise
            # Keys seen before the database went away keep working (revocations apply once it is back).
            return stale_principal
        state.key_cache.put(key_hash, principal)
    return principal


async def require_browser_admin(request: Request, state: Annotated[ServerState, Depends(get_state)]) -> Principal:
    """An admin key from a browser (HTTP Basic, the key as password) or a tool (Bearer): for the dashboard."""
    if not state.settings.auth_required:
        return ANONYMOUS_ADMIN
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    key = credentials.strip()
    if scheme.lower() == "basic":
        try:
            key = base64.b64decode(key, validate=True).decode().partition(":")[2]
        except (binascii.Error, UnicodeDecodeError):
            key = ""
    elif scheme.lower() != "bearer":
        key = ""
    principal = await _principal_for(state, key) if key else None
    if principal is None:
        raise BrowserAuthenticationError("The dashboard needs an admin key: give it as the password.")
    if not principal.is_admin:
        raise PermissionDeniedError("The dashboard needs an admin key.")
    return principal


async def require_admin(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
    if not principal.is_admin:
        raise PermissionDeniedError("This operation needs an admin key.")
    return principal


Caller = Annotated[Principal, Depends(get_principal)]
Admin = Annotated[Principal, Depends(require_admin)]
BrowserAdmin = Annotated[Principal, Depends(require_browser_admin)]
