"""The demo's held-out questions are other phrasings of facts its training questions teach: a fact whose every
phrasing lands on the test side could never be learned, and would cap exact match below what training gives."""

from __future__ import annotations

from pathlib import Path

from tunesmith.config import load_config
from tunesmith.data.validate import read_records
from tunesmith.prepare.split import split_records

DEMO = Path(__file__).resolve().parents[2] / "examples" / "demo.yaml"


def test_every_held_out_answer_is_taught_by_another_phrasing():
    config = load_config(DEMO)
    records = read_records(DEMO.parent / config.data.path, config.data).records
    train, test = split_records(records, config.split)
    taught = {record.response for record in train}
    assert len(test) == config.split.test_size
    assert [record.prompt for record in test if record.response not in taught] == []
    # and no held-out question is asked word for word in training
    assert not {record.prompt for record in test} & {record.prompt for record in train}
