"""Property-based fuzzing of archive extraction: hostile zips and tars never write outside the target folder.

The contract: whatever archive is uploaded, `extract_archive` either unpacks exactly its files or raises
InvalidAdapterError (TooLargeError past the caps), which the server answers with 400 (413); never another
exception, and never a byte outside `into`, a link, or more than the caps allow.
"""

from __future__ import annotations

import io
import os
import stat
import tarfile
import tempfile
import warnings
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from adapters.archives import copy_folder, extract_archive
from adapters.errors import InvalidAdapterError, TooLargeError

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MAX_BYTES = 1 << 16
MAX_FILES = 16
TAR_MODES = ("w", "w:gz", "w:bz2", "w:xz")
TAR_FORMATS = (tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT)


@dataclass(frozen=True)
class Member:
    name: str
    data: bytes = b""
    kind: str = "file"
    """file, dir, symlink, hardlink, chr, blk, fifo."""
    link: str = ""


@dataclass
class Sandbox:
    root: Path
    archive: Path
    into: Path
    outside: Path


@contextmanager
def sandbox(suffix: str) -> Iterator[Sandbox]:
    """upload/<archive>, staging/unpacked/ (the target) and a canary folder beside them, in a fresh folder."""
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "upload").mkdir()
        (root / "staging" / "unpacked").mkdir(parents=True)
        (root / "outside").mkdir()
        (root / "outside" / "canary.txt").write_bytes(b"canary")
        yield Sandbox(root, root / "upload" / f"adapter{suffix}", root / "staging" / "unpacked", root / "outside")


def everything(root: Path) -> set[str]:
    return {str(path.relative_to(root)) for path in root.rglob("*")}


def tree(into: Path) -> dict[str, bytes]:
    """The unpacked files; asserts that nothing else (links, devices) was made."""
    files = {}
    for path in into.rglob("*"):
        mode = path.lstat().st_mode
        assert stat.S_ISDIR(mode) or stat.S_ISREG(mode), f"{path} is neither a file nor a folder"
        if stat.S_ISREG(mode):
            files[path.relative_to(into).as_posix()] = path.read_bytes()
    return files


def unpack(box: Sandbox, max_bytes: int = MAX_BYTES, max_files: int = MAX_FILES) -> Exception | None:
    """extract_archive, allowed to raise only InvalidAdapterError; nothing may change outside `into`."""
    before = everything(box.root)
    error: Exception | None = None
    try:
        root = extract_archive(box.archive, box.into, max_bytes=max_bytes, max_files=max_files)
        assert root in (box.into, *box.into.iterdir())
    except InvalidAdapterError as exc:
        assert str(exc)
        error = exc
    after = everything(box.root)
    assert {path for path in after if not path.startswith("staging/unpacked/")} == before
    assert (box.outside / "canary.txt").read_bytes() == b"canary"
    written = tree(box.into)
    assert sum(len(data) for data in written.values()) <= max_bytes
    assert len(written) <= max_files
    return error


def build_zip(members: list[Member], compression: int) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buffer, "w", compression=compression) as bundle:
        warnings.simplefilter("ignore")  # duplicate names are what we test
        for member in members:
            info = zipfile.ZipInfo(member.name)
            info.compress_type = compression
            if member.kind == "dir":
                info.filename = member.name if member.name.endswith("/") else member.name + "/"
                info.external_attr = (stat.S_IFDIR | 0o755) << 16
            elif member.kind == "symlink":
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
            elif member.kind in ("chr", "blk", "fifo"):
                kind = {"chr": stat.S_IFCHR, "blk": stat.S_IFBLK, "fifo": stat.S_IFIFO}[member.kind]
                info.external_attr = (kind | 0o644) << 16
            bundle.writestr(info, member.link.encode() if member.kind == "symlink" else member.data)
    return buffer.getvalue()


TAR_TYPES = {
    "file": tarfile.REGTYPE,
    "dir": tarfile.DIRTYPE,
    "symlink": tarfile.SYMTYPE,
    "hardlink": tarfile.LNKTYPE,
    "chr": tarfile.CHRTYPE,
    "blk": tarfile.BLKTYPE,
    "fifo": tarfile.FIFOTYPE,
}


