"""Multiple-choice records in the shapes people have, for the record-parsing and the scoring tests."""

import json


def hf_arc(q, choices, key, labels):
    """The shape of allenai/ai2_arc on the Hugging Face hub (what lm-evaluation-harness's arc task reads)."""
    return {"id": q[:8], "question": q, "choices": {"text": choices, "label": labels}, "answerKey": key}


def native_arc(q, choices, key, labels):
    """The shape of ARC's original JSONL release."""
    return {"id": q[:8], "question": {"stem": q, "choices": [{"text": t, "label": l} for t, l in zip(choices, labels)]},
            "answerKey": key}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
