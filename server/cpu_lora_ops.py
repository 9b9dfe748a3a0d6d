"""Multi-LoRA kernels for vLLM's CPU backend, loaded into every vLLM process as a general plugin.

vLLM 0.32's CPU path (`vllm/lora/ops/torch_ops/lora_ops.py`) computes each token's LoRA product by first copying
that token's whole A or B matrix (`weights[indices]`, tokens x out x rank) and then contracting it. It has two
problems this module fixes, measured on SmolLM2-135M with two cores:

- Tokens of the base model carry the index -1, which that gather reads as "the last LoRA slot", so once
  `max_loras` slots are filled, base-model requests batched with adapter requests are answered with the last
  slot's adapter applied (seen: the base answer changed from "Paris." to the last adapter's answer).
- The per-token copies make a 1,800-token LoRA prefill about ten times slower than it needs to be.

Here each distinct adapter in the batch gets one matrix product over its own tokens, and -1 tokens get none.
The functions keep the signatures and write semantics of the ones they replace; `register` swaps them into the
CPU punica wrapper (which imported them by name). vLLM calls it in each engine process via the
`vllm.general_plugins` entry point; it does nothing on other platforms.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

logger = logging.getLogger(__name__)

GATHER_MAX_TOKENS = 32
"""Batches up to this many tokens with several adapters take the batched (gather) product."""


def _per_adapter_product(
    inputs: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """Row t of the result is inputs[t] @ weights[indices[t]].T, or zeros where indices[t] < 0."""
    if weights.dim() == 4:
        weights = weights.squeeze(1)
    x = inputs.to(dtype)
    if indices.numel() and x.shape[0] <= GATHER_MAX_TOKENS and not bool((indices == indices[0]).all()):
        # Decode steps: a few tokens from many adapters. One batched product over per-token copies of their
        # matrices costs less than a product per adapter (measured: 16 tokens over 16 adapters, 0.26 ms against
        # 0.55 ms for a shrink and expand pair); past about 32 tokens the copies cost more than they save.
        gathered = weights.index_select(0, indices.clamp(min=0)).to(dtype)
        products = torch.bmm(gathered, x.unsqueeze(2)).squeeze(2)
        return products.masked_fill_((indices < 0).unsqueeze(1), 0)
    result = torch.zeros((x.shape[0], weights.shape[1]), dtype=dtype, device=x.device)
    if indices.numel() == 0:
        return result
    first = int(indices[0])
    if bool((indices == first).all()):  # one adapter (or none) in the whole batch: no row selection needed
        if first >= 0:
            torch.matmul(x, weights[first].to(dtype).T, out=result)
        return result
    for slot in torch.unique(indices).tolist():
        if slot < 0:
            continue
        rows = (indices == slot).nonzero().squeeze(1)
        result[rows] = x[rows] @ weights[slot].to(dtype).T
    return result


def bgmv_shrink(
    inputs: torch.Tensor,
    lora_a_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    scaling: float = 1.0,
) -> None:
    outputs = _per_adapter_product(inputs, lora_a_weights, lora_indices_tensor, output_tensor.dtype)
    output_tensor[:, : outputs.shape[1]] = scaling * outputs


def bgmv_expand(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    add_inputs: bool = True,
) -> None:
    outputs = _per_adapter_product(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    limit = 1 if outputs.shape[0] == 1 and output_tensor.shape[0] != 1 else output_tensor.shape[0]
    common = min(outputs.shape[1], output_tensor.shape[1])
    if add_inputs:
        output_tensor[:, :common] += outputs[:limit, :common]
    else:
        output_tensor[:, :common] = outputs[:limit, :common]


def bgmv_expand_slice(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    slice_offset: int,
    slice_size: int,
    add_inputs: bool = True,
) -> None:
    outputs = _per_adapter_product(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    if add_inputs:
        output_tensor[:, slice_offset : slice_offset + slice_size] += outputs
    else:
        output_tensor[:, slice_offset : slice_offset + slice_size] = outputs


def _per_token(lora_indices: torch.Tensor, seq_lens: torch.Tensor) -> torch.Tensor:
    return torch.repeat_interleave(lora_indices, seq_lens)


def sgmv_shrink(
    inputs: torch.Tensor,
    lora_a_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    b_seq_start_loc: torch.Tensor,
    seq_len_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    batches: int,
    max_seq_length: int,
    token_nums: int,
    scaling: float,
) -> None:
    indices = _per_token(lora_indices_tensor, seq_len_tensor)
    bgmv_shrink(inputs, lora_a_weights, output_tensor, indices, scaling)


def sgmv_expand(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    b_seq_start_loc: torch.Tensor,
    seq_len_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    batches: int,
    max_seq_length: int,
    token_nums: int,
    add_inputs: bool = False,
) -> None:
    indices = _per_token(lora_indices_tensor, seq_len_tensor)
    bgmv_expand(inputs, lora_b_weights, output_tensor, indices, add_inputs)


def sgmv_expand_slice(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    b_seq_start_loc: torch.Tensor,
    seq_len_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    batches: int,
    max_seq_length: int,
    token_nums: int,
    slice_offset: int,
    slice_size: int,
    add_inputs: bool = False,
) -> None:
    indices = _per_token(lora_indices_tensor, seq_len_tensor)
    bgmv_expand_slice(inputs, lora_b_weights, output_tensor, indices, slice_offset, slice_size, add_inputs)


REPLACEMENTS: dict[str, Any] = {
    "bgmv_shrink": bgmv_shrink,
    "bgmv_expand": bgmv_expand,
    "bgmv_expand_slice": bgmv_expand_slice,
    "sgmv_shrink": sgmv_shrink,
    "sgmv_expand": sgmv_expand,
    "sgmv_expand_slice": sgmv_expand_slice,
}


def register() -> None:
    """vLLM general plugin: install the kernels above into the CPU punica wrapper (idempotent)."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    from vllm.lora.punica_wrapper import punica_cpu

    for name, function in REPLACEMENTS.items():
        setattr(punica_cpu, name, function)
    logger.debug("loradock: CPU multi-LoRA kernels installed")
