"""The CPU multi-LoRA kernels against vLLM's originals: same products for adapter tokens, none for base tokens."""

from __future__ import annotations

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
