"""Distillation: a smaller student trained on the task data against the teacher's logits.

The student is the base with layers dropped (every other one: the usual layer-skipping initialisation, which
keeps the pretrained embeddings, head and tokenizer) or a smaller checkpoint that shares the tokenizer. The loss
is our own, stated here because it is the whole method:

    loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * cross-entropy(labels)

over the answer tokens only (the prompt is context, as in SFT). TRL's GKDTrainer adds on-policy student samples
and a generalized JSD, which costs a generation per step: too slow on a CPU for a smaller gain here. The loop is
written out instead of subclassing transformers' Trainer because each step needs the teacher's forward pass on
the same batch, which Trainer's collation and loss hooks would only hide.
"""

from __future__ import annotations

import gc
import json
import math
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from adapters.datafiles.shapes import Example
from adapters.fingerprint import contract_mismatch, text_contract
from training.data.tokenize import IGNORE, Encoded, encode, pad_batch
from training.evaluate import native_bf16
from training.exports.merge import copy_text_files
from training.exports.source import ExportError, Progress
from training.shared_prefix import shared_prefix_length


@dataclass(frozen=True)
class DistillConfig:
    steps: int = 200
    batch_size: int = 8
    learning_rate: float = 5e-4
    temperature: float = 2.0
    alpha: float = 0.5
    max_seq_len: int = 256
    seed: int = 0


def layer_dropped_student(base_folder: Path, out: Path) -> list[int]:
    """The base with every other decoder layer (0, 2, 4, ...) kept; returns the kept layers' indices."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_folder, dtype=torch.float32)
    layers = getattr(getattr(model, "model", None), "layers", None)
    if not isinstance(layers, torch.nn.ModuleList) or len(layers) < 2:
        raise ExportError(f"{base_folder}: cannot drop layers of this architecture; pass --student with a model")
    keep = list(range(0, len(layers), 2))
    model.model.layers = torch.nn.ModuleList(layers[index] for index in keep)
    for position, layer in enumerate(model.model.layers):
        layer.self_attn.layer_idx = position  # the KV cache is indexed by position in the new stack
    model.config.num_hidden_layers = len(keep)
    if isinstance(getattr(model.config, "layer_types", None), list):
        model.config.layer_types = [model.config.layer_types[index] for index in keep]
    dtype = json.loads((base_folder / "config.json").read_text()).get("dtype", "float32")
    model.to(getattr(torch, dtype)).save_pretrained(out, safe_serialization=True)
    copy_text_files(base_folder, out)
    del model
    gc.collect()
    return keep


def named_student(student_folder: Path, base_folder: Path, out: Path) -> None:
    """A user-named smaller checkpoint, copied in; it must read and write text exactly as the base does."""
    if not (student_folder / "config.json").is_file():
        raise ExportError(f"student {student_folder} is not a Hugging Face model folder (no config.json)")
    mismatch = contract_mismatch(text_contract(student_folder), text_contract(base_folder))
    if mismatch is not None:
        raise ExportError(f"student {student_folder} does not share the base's tokenizer: {mismatch}")
    for path in student_folder.iterdir():
        if path.is_file() and (path.suffix in {".json", ".safetensors", ".jinja"}):
            shutil.copy2(path, out / path.name)


def distill(
    teacher_dir: Path,
    student_dir: Path,
    tokenizer: Any,
    train: list[Example],
    config: DistillConfig,
    progress: Progress,
) -> list[dict[str, float]]:
    """Train the student in `student_dir` in place; returns the loss log (one entry per step)."""
    import torch
    from transformers import AutoModelForCausalLM, get_cosine_schedule_with_warmup

    torch.manual_seed(config.seed)
    encoded = [_truncate(encode(tokenizer, example), config.max_seq_len) for example in train]
    encoded = [item for item in encoded if item.supervised > 0]
    if not encoded:
        raise ExportError("the training split has no answer tokens to distill on")
    order = random.Random(config.seed)
    draws = [order.sample(range(len(encoded)), min(config.batch_size, len(encoded))) for _ in range(config.steps)]
    teacher = TeacherLogits(AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32).eval(), encoded)
    teacher.prefetch([row for rows in draws for row in rows], config.batch_size, progress)
    student = AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32).train()
    saved_dtype = json.loads((student_dir / "config.json").read_text()).get("dtype", "float32")
    optimizer = torch.optim.AdamW(student.parameters(), lr=config.learning_rate, weight_decay=0.0)
    schedule = get_cosine_schedule_with_warmup(optimizer, max(1, config.steps // 20), config.steps)
    log: list[dict[str, float]] = []
    for step, rows in enumerate(draws, start=1):
        batch = _batch([encoded[row] for row in rows])
        student_logits = _answer_logits(student, batch.ids, batch.mask, batch.answer, batch.prefix)
        targets = batch.labels[:, 1:][batch.answer]
        kl, ce = _losses(student_logits, teacher(rows), targets, config.temperature)
        loss = config.alpha * kl + (1 - config.alpha) * ce
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        log.append({"step": step, "loss": loss.item(), "kl": kl.item(), "ce": ce.item()})
        progress(f"distilling: step {step}/{config.steps}, loss {log[-1]['loss']:.3f} (KL {log[-1]['kl']:.3f})")
        if not math.isfinite(log[-1]["loss"]):
            raise ExportError(f"distillation diverged at step {step} (loss {log[-1]['loss']}); lower --learning-rate")
    student.to(getattr(torch, saved_dtype)).save_pretrained(student_dir, safe_serialization=True)
    del teacher, student
    gc.collect()
    return log


TEACHER_CACHE_BYTES = 2 << 30
"""Memory for the teacher's answer logits kept between steps (about 1.5 MB a row on the demo task)."""


