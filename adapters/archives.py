"""Unpacking uploaded adapter archives (.zip, .tar, .tar.gz) without trusting them.

Refused: absolute paths, `..`, links of any kind, devices, names that are not plain UTF-8 file names, a path that
appears twice (or both as a file and as a folder), encrypted zip members, and anything past the caps on file
count and unpacked bytes. The byte cap is enforced while writing, not from the archive's own (forgeable) size
fields, so a zip bomb stops at the cap; tar's extended headers, which tarfile reads whole into memory, are capped
too. tarfile's `data` filter would allow in-tree links and does not count bytes, hence this small loop of our own.

A damaged archive (truncated, bad compressed data, garbage) is refused as InvalidAdapterError, whatever the
zipfile, tarfile or compression module raised while reading it; an error while writing our own staging folder
(a full disk) is not the upload's fault and propagates as it is.
"""

from __future__ import annotations

import errno
import lzma
import shutil
import stat
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path, PurePosixPath
from typing import IO

from adapters.errors import InvalidAdapterError, TooLargeError

CHUNK = 1 << 20
MAX_NAME_BYTES = 255
"""Longest file or folder name (in UTF-8 bytes) Linux file systems hold."""
MAX_TAR_HEADER_BYTES = 1 << 20
"""Largest tar extended header (long names, pax records); tarfile reads one whole into memory."""
UNREADABLE: tuple[type[BaseException], ...] = (
    zipfile.BadZipFile,
    tarfile.TarError,
    zlib.error,
    lzma.LZMAError,
    struct.error,
    EOFError,
    OSError,
    ValueError,
    OverflowError,
    NotImplementedError,
)
"""What zipfile, tarfile and the decompressors raise on damaged or unsupported input (caught around reads only)."""
_BAD_NAME_ERRNOS = (errno.ENAMETOOLONG, errno.EILSEQ, errno.EINVAL)
_EXTENDED_HEADERS = (
    tarfile.GNUTYPE_LONGNAME,
    tarfile.GNUTYPE_LONGLINK,
    tarfile.XHDTYPE,
    tarfile.XGLTYPE,
    tarfile.SOLARIS_XHDTYPE,
)
_ZIP_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA)


def extract_archive(archive: Path, into: Path, *, max_bytes: int, max_files: int) -> Path:
    """Unpack `archive` into the empty folder `into`; return the folder holding adapter_config.json.

    Raises:
        TooLargeError: past `max_files` files (or folders) or `max_bytes` unpacked bytes.
        InvalidAdapterError: an unreadable archive or an unsafe member; the message names the member.
    """
    with archive.open("rb") as stream:
        magic = stream.read(4)
    unpacker = _Unpacker(into, _Budget(max_bytes, max_files))
    if magic.startswith(b"PK"):
        _extract_zip(archive, unpacker)
    else:
        _extract_tar(archive, unpacker)
    return _adapter_root(into)


class _Budget:
    def __init__(self, max_bytes: int, max_files: int) -> None:
        self.bytes_left = max_bytes
        self.files_left = max_files
        self.folders_left = max_files
        self.max_bytes = max_bytes
        self.max_files = max_files

    def take_file(self) -> None:
        self.files_left -= 1
        if self.files_left < 0:
            raise TooLargeError(f"the archive holds more than {self.max_files} files")

    def take_folder(self) -> None:
        """Folders are capped like files: a million empty folders are cheap to pack and costly to make."""
        self.folders_left -= 1
        if self.folders_left < 0:
            raise TooLargeError(f"the archive holds more than {self.max_files} folders")

    def copy(self, blocks: Iterable[bytes], target: Path) -> None:
        with target.open("wb") as sink:
            for block in blocks:
                self.bytes_left -= len(block)
                if self.bytes_left < 0:
                    raise TooLargeError(f"the archive unpacks to more than {self.max_bytes} bytes")
                sink.write(block)


class _Unpacker:
    """Places members under `into`, refusing unsafe names and paths the archive holds twice."""

    def __init__(self, into: Path, budget: _Budget) -> None:
        self.into = into
        self.budget = budget
        self.files: set[PurePosixPath] = set()
        self.folders: set[PurePosixPath] = set()

    def folder(self, name: str) -> None:
        path = _relative(name)
        if path is None:
            return  # "./" names the archive's top, which exists
        self._claim(name, path, is_file=False)
        with _writing(name):
            (self.into / path).mkdir(parents=True, exist_ok=True)

    def file(self, name: str, blocks: Iterable[bytes]) -> None:
        path = _relative(name)
        if path is None:
            raise InvalidAdapterError(f"archive member {_shown(name)} has no file name")
        self._claim(name, path, is_file=True)
        self.budget.take_file()
        target = self.into / path
        with _writing(name):
            target.parent.mkdir(parents=True, exist_ok=True)
            self.budget.copy(blocks, target)

    def _claim(self, name: str, path: PurePosixPath, *, is_file: bool) -> None:
        if path in self.files:
            raise InvalidAdapterError(f"archive member {_shown(name)} appears twice in the archive")
        if is_file and path in self.folders:
            raise InvalidAdapterError(f"archive member {_shown(name)} is both a file and a folder in the archive")
        for parent in path.parents:
            if parent in self.files:
                raise InvalidAdapterError(f"archive member {_shown(name)} is inside {str(parent)!r}, which is a file")
        for folder in [*path.parents, *([] if is_file else [path])]:
            if folder not in self.folders and folder != PurePosixPath("."):
                self.budget.take_folder()
                self.folders.add(folder)
        if is_file:
            self.files.add(path)


