"""loradock's server: an OpenAI-compatible API over vLLM, serving a base model and its LoRA adapters."""
