"""`loradock gc`: what crashes leave behind in $LORADOCK_HOME and the hub, found, and removed where that is safe.

Every write is staged under a temporary name and renamed into place (artifacts through the store's `.incoming/`,
dataset uploads as `files/.file-*`, trained adapters as `.adapter.partial`, small files by `write_atomic`), so a
kill -9 leaves leftovers under temporary names only, or content stored but never recorded: the store is written
before the database row that references it. gc finds both, and the reverse, which it cannot repair: rows whose
files are missing or no longer hash to what the row says.

Nothing in which something changed within the grace period is touched: another replica, or another process
here, may be in the middle of an upload, a registration, a training run or an export whose row is not written
yet. Long operations keep their staging folders fresh (`ArtifactStore.keep_alive`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, select

from adapters.hub import Hub
from adapters.store import content_sha256, file_sha256, last_activity, remove_path
from adapters.tables import PURGED, Adapter, AdapterVersion, Artifact, DataFile

STAGING = "staging"
UNREFERENCED = "unreferenced"
PARTIAL_UPLOAD = "partial upload"
UNREFERENCED_FILE = "unreferenced file"
PARTIAL_OUTPUT = "partial output"
MISSING = "missing"
CORRUPT = "corrupt"
KEPT = "kept"

DESCRIPTIONS = {
    STAGING: "leftover of an interrupted upload, registration, export or download (artifacts/.incoming)",
    UNREFERENCED: "stored content that no adapter version or export references",
    PARTIAL_UPLOAD: "dataset upload that never finished (files/.file-*)",
    UNREFERENCED_FILE: "dataset file that no /v1/files record references",
    PARTIAL_OUTPUT: "half-written training or export output under a temporary name",
    MISSING: "a database row references files that are not there (not repairable by gc)",
    CORRUPT: "files no longer hash to what the database row says (not repairable by gc)",
    KEPT: "not removed: the database is empty, which usually means a wrong LORADOCK_DATABASE_URL",
}


@dataclass(frozen=True)
class Finding:
    kind: str
    path: Path
    detail: str
    size_bytes: int
    age_s: float | None
    """Seconds since anything in it changed (None for missing files)."""

    @property
    def removable(self) -> bool:
        return self.kind in (STAGING, UNREFERENCED, PARTIAL_UPLOAD, UNREFERENCED_FILE, PARTIAL_OUTPUT)


def scan(hub: Hub, *, grace_s: float, verify: bool = True, allow_empty_database: bool = False) -> list[Finding]:
    """Everything gc would remove (older than `grace_s`), and every inconsistency it cannot repair.

    `verify` re-hashes every referenced artifact and dataset file (reads all of them); without it only their
    presence is checked. Unreferenced store content and dataset files are kept (kind `kept`) when the database
    holds no row at all, unless `allow_empty_database`: a wrong database URL would otherwise make everything look
    like garbage.
    """
    now = time.time()
    settings = hub.settings
    # Listed before the database is read: content committed after this listing is not judged at all.
    stored = {entry.name: entry for entry in hub.store.objects.iterdir()}
    stored_files = list(settings.files_dir.iterdir()) if settings.files_dir.is_dir() else []
    with hub.database.read() as session:
        versions = session.execute(
            select(Adapter.name, AdapterVersion.version, AdapterVersion.status, AdapterVersion.sha256).join(Adapter)
        ).all()
        artifacts = session.execute(
            select(Adapter.name, AdapterVersion.version, Artifact.id, Artifact.label, Artifact.sha256)
            .join(AdapterVersion, Artifact.version_id == AdapterVersion.id)
            .join(Adapter)
        ).all()
        files = session.execute(select(DataFile.id, DataFile.filename, DataFile.sha256)).all()
        empty = not versions and not session.scalar(select(func.count()).select_from(DataFile))

    owners: dict[str, list[str]] = defaultdict(list)
    for name, number, status, sha256 in versions:
        if status != PURGED:  # a purged version's files are deleted once nothing else holds them
            owners[sha256].append(f"{name}@{number}")
    for name, number, artifact_id, label, sha256 in artifacts:
        owners[sha256].append(f"{name}@{number} export {label} ({artifact_id})")

    findings = [
        Finding(STAGING, entry, "", _size(entry), now - last_activity(entry)) for entry in hub.store.leftovers(grace_s)
    ]
    for sha256, path in sorted(stored.items()):
        if sha256 in owners:
            continue
        with contextlib.suppress(FileNotFoundError):  # removed meanwhile (a purge)
            age = now - path.lstat().st_mtime  # set by the commit that stored or reused it
            if age >= grace_s:
                kind = KEPT if empty and not allow_empty_database else UNREFERENCED
                findings.append(Finding(kind, path, "", _size(path), age))
    for sha256, referenced_by in sorted(owners.items()):
        folder = hub.store.path(sha256)
        who = ", ".join(referenced_by)
        if not folder.is_dir() and _still_referenced(hub, sha256):  # not a purge that finished meanwhile
            findings.append(Finding(MISSING, folder, f"referenced by {who}", 0, None))
        elif verify and content_sha256(folder) != sha256:
            findings.append(Finding(CORRUPT, folder, f"content hash differs; referenced by {who}", _size(folder), None))

    keep_files = empty and not allow_empty_database
    findings += _dataset_files(stored_files, files, settings.files_dir, grace_s, now, verify, keep_files)
    for root in (settings.home / "runs", settings.jobs_dir):
        findings += _run_leftovers(root, grace_s, now)
    for cache in ("teachers", "answers"):
        findings += _cache_leftovers(settings.cache_dir / cache, grace_s, now)
    findings += _model_leftovers(settings.models_dir, grace_s, now)
    return findings


def remove(hub: Hub, findings: list[Finding], *, grace_s: float) -> list[Finding]:
    """Remove the removable findings, each only if still untouched for `grace_s`; returns those removed."""
    removed = []
    cutoff = time.time() - grace_s
    for finding in findings:
        if not finding.removable:
            continue
        if finding.kind == UNREFERENCED:
            if hub.store.remove_stale(finding.path.name, grace_s):
                removed.append(finding)
            continue
        try:
            if last_activity(finding.path) >= cutoff:
                continue  # something wrote into it since the scan
        except FileNotFoundError:
            continue
        remove_path(finding.path)
        removed.append(finding)
    return removed


def _still_referenced(hub: Hub, sha256: str) -> bool:
    with hub.database.read() as session:
        versions = select(AdapterVersion.id).where(AdapterVersion.sha256 == sha256, AdapterVersion.status != PURGED)
        artifacts = select(Artifact.id).where(Artifact.sha256 == sha256)
        return session.scalar(versions.limit(1)) is not None or session.scalar(artifacts.limit(1)) is not None


def _dataset_files(
    stored: list[Path],
    rows: Sequence[tuple[str, str, str]],
    files_dir: Path,
    grace_s: float,
    now: float,
    verify: bool,
    keep_unreferenced: bool,
) -> list[Finding]:
    """Uploads under temporary names (`.file-ID.partial`, `.file-ID.jsonl` while checked), files without a row,
    and rows without their file; a file is stored as `ID` + the lower-cased suffix of its original name."""
    findings = []
    expected = {f"{file_id}{Path(filename).suffix.lower()}": (file_id, sha256) for file_id, filename, sha256 in rows}
    for path in stored:
        if path.name in expected:
            continue
        with contextlib.suppress(FileNotFoundError):
            age = now - last_activity(path)
            if age < grace_s:
                continue
            if path.name.startswith("."):
                findings.append(Finding(PARTIAL_UPLOAD, path, "", _size(path), age))
            else:
                kind = KEPT if keep_unreferenced else UNREFERENCED_FILE
                findings.append(Finding(kind, path, "", _size(path), age))
    for name, (file_id, sha256) in sorted(expected.items()):
        path = files_dir / name
        if not path.is_file():
            findings.append(Finding(MISSING, path, f"the bytes of {file_id}", 0, None))
        elif verify and file_sha256(path) != sha256:
            findings.append(Finding(CORRUPT, path, f"the bytes of {file_id} hash differently", _size(path), None))
    return findings


def _run_leftovers(root: Path, grace_s: float, now: float) -> list[Finding]:
    """In each run folder: an adapter that was being saved or replaced, files `write_atomic` did not finish, and
    checkpoints without a readable trainer_state.json (the Trainer writes that file last)."""
    findings: list[Finding] = []
    for run in sorted(root.iterdir()) if root.is_dir() else []:
        if not run.is_dir():
            continue
        candidates = [entry for entry in run.iterdir() if entry.name.startswith(".adapter.") or _partial(entry)]
        checkpoints = run / "checkpoints"
        if checkpoints.is_dir():
            candidates += [
                entry
                for entry in checkpoints.glob("checkpoint-*")
                if entry.is_dir() and not _complete_checkpoint(entry)
            ]
        findings += _idle_outputs(candidates, grace_s, now)
    return findings


def _cache_leftovers(root: Path, grace_s: float, now: float) -> list[Finding]:
    """Cached teacher measurements and evaluation answers that `write_atomic` did not finish."""
    return _idle_outputs(root.glob(".*.partial") if root.is_dir() else [], grace_s, now)


def _idle_outputs(entries: Iterable[Path], grace_s: float, now: float) -> list[Finding]:
    """Half-written outputs nothing has touched for `grace_s` (one still being written is left alone)."""
    findings = []
    for entry in sorted(entries):
        with contextlib.suppress(FileNotFoundError):
            age = now - last_activity(entry)
            if age >= grace_s:
                findings.append(Finding(PARTIAL_OUTPUT, entry, "", _size(entry), age))
    return findings


def _model_leftovers(models_dir: Path, grace_s: float, now: float) -> list[Finding]:
    """The scratch folder of an interrupted `loradock models fetch-demo`, unless a fetch holds its lock."""
    scratch = models_dir / ".partial"
    if not scratch.exists():
        return []
    lock_path = models_dir / ".fetch.lock"
    with contextlib.suppress(FileNotFoundError):
        age = now - last_activity(scratch)
        if age < grace_s:
            return []
        with lock_path.open("a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return []  # a fetch is running
            fcntl.flock(lock, fcntl.LOCK_UN)
        return [Finding(PARTIAL_OUTPUT, scratch, "", _size(scratch), age)]
    return []


def _partial(entry: Path) -> bool:
    return entry.name.startswith(".") and entry.name.endswith(".partial")


def _complete_checkpoint(folder: Path) -> bool:
    try:
        return isinstance(json.loads((folder / "trainer_state.json").read_text()), dict)
    except (OSError, ValueError):
        return False


def _size(path: Path) -> int:
    try:
        if path.is_dir() and not path.is_symlink():
            return sum(entry.lstat().st_size for entry in path.rglob("*") if entry.is_file())
        return path.lstat().st_size
    except FileNotFoundError:
        return 0
