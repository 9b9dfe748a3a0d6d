"""The adapter registry: immutable versions, movable aliases, and resolution of `model` strings.

Registration validates first, stores second and writes the database last, inside one transaction that holds the
adapter's row lock; a refusal at any step leaves the database and the store as they were. The database is the
source of truth shared by every server replica; the store holds the bytes.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from adapters.artifacts import ArtifactRegistry
from adapters.database import Database
from adapters.errors import ConflictError, GoneError, NotFoundError
from adapters.fingerprint import BaseModelSpec
from adapters.naming import DEFAULT_ALIAS, ModelRef, check_name
from adapters.records import AdapterView, AliasTarget, AliasView, VersionView
from adapters.sources import Staged
from adapters.store import ArtifactStore, content_sha256
from adapters.tables import ACTIVE, DEPRECATED, PURGED, Adapter, AdapterVersion, Alias
from adapters.validation import Limits, validate_adapter

REGISTRATION_ATTEMPTS = 5


@dataclass(frozen=True)
class Resolution:
    """What a model string resolved to: one version, or a weighted split over several."""

    ref: ModelRef
    choices: tuple[tuple[VersionView, float], ...]

    def pick(self, user: str | None) -> VersionView:
        """One version; the same `user` always lands on the same side of a split."""
        if len(self.choices) == 1:
            return self.choices[0][0]
        total = sum(weight for _, weight in self.choices)
        if user:
            digest = hashlib.sha256(f"{self.ref}\0{user}".encode()).digest()
            point = int.from_bytes(digest[:8], "big") / 2**64 * total
        else:
            point = random.random() * total
        for version, weight in self.choices:
            point -= weight
            if point < 0:
                return version
        return self.choices[-1][0]


class Registry:
    def __init__(self, database: Database, store: ArtifactStore, limits: Limits) -> None:
        self.db = database
        self.store = store
        self.limits = limits
        self.artifacts = ArtifactRegistry(database, store)

    # --- registration -----------------------------------------------------------------------------------

    def register(
        self,
        name: str,
        staged: Staged,
        base: BaseModelSpec,
        *,
        created_by: str,
        metadata: dict[str, Any] | None = None,
        reuse_identical: bool = False,
        tenant: str | None = None,
    ) -> VersionView:
        """Validate, store and record a new version of `name` (v1 if the name is new). Consumes `staged`.

        With `reuse_identical`, content equal to the newest active version returns that version instead of a
        new one (what `loradock serve --adapter` wants on every restart).
        """
        try:
            check_name(name)
            facts = validate_adapter(staged.folder, base, self.limits)
            if reuse_identical:
                same = self._newest_with_content(name, content_sha256(staged.folder))
                if same is not None:
                    return same
            stored = self.store.commit(staged.folder)
            details = dict(metadata or {})
            if facts.manifest:
                details["manifest"] = facts.manifest
            fields = dict(
                status=ACTIVE,
                sha256=stored.sha256,
                size_bytes=facts.size_bytes,
                rank=facts.rank,
                alpha=facts.alpha,
                target_modules=facts.target_modules,
                base_fingerprint=base.fingerprint,
                base_fingerprint_sha256=base.fingerprint_sha256,
                source_kind=staged.kind,
                source_uri=staged.uri[:1024],
                created_by=created_by,
                meta=details,
            )
            try:
                return self._insert_version(name, fields, created_by, tenant)
            except BaseException:
                if stored.created:
                    self._remove_unreferenced(stored.sha256)
                raise
        finally:
            self.store.discard(staged.staging)

    def _newest_with_content(self, name: str, sha256: str) -> VersionView | None:
        with self.db.read() as session:
            adapter = session.scalar(select(Adapter).where(Adapter.name == name))
            active = [row for row in adapter.versions if row.status == ACTIVE] if adapter else []
            newest = max(active, key=lambda row: row.version, default=None)
            return VersionView.of(newest, name) if newest is not None and newest.sha256 == sha256 else None

    def _insert_version(self, name: str, fields: dict[str, Any], created_by: str, tenant: str | None) -> VersionView:
        last_error: IntegrityError | None = None
        for _ in range(REGISTRATION_ATTEMPTS):
            try:
                with self.db.session() as session:
                    adapter = self._locked_adapter(session, name, created_by, tenant)
                    latest = session.scalar(
                        select(func.max(AdapterVersion.version)).where(AdapterVersion.adapter_id == adapter.id)
                    )
                    row = AdapterVersion(**fields, adapter_id=adapter.id, version=(latest or 0) + 1)
                    session.add(row)
                    session.flush()
                    return VersionView.of(row, name, adapter.tenant)
            except IntegrityError as exc:  # a concurrent registration took the name's first row or the number
                last_error = exc
        raise ConflictError(f"could not register {name}: concurrent registrations kept colliding") from last_error

    def _locked_adapter(self, session: Session, name: str, created_by: str, tenant: str | None) -> Adapter:
        """The adapter's row, locked for this transaction (PostgreSQL: FOR UPDATE; SQLite: BEGIN IMMEDIATE)."""
        adapter = session.scalar(select(Adapter).where(Adapter.name == name).with_for_update())
        if adapter is not None:
            if tenant is not None and adapter.tenant not in (None, tenant):
                raise ConflictError(f"adapter name {name!r} belongs to another tenant")
            return adapter
        adapter = Adapter(name=name, created_by=created_by, tenant=tenant)
        with session.begin_nested():
            session.add(adapter)
        return adapter

    # --- reading ----------------------------------------------------------------------------------------

    def get_adapter(self, name: str) -> AdapterView:
        with self.db.read() as session:
            return _view(self._adapter(session, name))

    def list_adapters(self, only: set[str] | None = None, tenant: str | None = None) -> list[AdapterView]:
        """Every adapter, or (when `only` is given) those named in it plus those `tenant` owns."""
        with self.db.read() as session:
            query = select(Adapter).order_by(Adapter.name)
            if only is not None:
                query = query.where(or_(Adapter.name.in_(only), Adapter.tenant == tenant))
            return [_view(adapter) for adapter in session.scalars(query)]

    def get_version(self, name: str, version: int) -> VersionView:
        with self.db.read() as session:
            return VersionView.of(self._version(session, name, version), name)

    def statuses(self, lora_ids: set[int]) -> dict[int, str]:
        """Status of each LoRA id (ids no longer in the database are missing)."""
        if not lora_ids:
            return {}
        with self.db.read() as session:
            rows = session.execute(
                select(AdapterVersion.id, AdapterVersion.status).where(AdapterVersion.id.in_(lora_ids))
            )
            return {row.id: row.status for row in rows}

    def resolve(self, ref: ModelRef, base_fingerprint_sha256: str) -> Resolution:
        """The version(s) a model string names, if they are servable over the given base."""
        with self.db.read() as session:
            adapter = self._adapter(session, ref.name)
            by_number = {row.version: row for row in adapter.versions}
            if ref.version is not None:
                rows = [self._servable(by_number.get(ref.version), ref)]
                weights = [1.0]
            else:
                alias_name = ref.alias or DEFAULT_ALIAS
                alias = next((a for a in adapter.aliases if a.name == alias_name), None)
                if alias is None and ref.alias is not None:
                    raise NotFoundError(f"adapter {ref.name} has no alias {ref.alias!r}")
                if alias is not None:
                    targets = [AliasTarget(**target) for target in alias.targets]
                    rows = [self._servable(by_number.get(t.version), ref) for t in targets]
                    weights = [t.weight for t in targets]
                else:
                    rows = [self._newest_active(adapter, ref)]
                    weights = [1.0]
            for row in rows:
                if row.base_fingerprint_sha256 != base_fingerprint_sha256:
                    raise NotFoundError(f"{ref.name}@{row.version} was registered for another base model")
            views = tuple(
                (VersionView.of(row, adapter.name), weight) for row, weight in zip(rows, weights, strict=True)
            )
            return Resolution(ref, views)

    def servable_names(self, only: set[str] | None = None, tenant: str | None = None) -> list[tuple[str, VersionView]]:
        """Every model string that resolves, with the version it names (a split alias: its first target)."""
        names: list[tuple[str, VersionView]] = []
        for adapter in self.list_adapters(only, tenant):
            active = {version.version: version for version in adapter.active_versions}
            if not active:
                continue
            aliases = {alias.name: alias for alias in adapter.aliases}
            default = aliases.get(DEFAULT_ALIAS)
            names.append((adapter.name, active[default.targets[0].version] if default else active[max(active)]))
            names += [(f"{adapter.name}@{number}", version) for number, version in sorted(active.items())]
            names += [(f"{adapter.name}:{alias.name}", active[alias.targets[0].version]) for alias in aliases.values()]
        return names

    # --- aliases and lifecycle ----------------------------------------------------------------------------

    def set_alias(self, name: str, alias: str, targets: list[AliasTarget], *, updated_by: str) -> AliasView:
        """Point `alias` at one version or split it by weight; the move is one atomic row write."""
        check_name(alias, "alias name")
        if not targets:
            raise ConflictError("an alias needs at least one target version")
        if len({target.version for target in targets}) != len(targets):
            raise ConflictError("an alias names each version once")
        with self.db.session() as session:
            adapter = self._adapter(session, name, lock=True)
            by_number = {row.version: row for row in adapter.versions}
            for target in targets:
                row = by_number.get(target.version)
                if row is None or row.status != ACTIVE:
                    state = "does not exist" if row is None else f"is {row.status}"
                    raise ConflictError(f"{name}@{target.version} {state}; an alias can only point at active versions")
            stored = [target.model_dump() for target in targets]
            alias_row = session.get(Alias, (adapter.id, alias))
            if alias_row is None:
                alias_row = Alias(adapter_id=adapter.id, name=alias, targets=stored, updated_by=updated_by)
                session.add(alias_row)
            elif alias_row.targets != stored:
                alias_row.previous_targets = alias_row.targets
                alias_row.targets = stored
                alias_row.updated_by = updated_by
            session.flush()
            return AliasView.of(alias_row)

    def delete_alias(self, name: str, alias: str) -> None:
        with self.db.session() as session:
            adapter = self._adapter(session, name, lock=True)
            row = session.get(Alias, (adapter.id, alias))
            if row is None:
                raise NotFoundError(f"adapter {name} has no alias {alias!r}")
            session.delete(row)

    def deprecate(self, name: str, version: int) -> VersionView:
        """Stop serving a version to new requests (410); its files stay for lineage and rollback."""
        with self.db.session() as session:
            row = self._version_for_change(session, name, version)
            if row.status == ACTIVE:
                row.status = DEPRECATED
            return VersionView.of(row, name)

    def purge(self, name: str, version: int) -> VersionView:
        """Deprecate and delete the files and the exports, unless something else still holds the same content."""
        with self.db.session() as session:
            row = self._version_for_change(session, name, version)
            row.status = PURGED
            hashes = [row.sha256, *self.artifacts.drop_all(session, row)]
            session.flush()
            view = VersionView.of(row, name)
        for sha256 in hashes:
            self._remove_unreferenced(sha256)
        return view

    def _version_for_change(self, session: Session, name: str, version: int) -> AdapterVersion:
        adapter = self._adapter(session, name, lock=True)
        row = self._version(session, name, version)
        for alias in adapter.aliases:
            if any(target["version"] == version for target in alias.targets):
                raise ConflictError(
                    f"alias {alias.name!r} of {name} points at version {version}; move or delete the alias first"
                )
        return row

    def _remove_unreferenced(self, sha256: str) -> None:
        self.artifacts.remove_unreferenced(sha256)

    # --- helpers ------------------------------------------------------------------------------------------

    @staticmethod
    def _adapter(session: Session, name: str, *, lock: bool = False) -> Adapter:
        query = select(Adapter).where(Adapter.name == name)
        adapter = session.scalar(query.with_for_update() if lock else query)
        if adapter is None:
            raise NotFoundError(f"no adapter named {name!r}")
        return adapter

    def _version(self, session: Session, name: str, version: int) -> AdapterVersion:
        adapter = self._adapter(session, name)
        row = next((row for row in adapter.versions if row.version == version), None)
        if row is None:
            raise NotFoundError(f"adapter {name} has no version {version}")
        return row

    @staticmethod
    def _servable(row: AdapterVersion | None, ref: ModelRef) -> AdapterVersion:
        if row is None or row.status == PURGED:
            raise NotFoundError(f"{ref} does not exist")
        if row.status == DEPRECATED:
            raise GoneError(f"{ref.name}@{row.version} is deprecated and no longer served")
        return row

    @staticmethod
    def _newest_active(adapter: Adapter, ref: ModelRef) -> AdapterVersion:
        active = [row for row in adapter.versions if row.status == ACTIVE]
        if active:
            return max(active, key=lambda row: row.version)
        if any(row.status == DEPRECATED for row in adapter.versions):
            raise GoneError(f"every version of {ref.name} is deprecated")
        raise NotFoundError(f"{ref.name} has no servable version")


def _view(adapter: Adapter) -> AdapterView:
    return AdapterView(
        name=adapter.name,
        created_at=adapter.created_at,
        created_by=adapter.created_by,
        owner=adapter.tenant,
        versions=[VersionView.of(row, adapter.name, adapter.tenant) for row in adapter.versions],
        aliases=[AliasView.of(alias) for alias in adapter.aliases],
    )
