"""Batches: padded rows change nothing but add padding (labels IGNORE_INDEX, attention 0), on either side."""

from __future__ import annotations

import torch

from tunesmith.config import TemplateConfig, TokenizationConfig
from tunesmith.data import Record
from tunesmith.modeling.batches import pad_collate
from tunesmith.prepare.tokenization import IGNORE_INDEX, encode_record

QA = TemplateConfig(name="qa")


def pair(prompt: str, response: str) -> Record:
    return Record("t.jsonl", 1, "qa", prompt=prompt, response=response)


class TestPadCollate:
    EXAMPLES = [{"input_ids": [5, 6, 7], "labels": [IGNORE_INDEX, 6, 7]}, {"input_ids": [8], "labels": [8]}]

    def test_right_padding(self):
        batch = pad_collate(self.EXAMPLES, pad_token_id=2, padding_side="right")
        assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 2, 2]]
        assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
        assert batch["labels"].tolist() == [[IGNORE_INDEX, 6, 7], [8, IGNORE_INDEX, IGNORE_INDEX]]

    def test_left_padding(self):
        batch = pad_collate(self.EXAMPLES, pad_token_id=2, padding_side="left")
        assert batch["input_ids"].tolist() == [[5, 6, 7], [2, 2, 8]]
        assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
        assert batch["labels"].tolist() == [[IGNORE_INDEX, 6, 7], [IGNORE_INDEX, IGNORE_INDEX, 8]]

    def test_padding_is_masked_even_when_pad_is_the_end_token(self, tokenizer):
        examples = [encode_record(pair("Hi", "Hello there, friend"), tokenizer, QA, TokenizationConfig(), 512),
                    encode_record(pair("Hi", "Yo"), tokenizer, QA, TokenizationConfig(), 512)]
        batch = pad_collate(examples, tokenizer.pad_token_id, "right")
        short = len(examples[1]["input_ids"])
        assert batch["labels"][1, short - 1].item() == tokenizer.eos_token_id  # its own end token: trained
        assert (batch["labels"][1, short:] == IGNORE_INDEX).all()              # padding with the same id: not
        assert batch["input_ids"].dtype == torch.long
