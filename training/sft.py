"""Supervised fine-tuning on TRL's SFTTrainer: loss on the assistant's tokens, as `training/data` masked them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from adapters.datafiles.shapes import Example
from training.answer_loss import answer_loss
from training.config import TrainConfig
from training.data.tokenize import encode
from training.trainer_args import callbacks, common_arguments, model_and_lora, quiet


def sft_trainer(
    config: TrainConfig,
    base_folder: Path,
    tokenizer: Any,
    train: list[Example],
    validation: list[Example],
    run_dir: Path,
    start_from: Path | None,
) -> Any:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    def dataset(examples: list[Example]) -> Dataset:
        # Pre-tokenized with labels: TRL keeps our masks (its own need {% generation %} template markers).
        rows = [encode(tokenizer, example) for example in examples]
        return Dataset.from_list([{"input_ids": row.input_ids, "labels": row.labels} for row in rows])

    class Trainer(SFTTrainer):  # type: ignore[misc]
        def compute_loss(
            self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
        ) -> Any:
            if return_outputs or inputs["input_ids"].is_cuda:  # TRL's fused head is compact on Triton devices
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            loss, metrics = answer_loss(model, inputs, num_items_in_batch)
            for name, value in metrics.items():
                self._metrics["train" if model.training else "eval"][name].append(value)
            return loss

    validating = bool(validation)
    args = SFTConfig(
        **common_arguments(config, run_dir, len(train), validating),
        packing=config.packing,
        # Batches of examples of similar length: less padding to compute, and (with packing) nothing to group.
        train_sampling_strategy="random" if config.packing else "group_by_length",
    )
    model, lora = model_and_lora(config, base_folder, start_from)
    return quiet(
        Trainer(
            model=model,
            args=args,
            train_dataset=dataset(train),
            eval_dataset=dataset(validation) if validating else None,
            processing_class=tokenizer,
            peft_config=lora,
            callbacks=callbacks(config, run_dir, validating),
        )
    )
