"""The CPU multi-LoRA kernels against vLLM's originals: same products for adapter tokens, none for base tokens."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from vllm.lora.ops.torch_ops import lora_ops as original

from server import cpu_lora_ops as ours

TOKENS, IN, RANK, OUT, SLOTS = 64, 48, 8, 40, 3


@pytest.fixture
def batch() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        "x": torch.randn(TOKENS, IN, generator=generator),
        "a": torch.randn(SLOTS, 1, RANK, IN, generator=generator),
        "b": torch.randn(SLOTS, 1, OUT, RANK, generator=generator),
        "indices": torch.randint(-1, SLOTS, (TOKENS,), generator=generator),
    }


def test_shrink_matches_for_adapter_tokens_and_is_zero_for_base_tokens(batch: dict[str, torch.Tensor]) -> None:
    expected, got = torch.zeros(TOKENS, RANK), torch.full((TOKENS, RANK), 7.0)
    original.bgmv_shrink(batch["x"], batch["a"], expected, batch["indices"], 0.5)
    ours.bgmv_shrink(batch["x"], batch["a"], got, batch["indices"], 0.5)
    adapter = batch["indices"] >= 0
    torch.testing.assert_close(got[adapter], expected[adapter])
    assert torch.all(got[~adapter] == 0)


def test_expand_adds_nothing_to_base_tokens(batch: dict[str, torch.Tensor]) -> None:
    low_rank = torch.randn(TOKENS, RANK)
    start = torch.randn(TOKENS, OUT)
    expected, got = start.clone(), start.clone()
    original.bgmv_expand(low_rank, batch["b"], expected, batch["indices"], True)
    ours.bgmv_expand(low_rank, batch["b"], got, batch["indices"], True)
    adapter = batch["indices"] >= 0
    torch.testing.assert_close(got[adapter], expected[adapter])
    torch.testing.assert_close(got[~adapter], start[~adapter])  # vLLM's original applies the last slot here
    assert not torch.allclose(expected[~adapter], start[~adapter])


def test_expand_slice_and_sequence_variants(batch: dict[str, torch.Tensor]) -> None:
    low_rank = torch.randn(TOKENS, RANK)
    seq_lens = torch.tensor([16, 16, 32])
    per_sequence = torch.tensor([0, 2, 1])
    expected, got = torch.zeros(TOKENS, OUT + 10), torch.zeros(TOKENS, OUT + 10)
    args = (torch.tensor([0, 16, 32]), seq_lens, per_sequence, 3, 32, TOKENS, 5, OUT, False)
    original.sgmv_expand_slice(low_rank, batch["b"], expected, *args)
    ours.sgmv_expand_slice(low_rank, batch["b"], got, *args)
    torch.testing.assert_close(got, expected)
    shrunk_expected, shrunk = torch.zeros(TOKENS, RANK), torch.zeros(TOKENS, RANK)
    shrink_args = (torch.tensor([0, 16, 32]), seq_lens, per_sequence, 3, 32, TOKENS, 2.0)
    original.sgmv_shrink(batch["x"], batch["a"], shrunk_expected, *shrink_args)
    ours.sgmv_shrink(batch["x"], batch["a"], shrunk, *shrink_args)
    torch.testing.assert_close(shrunk, shrunk_expected)


def test_single_adapter_batches_take_the_fast_path(batch: dict[str, torch.Tensor]) -> None:
    indices = torch.full((TOKENS,), 1)
    expected, got = torch.zeros(TOKENS, RANK), torch.zeros(TOKENS, RANK)
    original.bgmv_shrink(batch["x"], batch["a"], expected, indices, 1.0)
    ours.bgmv_shrink(batch["x"], batch["a"], got, indices, 1.0)
    torch.testing.assert_close(got, expected)
    none = torch.full((TOKENS,), -1)
    ours.bgmv_shrink(batch["x"], batch["a"], got, none, 1.0)
    assert torch.all(got == 0)


@pytest.mark.parametrize("tokens", [5, 32, 33, 300])
def test_decode_sized_and_prefill_sized_batches_agree_with_vllm(tokens: int) -> None:
    """Up to GATHER_MAX_TOKENS tokens take the batched gather product, more take one product per adapter."""
    generator = torch.Generator().manual_seed(tokens)
    x = torch.randn(tokens, IN, generator=generator)
    a = torch.randn(SLOTS, 1, RANK, IN, generator=generator)
    indices = torch.randint(-1, SLOTS, (tokens,), generator=generator)
    indices[:2] = torch.tensor([0, 1])  # at least two adapters
    expected, got = torch.zeros(tokens, RANK), torch.full((tokens, RANK), 7.0)
    original.bgmv_shrink(x, a, expected, indices, 0.5)
    ours.bgmv_shrink(x, a, got, indices, 0.5)
    adapter = indices >= 0
    torch.testing.assert_close(got[adapter], expected[adapter])
    assert torch.all(got[~adapter] == 0)


def test_register_installs_the_kernels_on_the_cpu_platform() -> None:
    from vllm.lora.punica_wrapper import punica_cpu

    ours.register()
    assert punica_cpu.bgmv_shrink is ours.bgmv_shrink
    assert punica_cpu.sgmv_expand_slice is ours.sgmv_expand_slice


# The per-step wrapper: Llama-like slices (q, k, v) over several slots, against a row-by-row reference.
SLICES = (40, 12, 12)


def reference(
    y: torch.Tensor,
    x: torch.Tensor,
    a: tuple[torch.Tensor, ...],
    b: tuple[torch.Tensor, ...],
    token_slots: list[int],
    scale: float,
) -> torch.Tensor:
    """y[t, slice] += scale * x[t] @ A[slot].T @ B[slot].T, token by token; slot -1 adds nothing."""
    expected, offset = y.clone(), 0
    for lora_a, lora_b, width in zip(a, b, SLICES, strict=True):
        for row, slot in enumerate(token_slots):
            if slot >= 0:
                expected[row, offset : offset + width] += scale * (x[row] @ lora_a[slot, 0].T) @ lora_b[slot, 0].T
        offset += width
    return expected


def stacked(
    generator: torch.Generator, slots: int = SLOTS
) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    a = tuple(torch.randn(slots, 1, RANK, IN, generator=generator) for _ in SLICES)
    b = tuple(torch.randn(slots, 1, width, RANK, generator=generator) for width in SLICES)
    return a, b


def wrapper_for(lora_ids: list[int], slot_ids: list[int | None]) -> ours.CPULoRAWrapper:
    """A wrapper whose step maps each token to the LoRA id given (0 for the base model), as vLLM's runner does."""
    wrapper = ours.CPULoRAWrapper(4096, 256, "cpu")
    step(wrapper, lora_ids, slot_ids)
    return wrapper


