"""Benchmark: loradock's LoRA SFT against a plain transformers `Trainer` + peft run in float32.

    python -m loadtests.training_speed [--steps 40]

Both train the demo task (support tickets to JSON) on the demo model with the same data, LoRA (r=16 on every
linear layer), batch size, learning rate, schedule and number of steps, on this machine. loradock's run is
`training.sft.sft_trainer` exactly as `loradock train` builds it (TRL's SFTTrainer, bfloat16 autocast where the
hardware computes it natively, length-grouped batches, the LM head on answer positions only, the shared system
prompt run once per batch); the baseline is what a hand-rolled script would write.
Throughput counts the tokens of the examples each run trained on (padding excluded) over the steps after the first,
which also builds kernels and optimizer state; both then score the same validation split in float32, so their
losses compare directly.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from adapters.base_models import resolve_base_model
from adapters.datafiles.shapes import Example
from adapters.settings import Settings
from training.config import TrainConfig, load_config
from training.data.prepare import prepare_data
from training.data.tokenize import encode

VALIDATION_EXAMPLES = 64
DEMO_CONFIG = Path(__file__).resolve().parent.parent / "training" / "configs" / "demo_support_tickets.yaml"


@dataclass
class TrainingRun:
    name: str
    steps: int
    seconds: float
    """Wall time of the steps after the first (which also builds kernels and optimizer state)."""
    tokens: int
    """Tokens of the examples trained on in those steps (no padding)."""
    validation_loss: float

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds


def _rows(tokenizer: Any, examples: list[Example]) -> list[dict[str, list[int]]]:
    return [{"input_ids": e.input_ids, "labels": e.labels} for e in (encode(tokenizer, x) for x in examples)]


class _CountingCollator:
    """The trainer's collator, noting how many tokens the examples of each batch hold (padding excluded)."""

    def __init__(self, collate: Any) -> None:
        self._collate = collate
        self.batch_tokens: list[int] = []

    def __call__(self, features: list[dict[str, Any]]) -> Any:
        self.batch_tokens.append(sum(len(feature["input_ids"]) for feature in features))
        return self._collate(features)


def _step_clock() -> Any:
    """A callback that notes when each optimizer step ends."""
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):  # type: ignore[misc]
        def __init__(self) -> None:
            self.ends: list[float] = []

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.ends.append(time.perf_counter())

    return StepClock()


def validation_loss(model: Any, rows: list[dict[str, list[int]]]) -> float:
    """Mean token loss on `rows` in float32, one example at a time (no padding to mask, no autocast)."""
    import torch

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for row in rows:
            ids = torch.tensor([row["input_ids"]])
            labels = torch.tensor([row["labels"]])
            tokens = int((labels[:, 1:] != -100).sum())
            total += float(model(input_ids=ids, labels=labels).loss) * tokens
            count += tokens
    return total / count


def _timed(name: str, trainer: Any, validation: list[dict[str, list[int]]]) -> TrainingRun:
    if trainer.args.gradient_accumulation_steps != 1:
        raise ValueError("the training benchmark counts one batch per step")
    clock, counter = _step_clock(), _CountingCollator(trainer.data_collator)
    trainer.add_callback(clock)
    trainer.data_collator = counter
    trainer.train()
    if len(clock.ends) < 2:
        raise ValueError("the training benchmark needs at least 2 steps: the first one is not timed")
    tokens = sum(counter.batch_tokens[1 : len(clock.ends)])
    loss = validation_loss(trainer.model, validation)
    return TrainingRun(name, trainer.state.global_step, clock.ends[-1] - clock.ends[0], tokens, loss)


def loradock_trainer(config: TrainConfig, base: Path, tokenizer: Any, train: list[Example], out: Path) -> Any:
    from training.sft import sft_trainer

    return sft_trainer(config, base, tokenizer, train, [], out, None)


def plain_trainer(config: TrainConfig, base: Path, tokenizer: Any, train: list[Example], out: Path) -> Any:
    """What a hand-rolled script does: float32 model, peft LoRA, `Trainer` with a padding collator."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, DataCollatorForSeq2Seq, Trainer, TrainingArguments

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    lora = LoraConfig(
        r=config.lora.r,
        lora_alpha=config.lora.alpha,
        lora_dropout=config.lora.dropout,
        target_modules=config.lora.target_modules,
        task_type="CAUSAL_LM",
    )
    rows = _rows(tokenizer, train)
    args = TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=config.batch_size,
        max_steps=config.max_steps,
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler,
        warmup_steps=math.ceil(config.warmup_ratio * config.max_steps),  # as training/trainer_args.py
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        use_cpu=not torch.cuda.is_available(),
        save_strategy="no",
        report_to=[],
        seed=config.seed,
        data_seed=config.seed,
        disable_tqdm=True,
    )
    return Trainer(
        model=get_peft_model(model, lora),
        args=args,
        train_dataset=Dataset.from_list(rows),
        data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100),
    )


def compare(
    steps: int, out: Path, base_model: str | None = None, validation_examples: int = VALIDATION_EXAMPLES
) -> list[TrainingRun]:
    """Both runs on the demo task, over `base_model` (a name or folder; the demo config's model by default)."""
    from transformers import AutoTokenizer

    config = load_config(DEMO_CONFIG, {"max_steps": steps, "evaluate": False})
    base = Path(resolve_base_model(base_model or config.base_model, Settings().models_dir))
    tokenizer = AutoTokenizer.from_pretrained(base)
    prepared = prepare_data(config.data, tokenizer, out / "data")
    train = prepared.splits["train"]
    validation = _rows(tokenizer, prepared.splits["validation"][:validation_examples])
    return [
        _timed("loradock", loradock_trainer(config, base, tokenizer, train, out / "loradock"), validation),
        _timed("plain Trainer fp32", plain_trainer(config, base, tokenizer, train, out / "plain"), validation),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    args = parser.parse_args()
    runs = compare(args.steps, Path(tempfile.mkdtemp(prefix="training-speed-")))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "training_speed.json").write_text(
        json.dumps([{**asdict(run), "tokens_per_s": run.tokens_per_s} for run in runs], indent=2)
    )
    for run in runs:
        print(
            f"{run.name:20} {run.steps} steps {run.seconds:7.1f} s {run.tokens_per_s:8.1f} tok/s "
            f"validation loss {run.validation_loss:.4f}"
        )
    print(f"speed-up {runs[0].tokens_per_s / runs[1].tokens_per_s:.2f}x")


if __name__ == "__main__":
    main()
