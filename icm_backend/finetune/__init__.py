"""Fine-tuning on accepted labels: training data (data), LoRA training (lora), model versions (versions),
the webhook side (trigger) and the training job itself (job). See docs/finetune.md."""
