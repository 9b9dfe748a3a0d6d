"""Distillation runs the prefix its rows share once: the same answer logits and student gradients as running every
row whole, with fewer positions through the model. The teacher's logits of a row are computed once and kept, ahead of
the steps that draw them."""

from __future__ import annotations

from typing import Any

import torch

from tests.helpers import toy_llama
from training.data.tokenize import IGNORE, Encoded, pad_batch
from training.exports.distill import TeacherLogits, _answer_logits, _batch
from training.shared_prefix import shared_prefix_length

SYSTEM = list(range(10, 30))
"""20 prompt tokens every row opens with, as a task's system prompt."""


def rows() -> list[Encoded]:
    """Three chats on the shared system prompt, with questions and answers of different lengths (right-padded)."""
    generator = torch.Generator().manual_seed(1)
    items = []
    for question, answer in ((4, 5), (7, 3), (2, 6)):
        own = torch.randint(40, 97, (question + answer,), generator=generator).tolist()
        ids = SYSTEM + own
        items.append(Encoded(ids, [IGNORE] * (len(SYSTEM) + question) + own[question:]))
    return items


def test_sharing_the_prefix_keeps_logits_and_gradients() -> None:
    student = toy_llama()
    ids, mask, labels = pad_batch(rows())
    answer = labels[:, 1:] != IGNORE
    prefix = shared_prefix_length({"input_ids": ids, "attention_mask": mask}, int(answer.any(dim=0).nonzero()[0]))
    assert prefix == len(SYSTEM)  # where the questions start to differ, before any answer
    seen: list[int] = []
    student.model.layers[0].register_forward_hook(
        lambda _m, args, _out: seen.append(args[0].shape[0] * args[0].shape[1])
    )

    whole = _answer_logits(student, ids, mask, answer, 0)
    whole.sum().backward()
    expected = [p.grad.clone() for p in student.parameters()]
    student.zero_grad()
    shared = _answer_logits(student, ids, mask, answer, prefix)
    shared.sum().backward()

    torch.testing.assert_close(shared, whole, rtol=1e-4, atol=1e-5)
    for found, wanted in zip((p.grad for p in student.parameters()), expected, strict=True):
        torch.testing.assert_close(found, wanted, rtol=1e-4, atol=1e-5)
    assert seen[0] == ids.numel() and sum(seen[1:]) == prefix + 3 * (ids.shape[1] - prefix)


def test_the_teacher_runs_each_row_once_and_its_kept_logits_are_those_of_the_batch() -> None:
    teacher, items = toy_llama().eval(), rows()
    batch = _batch(items)
    with torch.no_grad():
        whole = _answer_logits(teacher, batch.ids, batch.mask, batch.answer, batch.prefix)
    per_row = torch.split(whole, batch.answer.sum(dim=1).tolist())

    kept = TeacherLogits(teacher, items)
    first = kept([0, 2])
    again = kept([2, 1, 0])
    assert kept.computed == 3  # row 1 once, rows 0 and 2 not again
    tolerance = {"rtol": 2e-2, "atol": 2e-2}  # bfloat16 autocast where the CPU has it
    torch.testing.assert_close(first, torch.cat([per_row[0], per_row[2]]), **tolerance)
    torch.testing.assert_close(again, torch.cat([per_row[2], per_row[1], per_row[0]]), **tolerance)
    assert again.dtype == torch.float32

    unkept = TeacherLogits(teacher, items, budget_bytes=0)
    unkept([0, 1])
    unkept([1, 2])
    assert unkept.computed == 4  # over the budget: computed each time it is drawn


class RecordedTeacher(TeacherLogits):
    """The teacher, with the rows of each of its passes written down."""

    def __init__(self, model: Any, items: list[Encoded], budget_bytes: int) -> None:
        super().__init__(model, items, budget_bytes)
        self.passes: list[list[int]] = []

    def _compute(self, rows: list[int]) -> list[Any]:
        self.passes.append(rows)
        return super()._compute(rows)


def test_the_drawn_rows_are_computed_ahead_shortest_first_until_the_budget_is_spent() -> None:
    teacher, items = toy_llama().eval(), rows()  # lengths 29, 30 and 28 tokens
    batch = _batch(items)
    with torch.no_grad():
        whole = _answer_logits(teacher, batch.ids, batch.mask, batch.answer, batch.prefix)
    per_row = torch.split(whole, batch.answer.sum(dim=1).tolist())

    ahead, said = RecordedTeacher(teacher, items, budget_bytes=1 << 20), []
    ahead.prefetch([1, 0, 1, 2, 0], 2, said.append)
    assert ahead.passes == [[2, 0], [1]] and said == ["teacher logits: 2/3 rows", "teacher logits: 3/3 rows"]
    drawn = ahead([1, 2, 0])
    assert ahead.computed == 3  # the steps find every row computed
    torch.testing.assert_close(drawn, torch.cat([per_row[1], per_row[2], per_row[0]]), rtol=2e-2, atol=2e-2)

    spent, said = RecordedTeacher(teacher, items, budget_bytes=1), []
    spent.prefetch([0, 1, 2], 2, said.append)
    assert spent.passes == [[2, 0]] and said == []  # nothing fits: the rest is left to the steps
    spent([1, 2])
    assert spent.computed == 4 and spent.passes[-1] == [1, 2]
