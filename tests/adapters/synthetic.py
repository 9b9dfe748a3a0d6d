"""A synthetic base model description for registry and validation tests that need no real weights."""

from __future__ import annotations

from adapters.fingerprint import BaseModelSpec

HIDDEN, INTERMEDIATE, LAYERS = 64, 128, 2


def synthetic_base(hidden: int = HIDDEN, layers: int = LAYERS) -> BaseModelSpec:
    shapes: dict[str, tuple[int, int]] = {}
    for layer in range(layers):
        prefix = f"model.layers.{layer}"
        for module in ("q_proj", "k_proj", "v_proj", "o_proj"):
            shapes[f"{prefix}.self_attn.{module}"] = (hidden, hidden)
        shapes[f"{prefix}.mlp.gate_proj"] = (INTERMEDIATE, hidden)
        shapes[f"{prefix}.mlp.up_proj"] = (INTERMEDIATE, hidden)
        shapes[f"{prefix}.mlp.down_proj"] = (hidden, INTERMEDIATE)
    fingerprint = {
        "architecture": "LlamaForCausalLM",
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "vocab_size": 1000,
        "intermediate_size": INTERMEDIATE,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
    }
    return BaseModelSpec(fingerprint, shapes)
