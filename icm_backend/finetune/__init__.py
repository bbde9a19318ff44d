"""Fine-tuning on accepted labels: training rows (data) in the engine's prompt format (prompts), LoRA
training (lora) in a child process (worker), a new model version from a training set (pipeline),
promotion (gate) and a kept version's trial (trial), and what the server registers: the webhook side
(trigger), the training job (job) and the hookup (hooks). Model versions on disk are
icm_backend/versions.py. See docs/finetune.md."""
