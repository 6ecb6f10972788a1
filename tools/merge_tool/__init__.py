"""merge-tool: a LoRA adapter exported as-is, or merged into its base model."""