def build_tar(members: list[Member], mode: str, tar_format: int) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode, format=tar_format) as bundle:  # type: ignore[call-overload]
        for member in members:
            info = tarfile.TarInfo(member.name)
            info.type = TAR_TYPES[member.kind]
            info.linkname = member.link
            info.size = len(member.data) if member.kind == "file" else 0
            bundle.addfile(info, io.BytesIO(member.data) if member.kind == "file" else None)
    return buffer.getvalue()


# Names and members ----------------------------------------------------------------------------------------------

plain_part = st.text(
    alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="/\\\x00:"), min_size=1, max_size=12
).filter(lambda part: part not in (".", ".."))
hostile_part = plain_part | st.sampled_from(
    ["..", ".", "", "C:", "c:\\", "x" * 300, "a\\..\\..", "\\", "..\\evil", "~", "\u202eexe.txt", "é" * 130]
)
hostile_names = st.builds(
    lambda lead, parts, trail: lead + "/".join(parts) + trail,
    st.sampled_from(["", "/", "./", "\\", "../", "//"]),
    st.lists(hostile_part, min_size=1, max_size=4),
    st.sampled_from(["", "/", "\\"]),
)
hostile_members = st.builds(
    Member,
    hostile_names,
    st.binary(max_size=64),
    st.sampled_from(["file", "file", "file", "dir", "symlink", "hardlink", "chr", "blk", "fifo"]),
    st.sampled_from(["", "../../outside/canary.txt", "/etc/passwd", "adapter_config.json", "outside"]),
)
plain_names = st.lists(plain_part, min_size=1, max_size=3).map("/".join)


def without_conflicts(files: dict[str, bytes]) -> dict[str, bytes]:
    """Drop files whose path another file uses as a folder (a/b and a/b/c cannot both be files)."""
    return {name: data for name, data in files.items() if not any(other.startswith(name + "/") for other in files)}


plain_archives = st.dictionaries(plain_names, st.binary(max_size=300), min_size=1, max_size=10).map(without_conflicts)
containers = st.sampled_from(
    [(".zip", zipfile.ZIP_STORED), (".zip", zipfile.ZIP_DEFLATED), (".zip", zipfile.ZIP_BZIP2)]
    + [(".zip", zipfile.ZIP_LZMA)]
    + [(".tar" if mode == "w" else ".tar.gz", (mode, tar_format)) for mode in TAR_MODES for tar_format in TAR_FORMATS]
)


def build(members: list[Member], container: tuple[str, object]) -> bytes:
    suffix, how = container
    if suffix == ".zip":
        assert isinstance(how, int)
        return build_zip(members, how)
    mode, tar_format = how  # type: ignore[misc]
    return build_tar(members, mode, tar_format)


def buildable(members: list[Member], container: tuple[str, object]) -> bytes:
    """The archive, or a rejected example when the format cannot hold these names (ustar: 100-byte names)."""
    try:
        return build(members, container)
    except (ValueError, UnicodeError):
        assume(False)
        raise


# Properties -----------------------------------------------------------------------------------------------------


@FUZZ
@given(plain_archives, containers, st.booleans(), st.booleans())
def test_a_valid_archive_unpacks_to_exactly_its_files(
    files: dict[str, bytes], container: tuple[str, object], with_config: bool, with_folders: bool
) -> None:
    if with_config:
        files = without_conflicts({**files, "adapter_config.json": b"{}"})
    members = [Member(name, data) for name, data in files.items()]
    if with_folders:  # explicit folder entries, as zip -r and tar write them
        folders = sorted(
            {"/".join(name.split("/")[:depth]) for name in files for depth in range(1, name.count("/") + 1)}
        )
        members = [Member(folder, kind="dir") for folder in folders] + members
    with sandbox(container[0]) as box:
        box.archive.write_bytes(buildable(members, container))
        error = unpack(box, max_files=4 * MAX_FILES)  # folders count against the cap too
        assert error is None or "no adapter_config.json" in str(error)
        assert tree(box.into) == files


