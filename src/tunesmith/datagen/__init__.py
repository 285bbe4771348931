"""Datagen: training data written by a teacher LLM (self-instruct from seed tasks, Q&A from documents)."""
