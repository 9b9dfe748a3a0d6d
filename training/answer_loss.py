"""The SFT loss over answer tokens only, projected through the LM head at those positions alone.

TRL's SFTTrainer scores tokens with a fused, chunked LM head that projects only labelled positions where Triton
runs; everywhere else (the CPU among them) it projects every position of the batch through the 49k-word vocabulary,
prompt tokens included, and then masks them away. Our chat examples are mostly prompt (system turn and ticket),
so on the CPU that wasted projection was the largest single cost of a step: training measured 153 tokens/s with it,
below a plain float32 `Trainer`. Asking the model for logits only at the sequence positions that carry a label in
some row of the batch (transformers' `logits_to_keep`) gives the same loss for a fraction of the work. The system
prompt the rows share runs once per batch (`training/shared_prefix.py`).
"""

from __future__ import annotations

from typing import Any

from training.data.tokenize import IGNORE
from training.shared_prefix import forward_sharing_prefix, shared_prefix_length


def answer_logits(model: Any, inputs: dict[str, Any]) -> tuple[Any, Any]:
    """(logits, targets) at the positions that carry a label in some row of the batch, float32; targets holds
    IGNORE where a row has no label at a kept position. Training and evaluation score tokens through this."""
    targets = inputs["labels"][:, 1:]
    positions = (targets != IGNORE).any(dim=0).nonzero().flatten()
    # Every input but the labels goes through: packed batches carry position_ids that keep their examples apart.
    model_inputs = {key: value for key, value in inputs.items() if key != "labels"}
    first_scored = int(positions[0]) if len(positions) else targets.shape[1]
    checkpointing = bool(getattr(model, "is_gradient_checkpointing", False))
    prefix = 0 if checkpointing else shared_prefix_length(model_inputs, first_scored)
    if prefix:
        outputs = forward_sharing_prefix(model, model_inputs, prefix, positions)
    else:
        outputs = model(**model_inputs, logits_to_keep=positions, use_cache=False)
    return outputs.logits.float(), targets[:, positions]


def summed_loss(logits: Any, targets: Any) -> tuple[Any, Any]:
    """(summed cross-entropy, count) over the labelled targets: training divides by TRL's count of items in
    the batch, evaluation by the tokens of the whole set."""
    import torch.nn.functional as F

    summed = F.cross_entropy(
        logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=IGNORE, reduction="sum"
    )
    return summed, (targets != IGNORE).sum()


def answer_loss(model: Any, inputs: dict[str, Any], num_items_in_batch: Any) -> tuple[Any, dict[str, float]]:
    """(loss, metrics): mean cross-entropy over labelled tokens, as TRL reduces it, plus the entropy and token
    accuracy TRL logs."""
    import torch
    import torch.nn.functional as F

    logits, kept = answer_logits(model, inputs)
    valid = kept != IGNORE
    summed, tokens = summed_loss(logits, kept)
    loss = summed / (tokens.clamp(min=1) if num_items_in_batch is None else num_items_in_batch)
    with torch.no_grad():
        scored = logits[valid]
        log_probs = F.log_softmax(scored, dim=-1)
        entropy = float(-(log_probs.exp() * log_probs).sum(-1).mean()) if len(scored) else 0.0
        accuracy = float((scored.argmax(-1) == kept[valid]).float().mean()) if len(scored) else 0.0
    return loss, {"entropy": entropy, "mean_token_accuracy": accuracy}
