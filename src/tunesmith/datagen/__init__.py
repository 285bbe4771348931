"""Datagen: training data written by a teacher LLM (self-instruct from seed tasks, Q&A from documents).

- `teachers`: the `Teacher` protocol, the HTTP (OpenAI-compatible) and in-process teachers, retries and backoff.
- `parsing`: numbered tasks, question/answer JSON and grading verdicts out of what a teacher wrote.
- `filters`: length, unsupported-task and duplicate (exact and ROUGE-L) checks.
- `documents`: .md/.txt/.html/.pdf documents read and split into chunks.
- `output`: resumable JSONL output and the run summary beside it.
- `self_instruct`, `from_docs`: the two generators.

Nothing is re-exported here: `datagen.self_instruct` names both a module and its generator, and importing
this package stays free.
"""