def step(wrapper: ours.CPULoRAWrapper, lora_ids: list[int], slot_ids: list[int | None]) -> None:
    from vllm.lora.layers import LoRAMapping

    mapping = LoRAMapping(tuple(lora_ids), tuple(lora_ids), is_prefill=True)
    wrapper.update_metadata(mapping, slot_ids, len(slot_ids), 1000)


SLOT_IDS: list[int | None] = [7, 5, 9]  # LoRA id held by slots 0, 1, 2


def slots_of(lora_ids: list[int]) -> list[int]:
    return [SLOT_IDS.index(lora_id) if lora_id else -1 for lora_id in lora_ids]


LAYOUTS = {
    "one adapter": [5] * 6,
    "base only": [0] * 6,
    "decode over every adapter": [7, 5, 9, 9, 5, 7],
    "decode with base tokens": [0, 7, 0, 9, 5, 0, 0],
    "prefill chunk and decode": [9] * 40 + [7, 0, 5] + [5] * 12 + [0],
    "scattered past the gather limit": [7, 5, 9, 0] * 40,
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_wrapper_matches_the_token_by_token_product(layout: str) -> None:
    lora_ids = LAYOUTS[layout]
    generator = torch.Generator().manual_seed(len(lora_ids))
    a, b = stacked(generator)
    x = torch.randn(len(lora_ids), IN, generator=generator)
    y = torch.randn(len(lora_ids), sum(SLICES), generator=generator)
    expected = reference(y, x, a, b, slots_of(lora_ids), 0.5)
    wrapper_for(lora_ids, SLOT_IDS).add_lora_linear(y, x, a, b, 0.5, SLICES)
    torch.testing.assert_close(y, expected, rtol=1e-4, atol=1e-4)


def test_plan_splits_long_runs_from_scattered_decode_tokens() -> None:
    plan = ours.plan_step([2] * 20 + [0, 1, -1, 2] + [1] * ours.DENSE_MIN_RUN)
    assert plan.runs == ((2, 0, 20), (1, 24, 24 + ours.DENSE_MIN_RUN))
    assert plan.scattered_rows is not None and plan.scattered_slots is not None
    assert plan.scattered_rows.tolist() == [20, 21, 23] and plan.scattered_slots.tolist() == [0, 1, 2]
    assert plan.slots == (0, 1, 2) and not plan.all_rows_scattered
    single = ours.plan_step([1, 1, 1])
    assert single.runs == ((1, 0, 3),) and single.scattered_rows is None  # one adapter: one product, however short
    decode = ours.plan_step([0, 1, 2])
    assert decode.all_rows_scattered and decode.runs == ()
    assert ours.plan_step([-1, -1]).slots == ()


def test_slices_an_adapter_leaves_at_zero_are_skipped_until_the_slot_is_reused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    generator = torch.Generator().manual_seed(1)
    a, b = stacked(generator)
    for lora_a, lora_b in zip(a[1:], b[1:], strict=True):  # k and v of slot 1 are zero, as for a q-only adapter
        lora_a[1].zero_()
        lora_b[1].zero_()
    applied: list[torch.Tensor] = []
    original_apply = ours.apply_lora_slice

    def counted(plan: ours.StepPlan, x: torch.Tensor, lora_a: torch.Tensor, *rest: Any) -> None:
        applied.append(lora_a)
        original_apply(plan, x, lora_a, *rest)

    monkeypatch.setattr(ours, "apply_lora_slice", counted)
    lora_ids = [5] * 4  # slot 1 only
    wrapper = wrapper_for(lora_ids, SLOT_IDS)
    x, y = torch.randn(4, IN, generator=generator), torch.zeros(4, sum(SLICES))
    wrapper.add_lora_linear(y, x, a, b, 1.0, SLICES)
    assert len(applied) == 1  # q only
    assert torch.all(y[:, SLICES[0] :] == 0)

    # Another adapter (id 11) takes slot 1, with k and v: they must be applied from the next step on.
    for lora_a, lora_b in zip(a[1:], b[1:], strict=True):
        lora_a[1].normal_(generator=generator)
        lora_b[1].normal_(generator=generator)
    reused: list[int | None] = [7, 11, 9]
    step(wrapper, [11] * 4, reused)
    applied.clear()
    y = torch.zeros(4, sum(SLICES))
    wrapper.add_lora_linear(y, x, a, b, 1.0, SLICES)
    assert len(applied) == 3
    torch.testing.assert_close(y, reference(torch.zeros(4, sum(SLICES)), x, a, b, [1] * 4, 1.0), rtol=1e-4, atol=1e-4)


def test_padding_rows_get_no_adapter_and_missing_rows_are_refused() -> None:
    generator = torch.Generator().manual_seed(2)
    a, b = stacked(generator)
    wrapper = wrapper_for([7, 5, 9, 7], SLOT_IDS)
    x, y = torch.randn(6, IN, generator=generator), torch.zeros(6, sum(SLICES))
    wrapper.add_lora_linear(y, x, a, b, 1.0, SLICES)
    expected = reference(torch.zeros(4, sum(SLICES)), x[:4], a, b, slots_of([7, 5, 9, 7]), 1.0)
    torch.testing.assert_close(y[:4], expected, rtol=1e-4, atol=1e-4)
    assert torch.all(y[4:] == 0)
    with pytest.raises(ValueError, match="3 input and 3 output rows for a step of 4 tokens"):
        wrapper.add_lora_linear(torch.zeros(3, sum(SLICES)), x[:3], a, b, 1.0, SLICES)


def test_register_makes_vllm_build_the_wrapper_on_the_cpu() -> None:
    from vllm.lora.punica_wrapper.punica_selector import get_punica_wrapper

    ours.register()
    assert isinstance(get_punica_wrapper(256, 16, "cpu"), ours.CPULoRAWrapper)
