"""Train: one loop for full finetuning and LoRA, read top to bottom in phases (setup → resume → loop → finish)."""
