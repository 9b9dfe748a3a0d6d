"""Multi-LoRA on vLLM's CPU backend, loaded into every vLLM process as a general plugin.

vLLM 0.32's CPU path (`vllm/lora/punica_wrapper/punica_cpu.py` over `vllm/lora/ops/torch_ops/lora_ops.py`) has
three problems this module fixes, measured on SmolLM2-135M with two cores:

- Tokens of the base model carry the index -1, which its gather reads as "the last LoRA slot", so once
  `max_loras` slots are filled, base-model requests batched with adapter requests are answered with the last
  slot's adapter applied (seen: the base answer changed from "Paris." to the last adapter's answer).
- It copies every token's whole A and B matrices before contracting them, which made a 1,800-token LoRA prefill
  about ten times slower than it needs to be.
- Every LoRA layer call re-derives the batch layout from the index tensor (`repeat_interleave`, comparisons,
  `unique`), and runs every slice of every wrapped layer, although an adapter trained on `q_proj` and `v_proj`
  (peft's default for Llama) leaves 10 of the 14 slices of a Llama layer at zero. These costs are per call, not
  per token: with 16 decode streams a step makes 420 such calls, and LoRA took more time than the base model.

`CPULoRAWrapper` works out the batch's layout once per step (`plan_step`, when vLLM updates its LoRA metadata):
runs of tokens of one adapter (a prefill chunk, or the whole batch of a single adapter) become plain matrix
products on row slices, and the scattered tokens of decode steps become one batched product over their
adapters' matrices. Slices whose adapters in this batch are all zero are skipped. The module-level kernels keep
the signatures and write semantics of vLLM's torch ops for the wrapper's other paths (LM head, embeddings).
`register` installs both; vLLM calls it in each engine process via the `vllm.general_plugins` entry point, and it
does nothing on other platforms.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

logger = logging.getLogger(__name__)

GATHER_MAX_TOKENS = 32
"""Batches up to this many tokens with several adapters take the batched (gather) product in the kernels."""

DENSE_MIN_RUN = 8
"""A run of at least this many consecutive tokens of one adapter takes a plain product on its rows; shorter runs
(decode tokens) join the batched product, whose cost is per token rather than per call."""

GATHER_MAX_ROWS = 64
"""Up to this many scattered tokens take one batched product over per-token copies of their matrices; past it the
copies cost more than one product per adapter over its rows."""


def _per_adapter_product(
    inputs: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """Row t of the result is inputs[t] @ weights[indices[t]].T, or zeros where indices[t] < 0."""
    if weights.dim() == 4:
        weights = weights.squeeze(1)
    x = inputs.to(dtype)
    if indices.numel() and x.shape[0] <= GATHER_MAX_TOKENS and not bool((indices == indices[0]).all()):
        # Decode steps: a few tokens from many adapters. One batched product over per-token copies of their
        # matrices costs less than a product per adapter; past about 32 tokens the copies cost more than they save.
        gathered = weights.index_select(0, indices.clamp(min=0)).to(dtype)
        products = torch.bmm(x.unsqueeze(1), gathered.transpose(1, 2)).squeeze(1)
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


@dataclass(frozen=True, slots=True)
class StepPlan:
    """How one step's tokens meet their adapters, worked out once and used by every LoRA layer of the step."""

    tokens: int
    slots: tuple[int, ...]
    """The LoRA slots this step's tokens use (base-model tokens, index -1, use none)."""
    runs: tuple[tuple[int, int, int], ...]
    """(slot, start, end): rows start:end all use slot and take one plain product."""
    scattered_rows: torch.Tensor | None
    """Rows outside the runs that use an adapter; None when there are none."""
    scattered_slots: torch.Tensor | None
    """The slot of each scattered row."""
    all_rows_scattered: bool
    """The scattered rows are every row of the step, in order: no selection or scatter is needed."""


def plan_step(token_slots: list[int], device: torch.device | str = "cpu") -> StepPlan:
    """Split a step's per-token LoRA slots (-1 for base-model tokens) into dense runs and scattered tokens."""
    runs: list[tuple[int, int, int]] = []
    scattered: list[int] = []
    start = 0
    for end in range(1, len(token_slots) + 1):
        if end < len(token_slots) and token_slots[end] == token_slots[start]:
            continue
        slot = token_slots[start]
        if slot >= 0:
            if end - start >= DENSE_MIN_RUN or (start == 0 and end == len(token_slots)):
                runs.append((slot, start, end))
            else:
                scattered.extend(range(start, end))
        start = end
    scattered_slots = [token_slots[row] for row in scattered]
    return StepPlan(
        tokens=len(token_slots),
        slots=tuple(sorted({slot for slot in token_slots if slot >= 0})),
        runs=tuple(runs),
        scattered_rows=torch.tensor(scattered, dtype=torch.long, device=device) if scattered else None,
        scattered_slots=torch.tensor(scattered_slots, dtype=torch.long, device=device) if scattered else None,
        all_rows_scattered=len(scattered) == len(token_slots),
    )


