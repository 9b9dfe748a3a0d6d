"""The registry on SQLite and on the machine's PostgreSQL: versions, aliases, resolution, refusals, races."""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import inspect, select

from adapters.database import open_database
from adapters.errors import ConflictError, GoneError, HubError, InvalidNameError, NotFoundError
from adapters.naming import ModelRef, check_name, parse_model_ref
from adapters.records import AliasTarget
from adapters.registry import Registry
from adapters.sources import stage_source, stage_upload
from adapters.store import ArtifactStore
from adapters.tables import Base
from adapters.validation import Limits
from tests.adapter_factory import write_adapter
from tests.adapters.synthetic import synthetic_base
from tests.bad_adapters import build_corpus

BASE = synthetic_base()
LIMITS = Limits(max_rank=16, max_bytes=4 << 20, max_files=8)


@pytest.fixture
def registry(database_url: str, tmp_path: Path) -> Registry:
    return Registry(open_database(database_url), ArtifactStore(tmp_path / "artifacts"), LIMITS)


def register(registry: Registry, name: str, folder: Path, **kwargs: object) -> object:
    return registry.register(name, stage_source(registry.store, str(folder), LIMITS), BASE, created_by="test", **kwargs)


def adapter(tmp_path: Path, seed: int) -> Path:
    return write_adapter(tmp_path / f"src-{seed}", BASE, seed=seed)


def test_versions_are_numbered_and_content_is_stored_once(registry: Registry, tmp_path: Path) -> None:
    first = register(registry, "support", adapter(tmp_path, 1), metadata={"owner": "ops"})
    second = register(registry, "support", adapter(tmp_path, 2))
    again = register(registry, "support", adapter(tmp_path, 1))
    assert [first.version, second.version, again.version] == [1, 2, 3]
    assert first.sha256 == again.sha256 != second.sha256
    assert registry.store.stored() == {first.sha256, second.sha256}
    assert first.metadata == {"owner": "ops"}
    assert first.base_fingerprint == BASE.fingerprint and first.rank == 8
    assert len({first.lora_id, second.lora_id, again.lora_id}) == 3
    view = registry.get_adapter("support")
    assert [v.version for v in view.versions] == [1, 2, 3]
    identical = registry.register(
        "support",
        stage_source(registry.store, str(adapter(tmp_path, 1)), LIMITS),
        BASE,
        created_by="t",
        reuse_identical=True,
    )
    assert identical.version == 3


def test_resolution_of_name_version_and_alias(registry: Registry, tmp_path: Path) -> None:
    fp = BASE.fingerprint_sha256
    register(registry, "support", adapter(tmp_path, 1))
    register(registry, "support", adapter(tmp_path, 2))
    assert registry.resolve(ModelRef("support"), fp).pick(None).version == 2  # no prod: newest active
    registry.set_alias("support", "prod", [AliasTarget(version=1)], updated_by="t")
    assert registry.resolve(ModelRef("support"), fp).pick(None).version == 1  # prod wins
    assert registry.resolve(ModelRef("support", version=2), fp).pick(None).version == 2
    registry.set_alias("support", "canary", [AliasTarget(version=2)], updated_by="t")
    assert registry.resolve(ModelRef("support", alias="canary"), fp).pick(None).version == 2
    registry.set_alias("support", "prod", [AliasTarget(version=2)], updated_by="t")  # atomic move
    assert registry.resolve(ModelRef("support"), fp).pick(None).version == 2
    with pytest.raises(NotFoundError):
        registry.resolve(ModelRef("support", alias="nope"), fp)
    with pytest.raises(NotFoundError):
        registry.resolve(ModelRef("support", version=9), fp)
    with pytest.raises(NotFoundError):
        registry.resolve(ModelRef("ghost"), fp)
    with pytest.raises(NotFoundError, match="another base"):
        registry.resolve(ModelRef("support", version=1), "0" * 64)
    names = {name for name, _ in registry.servable_names()}
    assert names == {"support", "support@1", "support@2", "support:prod", "support:canary"}


