"""The artifact store: content-addressed folders under $LORADOCK_HOME/artifacts.

A folder's address is the sha256 over its files' relative paths and contents, so identical content is stored
once, whatever name or version registers it. New content is assembled in `.incoming/` on the same filesystem and
renamed into place in one step: a reader never sees half an artifact, and a crash leaves only `.incoming/`
leftovers, which `sweep_incoming` removes.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class StoredArtifact:
    sha256: str
    path: Path
    created: bool
    """False when identical content was already stored."""


class ArtifactStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.objects = root / "sha256"
        self.incoming = root / ".incoming"
        self.objects.mkdir(parents=True, exist_ok=True)
        self.incoming.mkdir(parents=True, exist_ok=True)

    def staging(self) -> Path:
        """A new empty folder to assemble content in; discard it with `discard` if it is not committed."""
        return Path(tempfile.mkdtemp(dir=self.incoming))

    def discard(self, staged: Path) -> None:
        shutil.rmtree(staged, ignore_errors=True)

    def commit(self, folder: Path) -> StoredArtifact:
        """Move `folder` (inside staging) into the store under its content address."""
        digest = content_sha256(folder)
        target = self.path(digest)
        if target.exists():
            return StoredArtifact(digest, target, created=False)
        _fsync_tree(folder)
        try:
            folder.rename(target)
        except OSError:
            if target.exists():  # a concurrent commit of the same content won the race
                return StoredArtifact(digest, target, created=False)
            raise
        return StoredArtifact(digest, target, created=True)

    def path(self, sha256: str) -> Path:
        return self.objects / sha256

    def remove(self, sha256: str) -> None:
        """Delete stored content: renamed out of the way first, so it vanishes in one step."""
        target = self.path(sha256)
        if not target.exists():
            return
        doomed = self.incoming / f"removing-{sha256}-{os.getpid()}"
        target.rename(doomed)
        shutil.rmtree(doomed, ignore_errors=True)

    def stored(self) -> set[str]:
        return {entry.name for entry in self.objects.iterdir() if entry.is_dir()}

    def sweep_incoming(self, older_than_s: float = 3600) -> int:
        """Remove staging leftovers of crashed operations; returns how many were removed."""
        removed = 0
        cutoff = time.time() - older_than_s
        for entry in self.incoming.iterdir():
            if entry.stat().st_mtime >= cutoff:
                continue
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed += 1
        return removed


def content_sha256(folder: Path) -> str:
    """sha256 over (relative path, size, file sha256) of every file, in path order."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(folder).as_posix()}\0{path.stat().st_size}\0{file_sha256(path)}\n".encode())
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_tree(folder: Path) -> None:
    """Make the content durable before it becomes visible under its address."""
    for path in folder.rglob("*"):
        if path.is_file():
            with path.open("rb") as stream:
                os.fsync(stream.fileno())