class TeacherLogits:
    """The teacher's answer logits of each training row, computed once and kept.

    Steps draw rows at random, so most rows come back: on the demo task 200 steps of 8 draw 1,600 rows, about 630
    of them different, and the teacher's forward pass was most of a step. The rows the steps will draw are computed
    ahead (`prefetch`), in batches of rows of similar length. Only the positions that predict answer tokens are
    kept, in the dtype the teacher computes them in (bfloat16 where the CPU has it), up to TEACHER_CACHE_BYTES; rows
    beyond it are computed again each time they are drawn.
    """

    def __init__(self, model: Any, rows: list[Encoded], budget_bytes: int = TEACHER_CACHE_BYTES) -> None:
        self._model = model
        self._rows = rows
        self._budget = budget_bytes
        self._kept: dict[int, Any] = {}
        self.computed = 0
        """Rows run through the teacher so far."""

    def __call__(self, rows: list[int]) -> Any:
        """The answer logits of `rows`, concatenated in their order (as `_answer_logits` returns them), float32."""
        import torch

        missing = [row for row in dict.fromkeys(rows) if row not in self._kept]
        fresh = dict(zip(missing, self._compute(missing), strict=True)) if missing else {}
        self._keep(fresh)
        return torch.cat([self._kept[row] if row in self._kept else fresh[row] for row in rows]).float()

    def prefetch(self, rows: list[int], batch_size: int, progress: Progress) -> None:
        """Compute `rows` before the steps draw them, shortest first in batches of `batch_size`, until the budget is
        spent. A step's random batch pads its rows to the longest, and after the first steps brings only a few new
        rows per teacher pass. On the demo task (630 rows, 2 vCPUs) a row took the teacher 0.12 s that way and takes
        0.08 s ahead: 200 steps took 107 s and take 82."""
        pending = sorted(
            (row for row in dict.fromkeys(rows) if row not in self._kept),
            key=lambda row: len(self._rows[row].input_ids),
        )
        for start in range(0, len(pending), batch_size):
            chunk = pending[start : start + batch_size]
            if not self._keep(dict(zip(chunk, self._compute(chunk), strict=True))):
                return
            progress(f"teacher logits: {min(start + batch_size, len(pending))}/{len(pending)} rows")

    def _keep(self, fresh: dict[int, Any]) -> bool:
        """Keep what fits in the budget; False when none of `fresh` did."""
        kept = False
        for row, logits in fresh.items():
            if logits.nbytes <= self._budget:
                self._kept[row] = logits
                self._budget -= logits.nbytes
                kept = True
        return kept

    def _compute(self, rows: list[int]) -> list[Any]:
        import torch

        batch = _batch([self._rows[row] for row in rows])
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=native_bf16()):
            logits = _answer_logits(self._model, batch.ids, batch.mask, batch.answer, batch.prefix)
        self.computed += len(rows)
        return [part.clone() for part in torch.split(logits, batch.answer.sum(dim=1).tolist())]


class Batch(NamedTuple):
    ids: Any
    mask: Any
    labels: Any
    answer: Any
    """Which positions predict an answer token (the labels shifted by one)."""
    prefix: int
    """Tokens every row shares before the first answer position, run once (`_answer_logits`)."""


def _batch(items: list[Encoded]) -> Batch:
    ids, mask, labels = pad_batch(items)
    answer = labels[:, 1:] != IGNORE
    prefix = shared_prefix_length({"input_ids": ids, "attention_mask": mask}, int(answer.any(dim=0).nonzero()[0]))
    return Batch(ids, mask, labels, answer, prefix)


def _answer_logits(model: Any, ids: Any, mask: Any, answer: Any, prefix: int) -> Any:
    """Logits at the positions that predict answer tokens only: the vocabulary projection of every prompt
    position (49k columns each) would cost more than the rest of a small student's step.

    The first `prefix` tokens, which every row shares (the task's system prompt), run once and their keys and values
    serve every row, as in SFT (`training/shared_prefix.py`): the teacher's forward pass is most of a step's work,
    and on the demo task the rows share about 40% of their tokens.
    """
    decoder = model.get_decoder()
    if prefix:
        cache = decoder(input_ids=ids[:1, :prefix], use_cache=True).past_key_values
        cache.batch_repeat_interleave(ids.shape[0])
        rest = decoder(input_ids=ids[:, prefix:], attention_mask=mask, past_key_values=cache, use_cache=True)
        hidden, answer = rest.last_hidden_state[:, :-1], answer[:, prefix:]
    else:
        hidden = decoder(input_ids=ids, attention_mask=mask).last_hidden_state[:, :-1]
    return model.get_output_embeddings()(hidden[answer])


def _losses(student: Any, teacher: Any, targets: Any, temperature: float) -> tuple[Any, Any]:
    import torch.nn.functional as functional

    kl = functional.kl_div(
        functional.log_softmax(student / temperature, dim=-1),
        functional.log_softmax(teacher / temperature, dim=-1),
        log_target=True,
        reduction="batchmean",
    ) * (temperature**2)
    return kl, functional.cross_entropy(student, targets)


def _truncate(item: Encoded, length: int) -> Encoded:
    return Encoded(item.input_ids[:length], item.labels[:length])