def test_weighted_split_is_within_binomial_bounds_and_sticky_per_user(registry: Registry, tmp_path: Path) -> None:
    register(registry, "support", adapter(tmp_path, 1))
    register(registry, "support", adapter(tmp_path, 2))
    registry.set_alias(
        "support", "prod", [AliasTarget(version=1, weight=0.9), AliasTarget(version=2, weight=0.1)], updated_by="t"
    )
    resolution = registry.resolve(ModelRef("support"), BASE.fingerprint_sha256)
    counts = Counter(resolution.pick(None).version for _ in range(4000))
    # 4000 draws at p = 0.1: mean 400, sd 19; 5 sd either side
    assert 305 <= counts[2] <= 495, counts
    for user in ("alice", "bob", "carol"):
        assert len({resolution.pick(user).version for _ in range(50)}) == 1
    users = Counter(resolution.pick(f"user-{i}").version for i in range(2000))
    assert 130 <= users[2] <= 270, users


def test_deprecate_and_purge(registry: Registry, tmp_path: Path) -> None:
    fp = BASE.fingerprint_sha256
    v1 = register(registry, "support", adapter(tmp_path, 1))
    register(registry, "support", adapter(tmp_path, 2))
    v3 = register(registry, "support", adapter(tmp_path, 1))  # same content as v1
    registry.set_alias("support", "prod", [AliasTarget(version=1)], updated_by="t")
    with pytest.raises(ConflictError, match="prod"):
        registry.deprecate("support", 1)
    registry.set_alias("support", "prod", [AliasTarget(version=2)], updated_by="t")
    assert registry.deprecate("support", 1).status == "deprecated"
    with pytest.raises(GoneError):
        registry.resolve(ModelRef("support", version=1), fp)
    with pytest.raises(ConflictError, match="active"):
        registry.set_alias("support", "canary", [AliasTarget(version=1)], updated_by="t")
    registry.purge("support", 1)
    assert registry.store.path(v1.sha256).is_dir()  # v3 still holds the same content
    registry.purge("support", 3)
    assert not registry.store.path(v3.sha256).exists()
    with pytest.raises(NotFoundError):
        registry.resolve(ModelRef("support", version=3), fp)
    assert registry.resolve(ModelRef("support"), fp).pick(None).version == 2
    assert registry.statuses({v1.lora_id, v3.lora_id}) == {v1.lora_id: "purged", v3.lora_id: "purged"}


def test_concurrent_registrations_of_one_name_get_distinct_versions(registry: Registry, tmp_path: Path) -> None:
    sources = [adapter(tmp_path, seed) for seed in range(4)]
    versions: list[int] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(sources))

    def run(folder: Path) -> None:
        staged = stage_source(registry.store, str(folder), LIMITS)
        barrier.wait()
        try:
            versions.append(registry.register("racy", staged, BASE, created_by="t").version)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(folder,)) for folder in sources]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert sorted(versions) == [1, 2, 3, 4]


def _snapshot(registry: Registry) -> tuple[dict[str, list[tuple[object, ...]]], dict[str, bytes]]:
    """Every row of every table, and every file of the store, byte for byte."""
    rows = {}
    with registry.db.read() as session:
        for table in Base.metadata.sorted_tables:
            if inspect(session.bind).has_table(table.name):
                rows[table.name] = sorted(map(tuple, session.execute(select(table))), key=repr)
    files = {
        str(path.relative_to(registry.store.root)): path.read_bytes()
        for path in registry.store.root.rglob("*")
        if path.is_file()
    }
    return rows, files


def test_every_bad_adapter_is_refused_and_nothing_changes(registry: Registry, tmp_path: Path) -> None:
    register(registry, "existing", adapter(tmp_path, 7))
    corpus = build_corpus(
        BASE, tmp_path / "corpus", max_bytes=LIMITS.max_bytes, max_files=LIMITS.max_files, max_rank=LIMITS.max_rank
    )
    assert len(corpus) >= 20
    before = _snapshot(registry)
    for case in corpus:
        streams = [path.open("rb") for path in case.files]
        try:
            with pytest.raises(HubError) as refused:
                staged = stage_upload(
                    registry.store, [(p.name, s) for p, s in zip(case.files, streams, strict=True)], LIMITS
                )
                registry.register(case.name, staged, BASE, created_by="t")
        finally:
            for stream in streams:
                stream.close()
        assert case.says.lower() in str(refused.value).lower(), (case.id, str(refused.value))
        assert _snapshot(registry) == before, case.id


def test_names_and_model_refs() -> None:
    assert parse_model_ref("support") == ModelRef("support")
    assert parse_model_ref("support@3") == ModelRef("support", version=3)
    assert parse_model_ref("support:canary") == ModelRef("support", alias="canary")
    for bad in ("Support", "support@x", "support@0", "a:B", "", "x" * 65):
        assert parse_model_ref(bad) is None
    with pytest.raises(InvalidNameError):
        check_name("Bad Name")