def apply_lora_slice(
    plan: StepPlan, x: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor, out: torch.Tensor, scale: float
) -> None:
    """out[t] += scale * (x[t] @ A[slot t].T) @ B[slot t].T for every row t that uses an adapter.

    `lora_a` is vLLM's stacked (slots, 1, rank, in) and `lora_b` its (slots, 1, out, rank); `out` may be a column
    slice of the layer's output.
    """
    a = lora_a.view(lora_a.shape[0], lora_a.shape[-2], lora_a.shape[-1]).to(x.dtype)
    b = lora_b.view(lora_b.shape[0], lora_b.shape[-2], lora_b.shape[-1]).to(x.dtype)
    for slot, start, end in plan.runs:
        low_rank = torch.mm(x[start:end], a[slot].t())
        if scale != 1.0:
            low_rank.mul_(scale)
        out[start:end].addmm_(low_rank, b[slot].t())
    rows, slots = plan.scattered_rows, plan.scattered_slots
    if rows is None or slots is None:
        return
    if rows.numel() > GATHER_MAX_ROWS:
        for slot in plan.slots:
            own = rows[slots == slot]
            if own.numel():
                low_rank = torch.mm(x.index_select(0, own), a[slot].t())
                out.index_add_(0, own, torch.mm(low_rank, b[slot].t()), alpha=scale)
        return
    # One batched product over per-token copies of the matrices. The (1 x in) @ (in x rank) orientation matters:
    # MKL takes a transposed view of the copies at no cost, while the (rank x in) @ (in x 1) form is 4-10x slower.
    inputs = x if plan.all_rows_scattered else x.index_select(0, rows)
    low_rank = torch.bmm(inputs.unsqueeze(1), a.index_select(0, slots).transpose(1, 2))
    if scale != 1.0:
        low_rank.mul_(scale)
    delta = torch.bmm(low_rank, b.index_select(0, slots).transpose(1, 2)).squeeze(1)
    if plan.all_rows_scattered:
        out.add_(delta)
    else:
        out.index_add_(0, rows, delta)


class CPULoRAWrapper(PunicaWrapperCPU):  # type: ignore[misc]
    """vLLM's CPU punica wrapper with linear LoRA layers applied from a per-step plan (see the module docstring)."""

    def __init__(self, max_num_batched_tokens: int, max_batches: int, device: torch.device | str, **kwargs: Any):
        super().__init__(max_num_batched_tokens, max_batches, device, **kwargs)
        self._plan: StepPlan | None = None
        self._slot_ids: list[int | None] = []
        self._nonzero: dict[int, dict[int, bool]] = {}
        """slot -> id(stacked A) -> whether the slot's A and B there are non-zero; reset when the slot is reused."""
        self._live: dict[int, bool] = {}
        """id(stacked A) -> whether any slot of the current plan is non-zero there."""

    def update_metadata(
        self, mapping: Any, lora_index_to_id: list[int | None], max_loras: int, vocab_size: int, **kwargs: Any
    ) -> None:
        super().update_metadata(mapping, lora_index_to_id, max_loras, vocab_size, **kwargs)
        for slot, lora_id in enumerate(lora_index_to_id):
            if slot >= len(self._slot_ids) or self._slot_ids[slot] != lora_id:
                self._nonzero[slot] = {}
        self._slot_ids = list(lora_index_to_id)
        self._plan = plan_step(self.token_lora_indices.tolist(), self.device)
        self._live = {}

    def _any_live(self, lora_a: torch.Tensor, lora_b: torch.Tensor, slots: tuple[int, ...]) -> bool:
        """Whether any of `slots` holds a non-zero A and B in this slice; vLLM zeroes the slices an adapter lacks."""
        key = id(lora_a)
        live = self._live.get(key)
        if live is None:
            live = False
            for slot in slots:
                known = self._nonzero.setdefault(slot, {})
                nonzero = known.get(key)
                if nonzero is None:
                    nonzero = known[key] = bool(lora_a[slot].any()) and bool(lora_b[slot].any())
                live = live or nonzero
            self._live[key] = live
        return live

    def add_lora_linear(
        self,
        y: torch.Tensor,
        x: torch.Tensor,
        lora_a_stacked: tuple[torch.Tensor, ...],
        lora_b_stacked: tuple[torch.Tensor, ...],
        scale: float,
        output_slices: tuple[int, ...],
        *,
        buffer: tuple[torch.Tensor, ...] | None = None,
        **kwargs: Any,
    ) -> None:
        plan = self._plan
        if plan is None or not plan.slots:  # no metadata yet, or only base-model tokens in this step
            return
        x, y = x.view(-1, x.shape[-1]), y.view(-1, y.shape[-1])
        if x.shape[0] < plan.tokens or y.shape[0] != x.shape[0]:
            raise ValueError(
                f"LoRA layer got {x.shape[0]} input and {y.shape[0]} output rows for a step of {plan.tokens} tokens"
            )
        x, y = x[: plan.tokens], y[: plan.tokens]  # rows past the step's tokens are padding: no adapter applies
        offset = 0
        for lora_a, lora_b, width in zip(lora_a_stacked, lora_b_stacked, output_slices, strict=True):
            if self._any_live(lora_a, lora_b, plan.slots):
                apply_lora_slice(plan, x, lora_a, lora_b, y[:, offset : offset + width], scale)
            offset += width


REPLACEMENTS: dict[str, Any] = {
    "bgmv_shrink": bgmv_shrink,
    "bgmv_expand": bgmv_expand,
    "bgmv_expand_slice": bgmv_expand_slice,
    "sgmv_shrink": sgmv_shrink,
    "sgmv_expand": sgmv_expand,
    "sgmv_expand_slice": sgmv_expand_slice,
}

WRAPPER = f"{CPULoRAWrapper.__module__}.{CPULoRAWrapper.__qualname__}"


def register() -> None:
    """vLLM general plugin: install the wrapper and kernels above on the CPU platform (idempotent)."""
    from vllm.lora.punica_wrapper import punica_cpu
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    for name, function in REPLACEMENTS.items():
        setattr(punica_cpu, name, function)
    type(current_platform).get_punica_wrapper = classmethod(lambda _cls: WRAPPER)  # type: ignore[method-assign]
    logger.debug("loradock: CPU multi-LoRA wrapper and kernels installed")
