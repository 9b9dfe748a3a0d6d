"""The artifact store: content-addressed folders under $LORADOCK_HOME/artifacts.

A folder's address is the sha256 over its files' relative paths and contents, so identical content is stored
once, whatever name or version registers it. New content is assembled in `.incoming/` on the same filesystem and
renamed into place in one step: a reader never sees half an artifact, and a crash leaves only `.incoming/`
leftovers, which `sweep_incoming` (at server start) and `loradock gc` remove.

Content is committed to the store before the database row that references it is written, so a crash between the
two leaves stored content that nothing references. `loradock gc` removes such content once it has been left alone
for a grace period; `commit` touches the folder (new or already stored) so that the period counts from the commit,
and `remove_stale` checks that time again after moving the folder away, so a registration that reuses the content
at that very moment keeps it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

KEEP_ALIVE_S = 60.0
"""How often a long-lived staging folder is touched; gc's grace period must be well above it."""


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

    @contextlib.contextmanager
    def keep_alive(self, *staged: Path, every_s: float = KEEP_ALIVE_S) -> Iterator[None]:
        """Touch staging folders while the block runs, so that gc (and `sweep_incoming` on another replica) sees
        an operation that writes nothing for a long while (an export measuring a model) as alive."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(every_s):
                for folder in staged:
                    with contextlib.suppress(OSError):  # committed or discarded meanwhile
                        os.utime(folder)

        thread = threading.Thread(target=beat, name="staging-keep-alive", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def commit(self, folder: Path) -> StoredArtifact:
        """Move `folder` (inside staging) into the store under its content address."""
        digest = content_sha256(folder)
        target = self.path(digest)
        if _touch(target):  # already stored; touched, so gc leaves it to the row about to reference it
            return StoredArtifact(digest, target, created=False)
        fsync_tree(folder)
        os.utime(folder)  # gc's grace period counts from the commit, not from the first staged file
        try:
            folder.rename(target)
        except OSError:
            if _touch(target):  # a concurrent commit of the same content won the race
                return StoredArtifact(digest, target, created=False)
            raise
        fsync_dir(self.objects)  # the rename is durable before any database row points at it
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

    def remove_stale(self, sha256: str, quiet_s: float) -> bool:
        """Delete stored content unless it was committed (or reused by a commit) within `quiet_s` seconds; for
        content no row references. Returns whether it was removed.

        The time is checked again once the folder is renamed away: a registration that reused the content in
        between touched it first, and gets it back before its row is written.
        """
        target = self.path(sha256)
        doomed = self.incoming / f"removing-{sha256}-{secrets.token_hex(4)}"  # unique across replicas too
        try:
            target.rename(doomed)
        except FileNotFoundError:
            return False
        try:
            modified = doomed.stat().st_mtime
        except FileNotFoundError:  # another replica's start-up sweep removed it meanwhile
            return True
        if modified > time.time() - quiet_s:
            try:
                doomed.rename(target)
            except OSError:  # a new commit of the same content is already back in place
                remove_path(doomed)
            return False
        remove_path(doomed)
        return True

    def stored(self) -> set[str]:
        return {entry.name for entry in self.objects.iterdir() if entry.is_dir()}

    def leftovers(self, older_than_s: float) -> list[Path]:
        """Entries of `.incoming/` in which nothing changed for `older_than_s` seconds: staging folders of
        crashed operations, and removals a crash interrupted."""
        cutoff = time.time() - older_than_s
        found = []
        for entry in sorted(self.incoming.iterdir()):
            with contextlib.suppress(FileNotFoundError):  # finished meanwhile
                if last_activity(entry) < cutoff:
                    found.append(entry)
        return found

    def sweep_incoming(self, older_than_s: float = 3600) -> int:
        """Remove staging leftovers of crashed operations; returns how many were removed."""
        removed = 0
        for entry in self.leftovers(older_than_s):
            remove_path(entry)
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


def last_activity(path: Path) -> float:
    """The newest modification time in `path`'s tree: a folder some process is still writing into is alive even
    when its own entry list has not changed for a while."""
    newest = path.lstat().st_mtime
    if path.is_dir() and not path.is_symlink():
        for folder, folders, files in os.walk(path):  # os.walk skips what vanishes while it walks
            for name in (*folders, *files):
                with contextlib.suppress(FileNotFoundError):
                    newest = max(newest, (Path(folder) / name).lstat().st_mtime)
    return newest


def remove_path(path: Path) -> None:
    """Delete a file or a folder tree; gone already is fine."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write a file whole or not at all: a temporary sibling, fsync, then one rename over `path`. After a crash
    (kill -9, power loss) `path` holds either the old or the new content, never a part of it."""
    payload = data.encode() if isinstance(data, str) else data
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.partial")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as to open()
    try:
        with os.fdopen(descriptor, "wb") as stream:
            stream.write(payload)
            stream.flush()
            os.fsync(stream.fileno())
        temporary.replace(path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_tree(folder: Path) -> None:
    """Make a folder's files and entries durable, before it becomes visible under its final name."""
    for path in folder.rglob("*"):
        if path.is_file():
            with path.open("rb") as stream:
                os.fsync(stream.fileno())
        elif path.is_dir():
            fsync_dir(path)
    fsync_dir(folder)


def fsync_dir(folder: Path) -> None:
    """Make the entries of a folder (a rename into it) durable."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _touch(folder: Path) -> bool:
    """Set the folder's time to now; False if it does not exist."""
    try:
        os.utime(folder)
    except FileNotFoundError:
        return False
    return True
