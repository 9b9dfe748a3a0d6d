"""Preference tuning with TRL's DPOTrainer: the adapter learns to prefer the chosen answer to the rejected one.

The reference model is the base itself (peft disables the adapter to score it), so DPO costs no second copy of
the weights. Prompts are rendered with the server's chat template and the answers end with the end-of-turn
token, so the preference is learned in the exact layout that is served.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from adapters.chat_template import render_chat
from adapters.datafiles.readers import DataError
from adapters.datafiles.shapes import Example
from training.config import TrainConfig
from training.trainer_args import callbacks, common_arguments, model_and_lora, quiet


def preference_rows(tokenizer: Any, examples: list[Example]) -> list[dict[str, str]]:
    rows = []
    for example in examples:
        if example.rejected is None:
            raise DataError(
                f"line {example.line}: DPO needs preference rows (prompt, chosen, rejected), not {example.to_record()}"
            )
        eos = tokenizer.eos_token
        rows.append(
            {
                "prompt": render_chat(tokenizer, example.chat(with_answer=False)),
                "chosen": example.answer + eos,
                "rejected": example.rejected + eos,
            }
        )
    return rows


def dpo_trainer(
    config: TrainConfig,
    base_folder: Path,
    tokenizer: Any,
    train: list[Example],
    validation: list[Example],
    run_dir: Path,
    start_from: Path | None,
) -> Any:
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    validating = bool(validation)
    args = DPOConfig(**common_arguments(config, run_dir, len(train), validating), beta=config.dpo_beta)
    model, lora = model_and_lora(config, base_folder, start_from)
    return quiet(
        DPOTrainer(
            model=model,
            args=args,
            train_dataset=Dataset.from_list(preference_rows(tokenizer, train)),
            eval_dataset=Dataset.from_list(preference_rows(tokenizer, validation)) if validating else None,
            processing_class=tokenizer,
            peft_config=lora,
            callbacks=callbacks(config, run_dir, validating),
        )
    )
