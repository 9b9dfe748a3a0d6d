"""Where adapters come from: a local folder, an upload (files or one archive), or a Hugging Face Hub repo.

Each source ends the same way: the adapter's files copied into a fresh staging folder of the artifact store,
under the size caps, ready for validation. The caller discards the staging folder whatever happens next.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from adapters.archives import copy_folder, extract_archive
from adapters.errors import InvalidAdapterError, SourceError, TooLargeError
from adapters.store import ArtifactStore
from adapters.validation import Limits

HF_SCHEME = "hf://"
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")


@dataclass(frozen=True)
class Staged:
    folder: Path
    """The adapter's files, inside `staging`."""
    staging: Path
    kind: str
    """upload, local, huggingface or training."""
    uri: str


def stage_source(store: ArtifactStore, source: str, limits: Limits, *, kind: str = "local") -> Staged:
    """A `hf://org/repo[@revision]` reference or a local folder (or archive) path."""
    if source.startswith(HF_SCHEME):
        return _stage_huggingface(store, source, limits)
    path = Path(source).expanduser()
    if path.is_file() and path.name.endswith(ARCHIVE_SUFFIXES):
        with path.open("rb") as stream:
            return stage_upload(store, [(path.name, stream)], limits, uri=str(path.resolve()), kind=kind)
    if not path.is_dir():
        raise SourceError(f"adapter source {source!r} is neither a folder, an archive nor an hf:// reference")
    staging = store.staging()
    try:
        copy_folder(path, staging, max_bytes=limits.max_bytes, max_files=limits.max_files)
    except BaseException:
        store.discard(staging)
        raise
    return Staged(staging, staging, kind, str(path.resolve()))


def stage_upload(
    store: ArtifactStore,
    files: Iterable[tuple[str, BinaryIO]],
    limits: Limits,
    *,
    uri: str = "upload",
    kind: str = "upload",
) -> Staged:
    """Uploaded files: the adapter's files themselves, or exactly one archive holding them."""
    staging = store.staging()
    try:
        received = staging / ".received"
        received.mkdir()
        names = _receive(files, received, limits)
        if len(names) == 1 and names[0].endswith(ARCHIVE_SUFFIXES):
            unpacked = staging / "unpacked"
            unpacked.mkdir()
            folder = extract_archive(
                received / names[0], unpacked, max_bytes=limits.max_bytes, max_files=limits.max_files
            )
            shutil.rmtree(received)
            return Staged(folder, staging, kind, uri if uri != "upload" else f"upload:{names[0]}")
        folder = staging / "files"
        received.rename(folder)
        return Staged(folder, staging, kind, uri)
    except BaseException:
        store.discard(staging)
        raise


def _receive(files: Iterable[tuple[str, BinaryIO]], into: Path, limits: Limits) -> list[str]:
    names: list[str] = []
    budget = limits.max_bytes
    for name, stream in files:
        if not name or "/" in name or "\\" in name or name in (".", "..") or name.startswith("."):
            raise InvalidAdapterError(f"uploaded file name {name!r} must be a plain file name")
        if name in names:
            raise InvalidAdapterError(f"{name} is uploaded twice")
        names.append(name)
        if len(names) > limits.max_files:
            raise InvalidAdapterError(f"more than {limits.max_files} files uploaded")
        with (into / name).open("wb") as sink:
            while block := stream.read(1 << 20):
                budget -= len(block)
                if budget < 0:
                    raise TooLargeError(f"the upload is larger than {limits.max_bytes} bytes")
                sink.write(block)
    if not names:
        raise InvalidAdapterError("no files were uploaded")
    return names


def _stage_huggingface(store: ArtifactStore, source: str, limits: Limits) -> Staged:
    """Download through huggingface_hub, which honours HF_HUB_OFFLINE, HF_TOKEN and its cache."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    repo, _, revision = source.removeprefix(HF_SCHEME).partition("@")
    if repo.count("/") != 1:
        raise SourceError(f"{source!r}: expected hf://org/repo[@revision]")
    staging = store.staging()
    try:
        download = staging / ".download"
        try:
            snapshot_download(
                repo,
                revision=revision or None,
                local_dir=download,
                allow_patterns=["*.json", "*.safetensors", "*.md", "*.txt", "*.jinja", "*.model"],
            )
        except (RepositoryNotFoundError, LocalEntryNotFoundError, HfHubHTTPError, OSError) as exc:
            raise SourceError(f"cannot fetch {source}: {exc}") from exc
        shutil.rmtree(download / ".cache", ignore_errors=True)  # huggingface_hub's bookkeeping, not the adapter
        folder = staging / "files"
        copy_folder(download, folder, max_bytes=limits.max_bytes, max_files=limits.max_files)
        shutil.rmtree(download)
        return Staged(folder, staging, "huggingface", source)
    except BaseException:
        store.discard(staging)
        raise
