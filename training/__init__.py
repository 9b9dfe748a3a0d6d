"""loradock's training side: base models, data preparation, LoRA fine-tuning, evaluation and exports."""
