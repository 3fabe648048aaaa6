"""Training: trainer, schedules, distributed (torchrun), checkpoints."""
