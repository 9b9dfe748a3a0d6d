"""Which model a request's `model` names: the base, or an adapter version from the hub.

Resolutions are cached for `resolution_cache_s` (2 s by default): long enough that the request path almost
never waits on the database, short enough that an alias moved or a version deprecated on another replica takes
effect at once for practical purposes. Only successes are cached, so a name registered a moment ago (on any
replica) resolves on its first request. While the database is unreachable, expired resolutions keep serving
(and the database is asked again only every UNREACHABLE_BACKOFF_S).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from adapters.errors import GoneError, NotFoundError
from adapters.fingerprint import BaseModelSpec, contract_mismatch
from adapters.hub import Hub
from adapters.keys import Principal
from adapters.naming import SHADOW_ALIAS, ModelRef, parse_model_ref
from adapters.records import VersionView
from adapters.registry import Resolution
from server.engine import LoraTarget
from server.errors import (
    IncompatibleModelError,
    ModelGoneError,
    ModelNotFoundError,
    PermissionDeniedError,
    database_unavailable,
)

UNREACHABLE_BACKOFF_S = 5.0
"""After the database failed to answer, cached resolutions are served without asking it again for this long."""
FINE_TUNED_PREFIX = "ft:"
"""Models named by fine-tuning jobs (`ft:BASE:SUFFIX:JOB`), each standing for one hub version."""


@dataclass(frozen=True, slots=True)
class ServedModel:
    """What a request resolved to: the exact name responses report, and the adapter to apply (None: the base)."""

    name: str
    lora: LoraTarget | None
    version: VersionView | None = None


class HubResolver:
    def __init__(self, base_name: str, base: BaseModelSpec, hub: Hub, cache_s: float) -> None:
        self.base = ServedModel(base_name, None)
        self.base_spec = base
        self._registry = hub.registry
        self._store = hub.store
        self._fine_tuning = hub.fine_tuning
        self._cache_s = cache_s
        self._cache: dict[str, tuple[Resolution, float]] = {}
        self._shadows: dict[str, tuple[ServedModel | None, float]] = {}
        self._unreachable_until = 0.0

    async def resolve(self, model: str, principal: Principal, user: str | None = None) -> ServedModel:
        """The model to serve, or 404 (unknown), 410 (deprecated) or 403 (another tenant's adapter)."""
        if model == self.base.name:
            return self.base
        if model.startswith(FINE_TUNED_PREFIX):
            ref_text = await asyncio.to_thread(self._fine_tuning.adapter_for, model)
            ref = parse_model_ref(ref_text) if ref_text else None
        else:
            ref = parse_model_ref(model)
        if ref is None:
            raise ModelNotFoundError(model)
        try:
            version = await self._resolve(model, ref, user)
        except ModelNotFoundError:
            if not principal.may_use(ref.name):  # a restricted key learns nothing about names outside its reach
                raise PermissionDeniedError(f"This API key may not use the model `{model}`.") from None
            raise
        if not (principal.may_use(ref.name) or version.owner == principal.tenant):
            raise PermissionDeniedError(f"This API key may not use the model `{model}`.")
        trained = version.metadata.get("manifest", {}).get("contract")
        if isinstance(trained, dict):
            mismatch = contract_mismatch(self.base_spec.contract, trained)
            if mismatch is not None:
                raise IncompatibleModelError(f"{version.ref} cannot be served over this base: {mismatch}.")
        return self.served(version)

    async def _resolve(self, model: str, ref: ModelRef, user: str | None) -> VersionView:
        cached = self._cache.get(model)
        now = time.monotonic()
        if cached is not None and (cached[1] > now or now < self._unreachable_until):
            resolution = cached[0]
        else:
            try:
                resolution = await asyncio.to_thread(self._registry.resolve, ref, self.base_spec.fingerprint_sha256)
            except NotFoundError:
                raise ModelNotFoundError(model) from None
            except GoneError as exc:
                raise ModelGoneError(str(exc), param="model") from exc
            except Exception as exc:
                if not database_unavailable(exc):
                    raise
                # The database is down: keep serving what this replica already resolved (an alias moved meanwhile
                # takes effect when it is back), rather than failing inference along with the ops API, and stop
                # asking it for a while, so a database that times out does not slow every request down.
                self._unreachable_until = time.monotonic() + UNREACHABLE_BACKOFF_S
                if cached is None:
                    raise
                return cached[0].pick(user)
            self._cache[model] = (resolution, time.monotonic() + self._cache_s)
        return resolution.pick(user)

    def served(self, version: VersionView) -> ServedModel:
        target = LoraTarget(version.ref, version.lora_id, str(self._store.path(version.sha256)))
        return ServedModel(version.ref, target, version)

    async def shadow_for(self, name: str) -> ServedModel | None:
        """The version `NAME:shadow` names, if any (asked on every live request, so absences are cached too)."""
        cached = self._shadows.get(name)
        now = time.monotonic()
        if cached is not None and (cached[1] > now or now < self._unreachable_until):
            return cached[0]
        if now < self._unreachable_until:
            return None
        try:
            resolution = await asyncio.to_thread(
                self._registry.resolve, ModelRef(name, alias=SHADOW_ALIAS), self.base_spec.fingerprint_sha256
            )
            shadow: ServedModel | None = self.served(resolution.pick(None))
        except (NotFoundError, GoneError):
            shadow = None
        except Exception as exc:
            if not database_unavailable(exc):
                raise
            self._unreachable_until = time.monotonic() + UNREACHABLE_BACKOFF_S
            return cached[0] if cached is not None else None  # no new shadow copies while the database is away
        self._shadows[name] = (shadow, time.monotonic() + self._cache_s)
        return shadow

    def invalidate(self) -> None:
        """Forget every cached resolution (after this replica changed an alias or a version's status)."""
        self._cache.clear()
        self._shadows.clear()

    async def servable(self, principal: Principal) -> list[tuple[str, VersionView]]:
        only = None if principal.is_admin or principal.adapters is None else set(principal.adapters)
        return await asyncio.to_thread(self._registry.servable_names, only, principal.tenant)
