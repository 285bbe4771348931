"""Evaluate: did the finetune help? Test loss, generation metrics, multiple choice, and a run's result files."""