@contextmanager
def _writing(name: str) -> Iterator[None]:
    """Writing a member: a name the file system refuses is the upload's fault; a full disk is ours."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in _BAD_NAME_ERRNOS:
            raise
        raise InvalidAdapterError(f"archive member {_shown(name)} cannot be unpacked here: {exc.strerror}") from exc


def _relative(name: str) -> PurePosixPath | None:
    """The member's path inside the archive, or None for its top; refuses anything that could leave it."""
    if "\x00" in name:
        raise InvalidAdapterError(f"archive member {_shown(name)} has a NUL byte in its name")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidAdapterError(f"archive member {_shown(name)} has a name that is not UTF-8 text") from None
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or name.startswith(("/", "\\")) or (path.parts and ":" in path.parts[0]):
        raise InvalidAdapterError(f"archive member {_shown(name)} has an absolute path")
    if ".." in path.parts:
        raise InvalidAdapterError(f"archive member {_shown(name)} climbs out of the archive with '..'")
    parts = [part for part in path.parts if part not in ("", ".")]
    if any(len(part.encode()) > MAX_NAME_BYTES for part in parts):
        raise InvalidAdapterError(f"archive member {_shown(name)} has a name part over {MAX_NAME_BYTES} bytes")
    return PurePosixPath(*parts) if parts else None


def _blocks(source: IO[bytes], name: str) -> Iterator[bytes]:
    """The member's bytes; a damaged member is refused by name."""
    while True:
        try:
            block = source.read(CHUNK)
        except UNREADABLE as exc:
            raise InvalidAdapterError(f"archive member {_shown(name)} is damaged: {_reason(exc)}") from exc
        if not block:
            return
        yield block


def _shown(name: str) -> str:
    """A member's name as messages quote it: tar names can be a megabyte long."""
    text = repr(name)
    return text if len(text) <= 120 else f"{text[:117]}..."


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _extract_zip(archive: Path, unpacker: _Unpacker) -> None:
    try:
        bundle = zipfile.ZipFile(archive)
    except UNREADABLE as exc:
        raise InvalidAdapterError(f"the upload is not a readable zip archive: {_reason(exc)}") from exc
    with bundle:
        for member in bundle.infolist():
            name = member.filename
            mode = member.external_attr >> 16  # Unix mode bits, where a Unix zip tool wrote them (else 0)
            if stat.S_ISLNK(mode):
                raise InvalidAdapterError(f"archive member {_shown(name)} is a link; links are refused")
            if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
                raise InvalidAdapterError(f"archive member {_shown(name)} is not a regular file")
            if name.endswith("/"):  # what ZipInfo.is_dir checks, which fails on an empty name
                unpacker.folder(name)
                continue
            if member.flag_bits & 0x1:
                raise InvalidAdapterError(f"archive member {_shown(name)} is encrypted; upload it unencrypted")
            if member.compress_type not in _ZIP_METHODS:
                raise InvalidAdapterError(
                    f"archive member {_shown(name)} uses compression method {member.compress_type}, which is not "
                    "supported (use stored, deflate, bzip2 or lzma)"
                )
            try:
                source = bundle.open(member)
            except UNREADABLE as exc:
                raise InvalidAdapterError(f"archive member {_shown(name)} is damaged: {_reason(exc)}") from exc
            with source:
                unpacker.file(name, _blocks(source, name))


class _CappedTarInfo(tarfile.TarInfo):
    """A TarInfo that refuses huge extended headers before tarfile reads them whole into memory."""

    def _proc_member(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type in _EXTENDED_HEADERS and self.size > MAX_TAR_HEADER_BYTES:
            raise TooLargeError(f"the archive has a {self.size}-byte extended header (at most {MAX_TAR_HEADER_BYTES})")
        return super()._proc_member(tarfile_)  # type: ignore[misc, no-any-return]  # private, absent from stubs


def _extract_tar(archive: Path, unpacker: _Unpacker) -> None:
    try:
        bundle = tarfile.open(archive, mode="r:*", tarinfo=_CappedTarInfo)  # noqa: SIM115 (closed by `with` below)
    except UNREADABLE as exc:
        raise InvalidAdapterError(
            f"the upload is not a readable .zip, .tar or .tar.gz archive: {_reason(exc)}"
        ) from exc
    with bundle:
        for member in _members(bundle):
            name = member.name
            if member.issym() or member.islnk():
                raise InvalidAdapterError(f"archive member {_shown(name)} is a link; links are refused")
            if not (member.isfile() or member.isdir()):
                raise InvalidAdapterError(f"archive member {_shown(name)} is not a regular file")
            if member.isdir():
                unpacker.folder(name)
                continue
            try:
                source = bundle.extractfile(member)
            except UNREADABLE as exc:
                raise InvalidAdapterError(f"archive member {_shown(name)} is damaged: {_reason(exc)}") from exc
            if source is None:
                raise InvalidAdapterError(f"archive member {_shown(name)} cannot be read")
            with source:
                unpacker.file(name, _blocks(source, name))


def _members(bundle: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    while True:
        try:
            member = bundle.next()
        except UNREADABLE as exc:
            raise InvalidAdapterError(f"the archive is damaged after its last good member: {_reason(exc)}") from exc
        if member is None:
            return
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
        try:
            str(relative).encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidAdapterError(f"{str(relative)!r} has a name that is not UTF-8 text") from None
        target = into / relative
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        elif path.is_file():
            budget.take_file()
            target.parent.mkdir(parents=True, exist_ok=True)
            with path.open("rb") as stream:
                budget.copy(iter(partial(stream.read, CHUNK), b""), target)
            shutil.copymode(path, target)
        else:
            raise InvalidAdapterError(f"{relative} is not a regular file")
