"""Exports recorded as artifacts of a version, on SQLite and PostgreSQL: lineage, replacement, purge, refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters.errors import NotFoundError
from adapters.registry import Registry
from tests.adapters.test_registry import adapter, register, registry  # noqa: F401 - the fixture is used by name


def staged_export(hub_registry: Registry, content: str) -> Path:
    folder = hub_registry.store.staging()
    (folder / "model.safetensors").write_text(content)
    (folder / "report.json").write_text("{}")
    return folder


def test_an_export_is_listed_with_its_version_and_replaced_whole(registry: Registry, tmp_path: Path) -> None:  # noqa: F811
    version = register(registry, "support", adapter(tmp_path, 1))
    first = registry.artifacts.add(
        "support", 1, staged_export(registry, "a"), kind="merged", label="merged", report={"x": 1}, created_by="t"
    )
    child = registry.artifacts.add(
        "support",
        1,
        staged_export(registry, "b"),
        kind="onnx",
        label="merged-onnx-int4",
        report={},
        created_by="t",
        parent_id=first.id,
    )
    listed = registry.get_version("support", 1).artifacts
    assert [(a.label, a.parent_id) for a in listed] == [("merged", None), ("merged-onnx-int4", first.id)]
    view, folder = registry.artifacts.get("support", 1, first.id)
    assert view.report == {"x": 1} and (folder / "model.safetensors").read_text() == "a"
    again = registry.artifacts.add(
        "support", 1, staged_export(registry, "c"), kind="merged", label="merged", report={}, created_by="t"
    )
    assert {a.id for a in registry.get_version("support", 1).artifacts} == {again.id, child.id}
    assert not folder.exists()  # the replaced export's files are gone, the new ones stored
    assert registry.store.stored() == {version.sha256, again.sha256, child.sha256}
    assert not list(registry.store.incoming.iterdir())


def test_refusals_store_nothing_and_purge_takes_the_exports(registry: Registry, tmp_path: Path) -> None:  # noqa: F811
    version = register(registry, "support", adapter(tmp_path, 1))
    with pytest.raises(NotFoundError, match="support@2"):
        registry.artifacts.add(
            "support", 2, staged_export(registry, "a"), kind="merged", label="merged", report={}, created_by="t"
        )
    with pytest.raises(ValueError, match="unknown artifact kind"):
        registry.artifacts.add(
            "support", 1, staged_export(registry, "a"), kind="gguf", label="gguf", report={}, created_by="t"
        )
    assert registry.store.stored() == {version.sha256}
    assert not list(registry.store.incoming.iterdir())
    registry.artifacts.add(
        "support", 1, staged_export(registry, "a"), kind="merged", label="merged", report={}, created_by="t"
    )
    registry.purge("support", 1)
    assert registry.store.stored() == set()
    with pytest.raises(NotFoundError, match="purged"):
        registry.artifacts.get("support", 1, "art-x")