@FUZZ
@given(st.lists(hostile_members, min_size=1, max_size=6), containers)
@example([Member("a"), Member("a/b")], (".zip", zipfile.ZIP_STORED))
@example([Member("a/b"), Member("a")], (".tar", ("w", tarfile.PAX_FORMAT)))
@example([Member("a"), Member("a/", kind="dir")], (".zip", zipfile.ZIP_STORED))
@example([Member("a\\"), Member("a\\b")], (".zip", zipfile.ZIP_STORED))
@example([Member("x" * 300)], (".zip", zipfile.ZIP_STORED))
@example([Member("/".join(["é" * 120] * 40))], (".tar", ("w", tarfile.PAX_FORMAT)))
@example([Member("/".join(["é" * 125] * 17))], (".tar", ("w", tarfile.PAX_FORMAT)))  # over PATH_MAX
@example([Member("./")], (".zip", zipfile.ZIP_STORED))
@example([Member(".")], (".tar", ("w", tarfile.GNU_FORMAT)))
@example([Member("a"), Member("a")], (".zip", zipfile.ZIP_STORED))
@example([Member("a/b\x00c")], (".tar", ("w", tarfile.PAX_FORMAT)))
@example([Member("\x00x")], (".zip", zipfile.ZIP_STORED))  # ZipInfo cuts the name at NUL: an empty name
@example([Member("\udcff.json")], (".tar", ("w", tarfile.PAX_FORMAT)))
@example([Member("x", kind="hardlink", link="../../outside/canary.txt")], (".tar", ("w", tarfile.GNU_FORMAT)))
def test_hostile_members_never_escape(members: list[Member], container: tuple[str, object]) -> None:
    with sandbox(container[0]) as box:
        box.archive.write_bytes(buildable(members, container))
        error = unpack(box)
        if error is None or "no adapter_config.json" in str(error):  # harmless: plain files, each name once
            listed, special = listing(box.archive)
            assert not special, "a link or device was accepted"
            assert not any(".." in member.name.replace("\\", "/").split("/") for member in members)
            files = {normalized(name): data for name, data in listed}
            assert len(files) == len(listed)
            assert tree(box.into) == files


