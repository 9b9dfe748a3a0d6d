"""The drift reference profile of a version, built from the data it was trained on when it is registered."""

from __future__ import annotations

from adapters.drift.features import Embedder
from adapters.drift.profile import DriftProfile, ReferenceAnswer, build_profile
from adapters.hub import Hub
from adapters.records import VersionView


def profile_training_data(
    hub: Hub, version: VersionView, prompts: list[str], answers: list[ReferenceAnswer], created_by: str
) -> DriftProfile:
    """Store the profile of `prompts` for `version` (a version registered again keeps the profile it had)."""
    profile = build_profile(prompts, answers, Embedder(), "training-data")
    hub.drift.save_profile(version.lora_id, profile, created_by=created_by)
    return profile
