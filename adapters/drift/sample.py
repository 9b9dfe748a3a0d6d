"""A reference profile from a sample the adapter's owner supplies (`loradock adapters register --drift-sample`,
`loradock drift --profile-from`, PUT /v1/adapters/{name}/versions/{version}/drift-profile)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from adapters.drift.features import Embedder
from adapters.drift.profile import ReferenceAnswer, build_profile, read_sample_file
from adapters.drift.store import DriftStore
from adapters.errors import ConflictError
from adapters.records import VersionView

MAX_SAMPLE = 20_000


class ProfileSample(BaseModel):
    """Prompts as the adapter will see them (user turns, or text prompts) and, optionally, good answers to them."""

    prompts: list[str] = Field(max_length=MAX_SAMPLE)
    answers: list[str] = Field(default_factory=list, max_length=MAX_SAMPLE)
    replace: bool = Field(default=False, description="Replace a profile the version already has.")

    @classmethod
    def from_file(cls, path: Path, *, replace: bool = False) -> ProfileSample:
        prompts, answers = read_sample_file(path)
        return cls(prompts=prompts, answers=[answer.text for answer in answers], replace=replace)


def store_sample_profile(
    store: DriftStore, version: VersionView, sample: ProfileSample, embedder: Embedder, created_by: str
) -> dict[str, Any]:
    """Build and store the profile of `sample` for `version`; its summary. ConflictError if the version has a
    profile and the sample does not ask to replace it."""
    profile = build_profile(sample.prompts, [ReferenceAnswer(a) for a in sample.answers], embedder, "sample-file")
    if not store.save_profile(version.lora_id, profile, created_by=created_by, replace=sample.replace):
        raise ConflictError(
            f"{version.ref} already has a reference profile; to replace it pass --replace (API: 'replace': true)"
        )
    return {"version": version.ref, **profile.summary()}
