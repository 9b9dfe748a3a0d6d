"""`loradock run-onnx`: chat with an ONNX export through onnxruntime-genai, streaming tokens as they come.

The prompt is rendered with the export's own chat template (copied from the base by the builder) through the same
`render_chat` the server uses, so the ONNX model sees the layout the adapter was trained on.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from adapters.chat_template import render_chat
from adapters.hub import Hub
from adapters.naming import parse_model_ref
from adapters.settings import Settings
from training.exports.source import ExportError


def onnx_folder(target: str, label: str, settings: Settings) -> Path:
    """`target` is an export folder, or NAME@VERSION whose artifact `label` is taken from the hub."""
    folder = Path(target).expanduser()
    if folder.is_dir():
        if not (folder / "genai_config.json").is_file():
            raise ExportError(f"{folder} is not an onnxruntime-genai export (no genai_config.json)")
        return folder
    ref = parse_model_ref(target)
    if ref is None or ref.version is None:
        raise ExportError(f"{target!r} is neither an export folder nor NAME@VERSION")
    hub = Hub.open(settings)
    try:
        found = hub.registry.artifacts.by_label(ref.name, ref.version, label)
    finally:
        hub.close()
    if found is None or not (found[1] / "genai_config.json").is_file():
        raise ExportError(f"{target} has no ONNX artifact labelled {label!r} (see `loradock adapters show`)")
    return found[1]


def stream_answer(folder: Path, messages: list[dict[str, str]], max_new_tokens: int) -> Iterator[str]:
    """Greedy answer to a chat, piece by piece."""
    import onnxruntime_genai as og
    from transformers import AutoTokenizer

    prompt = render_chat(AutoTokenizer.from_pretrained(folder), messages)
    model = og.Model(str(folder))
    tokenizer = og.Tokenizer(model)
    ids = tokenizer.encode(prompt)
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + max_new_tokens, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(ids)
    stream = tokenizer.create_stream()
    while not generator.is_done():
        generator.generate_next_token()
        yield stream.decode(generator.get_next_tokens()[0])