def listing(archive: Path) -> tuple[list[tuple[str, bytes]], bool]:
    """The archive's files as zipfile or tarfile read them back, and whether it holds anything else."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as bundle:
            kinds = {stat.S_IFMT(info.external_attr >> 16) for info in bundle.infolist()}
            files = [
                (info.filename, bundle.read(info)) for info in bundle.infolist() if not info.filename.endswith("/")
            ]
            return files, bool(kinds - {0, stat.S_IFREG, stat.S_IFDIR})
    with tarfile.open(archive) as bundle:
        members = bundle.getmembers()
        files = [(info.name, bundle.extractfile(info).read()) for info in members if info.isfile()]  # type: ignore[union-attr]
        return files, not all(info.isfile() or info.isdir() for info in members)


def normalized(name: str) -> str:
    return "/".join(part for part in name.replace("\\", "/").split("/") if part not in ("", "."))


@FUZZ
@given(plain_archives, containers, st.integers(0, 12), st.integers(0, 3000))
@example({"a": b"x" * 10}, (".zip", zipfile.ZIP_DEFLATED), 1, 10)
@example({"a": b"x" * 11}, (".tar.gz", ("w:gz", tarfile.PAX_FORMAT)), 1, 10)
@example({"a/b/c/d/e": b"x"}, (".zip", zipfile.ZIP_STORED), 3, 10)
def test_caps_are_enforced_exactly(
    files: dict[str, bytes], container: tuple[str, object], max_files: int, max_bytes: int
) -> None:
    with sandbox(container[0]) as box:
        box.archive.write_bytes(buildable([Member(name, data) for name, data in files.items()], container))
        error = unpack(box, max_bytes=max_bytes, max_files=max_files)
        folders = {"/".join(name.split("/")[:depth]) for name in files for depth in range(1, name.count("/") + 1)}
        too_large = (
            len(files) > max_files or len(folders) > max_files or sum(len(data) for data in files.values()) > max_bytes
        )
        assert isinstance(error, TooLargeError) == too_large, error


@FUZZ
@given(
    plain_archives,
    containers,
    st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), max_size=4),
    st.none() | st.integers(0, 1 << 16),
    st.binary(max_size=16),
)
def test_corrupt_and_truncated_archives_are_clean_refusals(
    files: dict[str, bytes],
    container: tuple[str, object],
    flips: list[tuple[int, int]],
    cut: int | None,
    junk: bytes,
) -> None:
    data = bytearray(buildable([Member(name, body) for name, body in files.items()], container))
    for position, value in flips:
        data[position % len(data)] = value
    if cut is not None:
        data = data[: cut % (len(data) + 1)]
    with sandbox(container[0]) as box:
        box.archive.write_bytes(bytes(data) + junk)
        unpack(box)


@FUZZ
@given(st.sampled_from([b"", b"PK", b"PK\x03\x04", b"PK\x05\x06", b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00"]), st.binary())
@example(b"PK\x05\x06", b"\x00" * 18)
@example(b"", b"ustar")
def test_random_bytes_are_clean_refusals(magic: bytes, data: bytes) -> None:
    with sandbox(".tar.gz") as box:
        box.archive.write_bytes(magic + data)
        assert unpack(box) is not None


@FUZZ
@given(
    st.lists(
        st.tuples(plain_names, st.sampled_from(["file", "file", "dir", "symlink-in", "symlink-out", "fifo"])),
        min_size=1,
        max_size=8,
    ),
    st.integers(0, 10),
)
def test_copy_folder_copies_plain_files_and_refuses_the_rest(entries: list[tuple[str, str]], max_files: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        source, into = Path(folder) / "source", Path(folder) / "into"
        source.mkdir()
        into.mkdir()
        (Path(folder) / "secret.txt").write_bytes(b"secret")
        made: dict[str, bytes] = {}
        for name, kind in entries:
            path = source / name
            inside = [parent for parent in path.parents if source in parent.parents]
            if path.exists() or path.is_symlink() or any(p.is_symlink() or not p.is_dir() for p in inside):
                continue  # the name is taken, or lies under a file or a link
            path.parent.mkdir(parents=True, exist_ok=True)
            if kind == "file":
                path.write_bytes(name.encode())
                made[name] = name.encode()
            elif kind == "dir":
                path.mkdir()
            elif kind == "symlink-in":
                path.symlink_to(source)
            elif kind == "symlink-out":
                path.symlink_to(Path(folder) / "secret.txt")
            else:
                os.mkfifo(path)
        hostile = any(p.is_symlink() or not (p.is_file() or p.is_dir()) for p in source.rglob("*"))
        try:
            copy_folder(source, into, max_bytes=MAX_BYTES, max_files=max_files)
        except TooLargeError:
            assert len(made) > max_files
            return
        except InvalidAdapterError:
            assert hostile
            return
        assert not hostile and len(made) <= max_files
        assert tree(into) == {
            path.relative_to(source).as_posix(): path.read_bytes() for path in source.rglob("*") if path.is_file()
        }


def test_a_huge_tar_extended_header_is_refused_before_it_is_read() -> None:
    """tarfile reads a pax header whole into memory: 300 MiB of it would pack into a 300 KiB .tar.gz."""
    info = tarfile.TarInfo("././@PaxHeader")
    info.type = tarfile.XHDTYPE
    info.size = 300 << 20
    with sandbox(".tar") as box:
        box.archive.write_bytes(info.tobuf(format=tarfile.USTAR_FORMAT) + b"\0" * 4096)
        with pytest.raises(TooLargeError, match="extended header"):
            extract_archive(box.archive, box.into, max_bytes=MAX_BYTES, max_files=MAX_FILES)
