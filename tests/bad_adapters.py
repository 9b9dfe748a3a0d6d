"""A corpus of broken and hostile adapters and archives, each with the refusal it must get.

Every case is a list of files to upload (an adapter's files, or a single archive), as a client would send them.
"""

from __future__ import annotations

import io
import json
import struct
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from adapters.fingerprint import BaseModelSpec
from tests.adapter_factory import lora_config, lora_tensors


@dataclass(frozen=True)
class BadCase:
    id: str
    files: list[Path]
    status: int
    says: str
    """A fragment the error message must contain (case-insensitive)."""
    name: str = "bad-adapter"


def _safetensors_bytes(tensors: dict[str, np.ndarray], folder: Path) -> bytes:
    path = folder / ".scratch.safetensors"
    save_file(tensors, str(path))
    data = path.read_bytes()
    path.unlink()
    return data


def _tar(entries: list[tarfile.TarInfo], payloads: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as bundle:
        for info in entries:
            data = payloads.get(info.name)
            bundle.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def _file_info(name: str, data: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info


def build_corpus(base: BaseModelSpec, root: Path, *, max_bytes: int, max_files: int, max_rank: int) -> list[BadCase]:
    """At least 20 refusals: unsafe formats, malformed configs, wrong shapes, bad values, hostile archives, caps."""
    root.mkdir(parents=True, exist_ok=True)
    good_config = json.dumps(lora_config(8, ["q_proj", "v_proj"])).encode()
    good_tensors = lora_tensors(base, rank=8, modules=["q_proj", "v_proj"], seed=0)
    good_weights = _safetensors_bytes(good_tensors, root)
    cases: list[BadCase] = []

    def case(case_id: str, files: dict[str, bytes], status: int, says: str, name: str = "bad-adapter") -> None:
        folder = root / case_id
        folder.mkdir()
        paths = []
        for filename, data in files.items():
            (folder / filename).write_bytes(data)
            paths.append(folder / filename)
        cases.append(BadCase(case_id, paths, status, says, name))

    def adapter_with(**changes: bytes | None) -> dict[str, bytes]:
        files = {"adapter_config.json": good_config, "adapter_model.safetensors": good_weights}
        for filename, data in changes.items():
            filename = filename.replace("__", ".")
            if data is None:
                files.pop(filename, None)
            else:
                files[filename] = data
        return files

    def config_with(**changes: object) -> bytes:
        return json.dumps(lora_config(8, ["q_proj", "v_proj"], **changes)).encode()

    # unsafe or unexpected files
    case("pickle-weights", {"adapter_config.json": good_config, "adapter_model.bin": b"\x80\x04pickle"}, 400, "pickle")
    case("pt-checkpoint", adapter_with(training_state__pt=b"\x80\x04pickle"), 400, "pickle")
    case("pkl-extra", adapter_with(optimizer__pkl=b"\x80\x04pickle"), 400, "pickle")
    case("shell-script", adapter_with(run__sh=b"#!/bin/sh\nrm -rf /"), 400, "unexpected file type")
    # configs
    case("missing-config", adapter_with(adapter_config__json=None), 400, "adapter_config.json is missing")
    case("config-not-json", adapter_with(adapter_config__json=b"{r: 8"), 400, "not valid json")
    case("config-not-object", adapter_with(adapter_config__json=b"[1, 2]"), 400, "json object")
    case("not-lora", adapter_with(adapter_config__json=config_with(peft_type="PREFIX_TUNING")), 400, "only lora")
    case("rank-not-integer", adapter_with(adapter_config__json=config_with(r="eight")), 400, "positive integer")
    case("rank-too-large", adapter_with(adapter_config__json=config_with(r=max_rank * 2)), 400, "max_lora_rank")
    case("dora", adapter_with(adapter_config__json=config_with(use_dora=True)), 400, "dora")
    case("modules-to-save", adapter_with(adapter_config__json=config_with(modules_to_save=["lm_head"])), 400, "modules")
    # weights
    case("missing-weights", adapter_with(adapter_model__safetensors=None), 400, "adapter_model.safetensors is missing")
    case("not-safetensors", adapter_with(adapter_model__safetensors=b"GARBAGE" * 10), 400, "not a safetensors")
    truncated = struct.pack("<Q", 10**9) + b"{}"
    case("truncated-header", adapter_with(adapter_model__safetensors=truncated), 400, "not a safetensors")
    nan = {key: value.copy() for key, value in good_tensors.items()}
    next(iter(nan.values()))[0, 0] = np.nan
    case("nan-weights", adapter_with(adapter_model__safetensors=_safetensors_bytes(nan, root)), 400, "nan")
    inf = {key: value.copy() for key, value in good_tensors.items()}
    list(inf.values())[-1][1, 0] = np.inf
    case("inf-weights", adapter_with(adapter_model__safetensors=_safetensors_bytes(inf, root)), 400, "infinite")
    wrong_hidden = {
        key: np.zeros((value.shape[0], value.shape[1] * 2) if "lora_A" in key else (value.shape[0] * 2, value.shape[1]))
        for key, value in good_tensors.items()
    }
    wrong_hidden = {key: value.astype(np.float16) for key, value in wrong_hidden.items()}
    case(
        "wrong-hidden-size",
        adapter_with(adapter_model__safetensors=_safetensors_bytes(wrong_hidden, root)),
        400,
        "needs",
    )
    layers = base.fingerprint["num_hidden_layers"]
    deeper = dict(good_tensors)
    for part, shape in (
        ("lora_A", (8, base.fingerprint["hidden_size"])),
        ("lora_B", (base.fingerprint["hidden_size"], 8)),
    ):
        deeper[f"base_model.model.model.layers.{layers + 9}.self_attn.q_proj.{part}.weight"] = np.zeros(
            shape, np.float16
        )
    case(
        "wrong-base-layers",
        adapter_with(adapter_model__safetensors=_safetensors_bytes(deeper, root)),
        400,
        "another base",
    )
    other_base = {**base.fingerprint, "hidden_size": 2048, "num_hidden_layers": 24}
    manifest = json.dumps({"base_fingerprint": other_base}).encode()
    case("wrong-base-manifest", adapter_with(**{"loradock-adapter__json": manifest}), 400, "another base")
    full_layer = {**good_tensors, "lm_head.weight": np.zeros((4, 4), np.float16)}
    case(
        "full-weights", adapter_with(adapter_model__safetensors=_safetensors_bytes(full_layer, root)), 400, "not a lora"
    )
    one_sided = {key: value for key, value in good_tensors.items() if not key.endswith("q_proj.lora_B.weight")}
    case(
        "missing-lora-b", adapter_with(adapter_model__safetensors=_safetensors_bytes(one_sided, root)), 400, "no lora_b"
    )
    # names
    case("bad-name-spaces", adapter_with(), 400, "not allowed", name="Bad Name")
    case("bad-name-dots", adapter_with(), 400, "not allowed", name="..")
    case("bad-name-long", adapter_with(), 400, "not allowed", name="a" * 65)
    # hostile archives
    files = adapter_with()
    traversal = _tar(
        [_file_info("../../evil.json", b"{}")] + [_file_info(k, v) for k, v in files.items()],
        {"../../evil.json": b"{}", **files},
    )
    case("tar-traversal", {"adapter.tar.gz": traversal}, 400, "'..'")
    absolute = _tar([_file_info("/etc/cron.d/evil", b"x")], {"/etc/cron.d/evil": b"x"})
    case("tar-absolute-path", {"adapter.tar.gz": absolute}, 400, "absolute path")
    link = tarfile.TarInfo("adapter_model.safetensors")
    link.type = tarfile.SYMTYPE
    link.linkname = "/etc/passwd"
    symlinked = _tar([_file_info("adapter_config.json", good_config), link], {"adapter_config.json": good_config})
    case("tar-symlink", {"adapter.tar.gz": symlinked}, 400, "link")
    hard = tarfile.TarInfo("adapter_model.safetensors")
    hard.type = tarfile.LNKTYPE
    hard.linkname = "adapter_config.json"
    hardlinked = _tar([_file_info("adapter_config.json", good_config), hard], {"adapter_config.json": good_config})
    case("tar-hardlink", {"adapter.tar.gz": hardlinked}, 400, "link")
    zip_link = io.BytesIO()
    with zipfile.ZipFile(zip_link, "w") as bundle:
        info = zipfile.ZipInfo("adapter_model.safetensors")
        info.external_attr = 0o120777 << 16
        bundle.writestr(info, "/etc/passwd")
    case("zip-symlink", {"adapter.zip": zip_link.getvalue()}, 400, "link")
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as bundle:
        bundle.writestr("adapter_config.json", good_config)
        with bundle.open("adapter_model.safetensors", "w", force_zip64=True) as stream:
            block = b"\0" * (1 << 20)
            for _ in range(max_bytes // len(block) + 8):
                stream.write(block)
    case("zip-bomb", {"adapter.zip": bomb.getvalue()}, 413, "unpacks to more than")
    many = io.BytesIO()
    with zipfile.ZipFile(many, "w") as bundle:
        for index in range(max_files + 5):
            bundle.writestr(f"notes-{index}.txt", "x")
    case("zip-too-many-files", {"adapter.zip": many.getvalue()}, 413, "more than")
    case("oversize-file", adapter_with(notes__txt=b"x" * (max_bytes + 1)), 413, "larger than")
    case("not-an-archive", {"adapter.zip": b"PK this is not a zip"}, 400, "not a readable zip")
    case(
        "archive-without-adapter",
        {"adapter.tar.gz": _tar([_file_info("x.txt", b"x")], {"x.txt": b"x"})},
        400,
        "no adapter_config",
    )
    return cases
