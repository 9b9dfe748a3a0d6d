"""The result cache (evaluation answers, export teachers): what its keys follow and ignore, and answer generation
that starts no engine when every answer is cached (the base path here is no model at all, so an engine start would
fail)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from adapters.chat_template import render_chat
from adapters.datafiles.shapes import Example
from adapters.fingerprint import BaseModelSpec
from tests.adapter_factory import write_adapter
from training.evaluate import ANSWERS_REVISION, generate_with_adapters
from training.result_cache import ResultCache, adapter_digest, base_identity

PROMPTS = [[1, 2, 3], [4, 5]]


def test_an_adapter_is_known_by_its_weights_not_by_its_folder_or_model_card(demo_model: Path, tmp_path: Path) -> None:
    adapter = write_adapter(tmp_path / "a", BaseModelSpec.from_folder(demo_model), seed=1)
    copy = Path(shutil.copytree(adapter, tmp_path / "copy"))
    (copy / "README.md").write_text("# a model card written after evaluation\n")
    assert adapter_digest(copy) == adapter_digest(adapter) != adapter_digest(None)
    other = write_adapter(tmp_path / "b", BaseModelSpec.from_folder(demo_model), seed=2)
    assert adapter_digest(other) != adapter_digest(adapter)


def test_the_key_follows_engine_base_adapter_prompts_length_and_rank(tmp_path: Path) -> None:
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text("{}")
    cache = ResultCache(tmp_path / "cache")
    key = cache.key("0.1", base_identity(base), "adapter", PROMPTS, 32, 16)
    assert cache.key("0.1", base_identity(base), "adapter", PROMPTS, 32, 16) == key
    others = {
        cache.key("0.2", base_identity(base), "adapter", PROMPTS, 32, 16),
        cache.key("0.1", base_identity(base), "another", PROMPTS, 32, 16),
        cache.key("0.1", base_identity(base), "adapter", PROMPTS[:1], 32, 16),
        cache.key("0.1", base_identity(base), "adapter", PROMPTS, 16, 16),
        cache.key("0.1", base_identity(base), "adapter", PROMPTS, 32, 32),
    }
    (base / "config.json").write_text('{"changed": true}')
    others.add(cache.key("0.1", base_identity(base), "adapter", PROMPTS, 32, 16))
    assert key not in others and len(others) == 6


def test_stored_answers_come_back_and_a_damaged_entry_counts_as_missing(tmp_path: Path) -> None:
    cache = ResultCache(tmp_path / "cache")
    assert cache.get("k") is None
    cache.put("k", ["one", "two"])
    assert cache.get("k") == ["one", "two"]
    (tmp_path / "cache" / "k.json").write_text('["cut sho')
    assert cache.get("k") is None


def test_generation_answers_from_the_cache_without_an_engine(
    demo_model: Path, demo_tokenizer: Any, tmp_path: Path
) -> None:
    import vllm

    adapter = write_adapter(tmp_path / "adapter", BaseModelSpec.from_folder(demo_model), seed=1)
    not_a_model = tmp_path / "not-a-model"
    not_a_model.mkdir()
    chats = [Example(line, messages=(("user", f"ticket {line}"), ("assistant", "{}"))) for line in (1, 2)]
    cache = ResultCache(tmp_path / "cache")
    models: dict[str, Path | None] = {"prod": adapter, "base": None}
    ids = [
        demo_tokenizer.encode(render_chat(demo_tokenizer, ex.chat(with_answer=False)), add_special_tokens=False)
        for ex in chats
    ]
    for model, folder in models.items():
        key = cache.key(
            ANSWERS_REVISION, vllm.__version__, base_identity(not_a_model), adapter_digest(folder), ids, 8, 16
        )
        cache.put(key, [f"{model} answer {ex.line}" for ex in chats])

    answers = generate_with_adapters(str(not_a_model), models, demo_tokenizer, {"test": chats}, 8, 16, cache)
    assert answers == {
        "prod": {"test": ["prod answer 1", "prod answer 2"]},
        "base": {"test": ["base answer 1", "base answer 2"]},
    }
