"""Merged export: base + adapter folded into one plain Hugging Face model (peft's merge_and_unload).

The merge runs in float32 and the result is saved in the base's own dtype, with the base's tokenizer, chat
template and generation config, so plain vLLM (or transformers) serves it without loradock. Parity is measured on
the saved files, not on the in-memory merge: it is the artifact that ships.
"""

from __future__ import annotations

import gc
import shutil
from pathlib import Path

from adapters.datafiles.shapes import Example
from training.data.tokenize import encode

TEXT_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")
PARITY_PROMPTS = 8


def merge_adapter(base_folder: Path, adapter_dir: Path, out: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForCausalLM

    dtype = getattr(AutoConfig.from_pretrained(base_folder), "dtype", None) or torch.float32
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(base_folder, dtype=torch.float32), adapter_dir
    )
    merged = model.merge_and_unload()
    merged.to(dtype).save_pretrained(out, safe_serialization=True)
    copy_text_files(base_folder, out)
    del model, merged
    gc.collect()


def copy_text_files(source: Path, target: Path) -> None:
    """The tokenizer, chat template and generation defaults, so the exported folder renders chats as the base."""
    for name in (*TEXT_FILES, "generation_config.json"):
        if (source / name).is_file():
            shutil.copy2(source / name, target / name)


def max_logit_difference(
    base_folder: Path, adapter_dir: Path, merged_dir: Path, tokenizer: object, test: list[Example]
) -> float:
    """The largest absolute difference between the logits of base + adapter and of the merged model, over every
    position of a few test examples (prompt and reference answer), both computed in float32."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    batch = [encode(tokenizer, example).input_ids for example in test[:PARITY_PROMPTS]]
    teacher = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(base_folder, dtype=torch.float32), adapter_dir
    ).eval()
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()
    worst = 0.0
    with torch.inference_mode():
        for ids in batch:
            tensor = torch.tensor([ids])
            difference = (teacher(input_ids=tensor).logits - merged(input_ids=tensor).logits).abs().max()
            worst = max(worst, float(difference))
    del teacher, merged
    gc.collect()
    return worst
