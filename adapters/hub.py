"""The hub in one object: database, artifact store and registry, opened from the settings."""

from __future__ import annotations

from dataclasses import dataclass

from adapters.database import Database, open_database
from adapters.drift.store import DriftStore
from adapters.feedback import FeedbackStore
from adapters.fine_tuning import FineTuningStore
from adapters.interactions import InteractionStore
from adapters.registry import Registry
from adapters.settings import Settings
from adapters.store import ArtifactStore
from adapters.validation import Limits


@dataclass
class Hub:
    settings: Settings
    database: Database
    store: ArtifactStore
    registry: Registry
    fine_tuning: FineTuningStore
    interactions: InteractionStore
    feedback: FeedbackStore
    drift: DriftStore

    @classmethod
    def open(cls, settings: Settings) -> Hub:
        """Connect to the database (migrating it) and the store."""
        database = open_database(settings.database)
        store = ArtifactStore(settings.artifacts_dir)
        limits = Limits(
            max_rank=settings.max_lora_rank,
            max_bytes=settings.max_adapter_bytes,
            max_files=settings.max_adapter_files,
        )
        fine_tuning = FineTuningStore(database, settings.files_dir, settings.max_file_bytes)
        registry = Registry(database, store, limits)
        return cls(
            settings,
            database,
            store,
            registry,
            fine_tuning,
            InteractionStore(database),
            FeedbackStore(database),
            DriftStore(database),
        )

    def close(self) -> None:
        self.database.dispose()
