"""A batch whose rows open with the same tokens runs those tokens once: one forward (and backward) pass over the
shared prefix, whose keys and values then serve every row.

Fine-tuning data for one task repeats one system prompt in every example. On the demo task the rows of a batch
share their first 43 of about 104 tokens (the system turn and the start of the user turn), so with 8 rows 7 of
the 8 copies of that prefix were wasted work in the forward pass and again in the backward pass, about a third of
all the transformer's work. Causal attention makes the prefix's hidden states, keys and values the same in every
row, so running it at batch size 1 and repeating its KV cache across the batch gives the same logits, loss and
gradients up to float rounding: each row's gradient flows back through the repeated cache into the one prefix pass.

Where a prefix cannot be shared this way the batch runs as usual: rows that differ from their first token, scored
positions inside the prefix, packed rows (position ids restarting), gradient checkpointing (which drops the cache).
With LoRA dropout the prefix gets one dropout mask for all rows, a correlated but unbiased gradient estimate.
"""

from __future__ import annotations

from typing import Any

MIN_SHARED_TOKENS = 8
"""Shorter common prefixes are not worth the second model call."""

SHAREABLE_INPUTS = frozenset({"input_ids", "attention_mask", "position_ids"})


def shared_prefix_length(inputs: dict[str, Any], first_scored: int) -> int:
    """How many leading tokens every row has in common and may share (0 when sharing would not pay or not hold).

    `first_scored` is the first position whose logits the loss needs: the prefix stops before it, and before each
    row's last token, so that every row keeps at least one token of its own.
    """
    import torch

    input_ids = inputs["input_ids"]
    if set(inputs) - SHAREABLE_INPUTS or input_ids.dim() != 2 or input_ids.shape[0] < 2:
        return 0
    same = (input_ids == input_ids[:1]).all(dim=0)
    mask = inputs.get("attention_mask")
    if mask is not None:
        same &= mask.bool().all(dim=0)
    positions = inputs.get("position_ids")
    if positions is not None:
        same &= (positions == torch.arange(positions.shape[1], device=positions.device)).all(dim=0)
    differing = (~same).nonzero()
    length = int(differing[0]) if len(differing) else input_ids.shape[1]
    length = min(length, first_scored, input_ids.shape[1] - 1)
    return length if length >= MIN_SHARED_TOKENS else 0


def forward_sharing_prefix(model: Any, inputs: dict[str, Any], prefix: int, logits_to_keep: Any) -> Any:
    """The model's output for `inputs` (logits at `logits_to_keep` only), running the first `prefix` tokens once.

    `logits_to_keep` holds positions of the whole sequence, all at or after `prefix`.
    """
    import torch

    input_ids = inputs["input_ids"]
    head = model(
        input_ids=input_ids[:1, :prefix],
        use_cache=True,
        logits_to_keep=torch.empty(0, dtype=torch.long, device=input_ids.device),
    )
    cache = head.past_key_values
    cache.batch_repeat_interleave(input_ids.shape[0])
    rest = {"input_ids": input_ids[:, prefix:]}
    if "attention_mask" in inputs:
        rest["attention_mask"] = inputs["attention_mask"]  # covers the cached prefix and the rest
    if "position_ids" in inputs:
        rest["position_ids"] = inputs["position_ids"][:, prefix:]
    return model(**rest, past_key_values=cache, use_cache=True, logits_to_keep=logits_to_keep - prefix)
