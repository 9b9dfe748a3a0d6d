"""Unpacking uploaded adapter archives (.zip, .tar, .tar.gz) without trusting them.

Refused: absolute paths, `..`, links of any kind, devices, and anything past the caps on file count and
unpacked bytes. The byte cap is enforced while writing, not from the archive's own (forgeable) size fields, so a
zip bomb stops at the cap. tarfile's `data` filter would allow in-tree links and does not count bytes, hence
this small loop of our own.
"""

from __future__ import annotations

import shutil
import stat
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import IO

from adapters.errors import InvalidAdapterError, TooLargeError

CHUNK = 1 << 20


def extract_archive(archive: Path, into: Path, *, max_bytes: int, max_files: int) -> Path:
    """Unpack `archive` into the empty folder `into`; return the folder holding adapter_config.json."""
    with archive.open("rb") as stream:
        magic = stream.read(4)
    budget = _Budget(max_bytes, max_files)
    if magic.startswith(b"PK"):
        _extract_zip(archive, into, budget)
    else:
        _extract_tar(archive, into, budget)
    return _adapter_root(into)


class _Budget:
    def __init__(self, max_bytes: int, max_files: int) -> None:
        self.bytes_left = max_bytes
        self.files_left = max_files
        self.max_bytes = max_bytes
        self.max_files = max_files

    def take_file(self) -> None:
        self.files_left -= 1
        if self.files_left < 0:
            raise TooLargeError(f"the archive holds more than {self.max_files} files")

    def copy(self, source: IO[bytes], target: Path) -> None:
        with target.open("wb") as sink:
            while block := source.read(CHUNK):
                self.bytes_left -= len(block)
                if self.bytes_left < 0:
                    raise TooLargeError(f"the archive unpacks to more than {self.max_bytes} bytes")
                sink.write(block)


def _safe_target(into: Path, name: str) -> Path:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or name.startswith(("/", "\\")) or (path.parts and ":" in path.parts[0]):
        raise InvalidAdapterError(f"archive member {name!r} has an absolute path")
    if ".." in path.parts:
        raise InvalidAdapterError(f"archive member {name!r} climbs out of the archive with '..'")
    target = into.joinpath(*[part for part in path.parts if part not in ("", ".")])
    target.parent.mkdir(parents=True, exist_ok=True)
    return target


def _extract_zip(archive: Path, into: Path, budget: _Budget) -> None:
    try:
        with zipfile.ZipFile(archive) as bundle:
            for member in bundle.infolist():
                mode = member.external_attr >> 16
                if stat.S_ISLNK(mode):
                    raise InvalidAdapterError(f"archive member {member.filename!r} is a link; links are refused")
                target = _safe_target(into, member.filename)
                if member.is_dir():
                    target.mkdir(exist_ok=True)
                    continue
                budget.take_file()
                with bundle.open(member) as source:
                    budget.copy(source, target)
    except zipfile.BadZipFile as exc:
        raise InvalidAdapterError(f"the upload is not a readable zip archive: {exc}") from exc


def _extract_tar(archive: Path, into: Path, budget: _Budget) -> None:
    try:
        with tarfile.open(archive, mode="r:*") as bundle:
            for member in _members(bundle):
                if member.issym() or member.islnk():
                    raise InvalidAdapterError(f"archive member {member.name!r} is a link; links are refused")
                if not (member.isfile() or member.isdir()):
                    raise InvalidAdapterError(f"archive member {member.name!r} is not a regular file")
                target = _safe_target(into, member.name)
                if member.isdir():
                    target.mkdir(exist_ok=True)
                    continue
                budget.take_file()
                source = bundle.extractfile(member)
                if source is None:
                    raise InvalidAdapterError(f"archive member {member.name!r} cannot be read")
                with source:
                    budget.copy(source, target)
    except (tarfile.TarError, EOFError, OSError) as exc:
        if isinstance(exc, FileNotFoundError | PermissionError):
            raise
        raise InvalidAdapterError(f"the upload is not a readable .zip, .tar or .tar.gz archive: {exc}") from exc


def _members(bundle: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    while (member := bundle.next()) is not None:
        yield member


def _adapter_root(into: Path) -> Path:
    """Archives often wrap the adapter in one top-level folder; accept both layouts."""
    if (into / "adapter_config.json").is_file():
        return into
    entries = [entry for entry in into.iterdir() if not entry.name.startswith((".", "__MACOSX"))]
    if len(entries) == 1 and entries[0].is_dir() and (entries[0] / "adapter_config.json").is_file():
        return entries[0]
    raise InvalidAdapterError("the archive holds no adapter_config.json (at its top or in one top-level folder)")


def copy_folder(source: Path, into: Path, *, max_bytes: int, max_files: int) -> None:
    """Copy a local adapter folder into staging under the same caps; links are refused, not followed."""
    budget = _Budget(max_bytes, max_files)
    for path in sorted(source.rglob("*")):
        relative = path.relative_to(source)
        if path.is_symlink():
            raise InvalidAdapterError(f"{relative} is a symbolic link: adapters must hold plain files only")
        target = into / relative
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        elif path.is_file():
            budget.take_file()
            target.parent.mkdir(parents=True, exist_ok=True)
            with path.open("rb") as stream:
                budget.copy(stream, target)
            shutil.copymode(path, target)
        else:
            raise InvalidAdapterError(f"{relative} is not a regular file")
