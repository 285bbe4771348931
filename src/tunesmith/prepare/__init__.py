"""Prepare: canonical records → tokenized, masked train/test splits in the run folder.

templates (how a record becomes text segments), tokenization (token ids and labels, truncation, `max_length:
auto`), split (a deterministic train/test split), inspect (`data inspect`: the lengths and truncation prepare
would see, before any run exists) and the pipeline that runs them and writes a typed manifest.
"""
