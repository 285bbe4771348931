"""Tokenization on real SmolLM2 output: masking by position, truncation, max_length auto, the collator."""

from __future__ import annotations

import pytest
import torch

from tunesmith.config import TemplateConfig, TokenizationConfig
from tunesmith.data import Message, Record
from tunesmith.modeling.batches import pad_collate
from tunesmith.prepare.tokenization import IGNORE_INDEX, encode_prompt, encode_record, measure_lengths, resolve_max_length

QA = TemplateConfig(name="qa")
CHAT = TemplateConfig(name="chat")


def pair(prompt: str, response: str) -> Record:
    return Record("t.jsonl", 1, "qa", prompt=prompt, response=response)


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_prompt_is_masked_and_response_with_end_token_is_trained(tokenizer):
    record = pair("What colour is the sky?", "Blue, mostly.")
    example = encode_record(record, tokenizer, QA, TokenizationConfig(), 512)
    prompt = ids(tokenizer, "### Question:\nWhat colour is the sky?\n\n### Answer:\n")
    response = ids(tokenizer, "Blue, mostly.") + [tokenizer.eos_token_id]
    assert example["input_ids"] == prompt + response
    assert example["labels"] == [IGNORE_INDEX] * len(prompt) + response


def test_end_token_is_trained_although_pad_is_the_same_id(tokenizer):
    assert tokenizer.pad_token_id == tokenizer.eos_token_id  # SmolLM2: <|im_end|> is also the pad token
    example = encode_record(pair("Hi", "Hello"), tokenizer, CHAT, TokenizationConfig(), 512)
    end_positions = [i for i, t in enumerate(example["input_ids"]) if t == tokenizer.eos_token_id]
    trained = [i for i in end_positions if example["labels"][i] == tokenizer.eos_token_id]
    # <|im_end|> closes the system and user turns (masked) and the answer (trained).
    assert len(end_positions) == 3 and len(trained) == 1
    answer = ids(tokenizer, "Hello")
    assert [t for t in example["labels"] if t != IGNORE_INDEX] == answer + [tokenizer.eos_token_id]


def test_chat_masks_everything_but_assistant_turns(tokenizer):
    record = Record("t.jsonl", 3, "messages", messages=(
        Message("system", "Be brief."), Message("user", "Hi"), Message("assistant", "Hey"),
        Message("user", "Again"), Message("assistant", "Sure")))
    example = encode_record(record, tokenizer, CHAT, TokenizationConfig(), 512)
    trained = [t for t in example["labels"] if t != IGNORE_INDEX]
    end = tokenizer.eos_token_id
    assert trained == ids(tokenizer, "Hey") + [end] + ids(tokenizer, "Sure") + [end]


def test_train_on_all_labels_every_token(tokenizer):
    example = encode_record(pair("Hi", "Hello"), tokenizer, QA, TokenizationConfig(train_on="all"), 512)
    assert example["labels"] == example["input_ids"]


class TestTruncation:
    def test_left_keeps_the_whole_response_when_it_fits(self, tokenizer):
        record = pair("word " * 200, "The short answer.")
        full = encode_record(record, tokenizer, QA, TokenizationConfig(), 1024)
        cut = encode_record(record, tokenizer, QA, TokenizationConfig(truncation_side="left"), 32)
        response = ids(tokenizer, "The short answer.") + [tokenizer.eos_token_id]
        assert len(full["input_ids"]) > 32 and len(cut["input_ids"]) == 32
        assert cut["input_ids"] == full["input_ids"][-32:]
        assert [t for t in cut["labels"] if t != IGNORE_INDEX] == response

    def test_left_with_a_response_longer_than_max_length_keeps_prompt_tail_and_response_head(self, tokenizer):
        record = pair("Tell me a long story.", "once upon a time " * 100)
        prompt = ids(tokenizer, "### Question:\nTell me a long story.\n\n### Answer:\n")
        cut = encode_record(record, tokenizer, QA, TokenizationConfig(truncation_side="left"), 40)
        assert len(cut["input_ids"]) == 40
        assert cut["input_ids"][:len(prompt)] == prompt  # prompt is shorter than half of 40: kept whole
        assert cut["labels"][len(prompt):] == cut["input_ids"][len(prompt):]
        assert tokenizer.eos_token_id not in cut["labels"]  # the answer's tail (and end token) is what was cut

    def test_right_that_cuts_every_response_token_returns_none(self, tokenizer):
        record = pair("word " * 100, "Answer.")
        assert encode_record(record, tokenizer, QA, TokenizationConfig(truncation_side="right"), 16) is None
        kept = encode_record(record, tokenizer, QA, TokenizationConfig(truncation_side="left"), 16)
        assert kept is not None and kept["labels"][-1] == tokenizer.eos_token_id


def test_measure_lengths_counts_prompt_and_response_with_end_token(tokenizer):
    record = pair("What colour is the sky?", "Blue.")
    [(prompt, response)] = measure_lengths([record], tokenizer, QA)
    assert prompt == len(ids(tokenizer, "### Question:\nWhat colour is the sky?\n\n### Answer:\n"))
    assert response == len(ids(tokenizer, "Blue.")) + 1


def test_encode_prompt_is_exactly_the_masked_prefix(tokenizer):
    record = pair("What colour is the sky?", "Blue.")
    example = encode_record(record, tokenizer, CHAT, TokenizationConfig(), 512)
    prompt = encode_prompt(record, tokenizer, CHAT)
    assert example["input_ids"][:len(prompt)] == prompt
    assert set(example["labels"][:len(prompt)]) == {IGNORE_INDEX}
    assert example["labels"][len(prompt)] != IGNORE_INDEX


class TestMaxLength:
    def test_auto_picks_the_p99_of_real_lengths(self, tokenizer):
        records = [pair("q " * n, "a") for n in range(1, 201)]
        totals = [p + r for p, r in measure_lengths(records, tokenizer, QA)]
        expected = sorted(totals)[197]  # nearest rank: ceil(0.99 * 200) = 198th smallest
        assert resolve_max_length(TokenizationConfig(max_length="auto"), totals, 4096) == expected
        assert expected < max(totals)

    def test_auto_is_capped_by_the_model_context(self):
        assert resolve_max_length(TokenizationConfig(), [100, 5000, 6000], 2048) == 2048

    def test_an_int_is_used_as_given(self):
        assert resolve_max_length(TokenizationConfig(max_length=77), [100, 5000], 2048) == 77


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


@pytest.mark.parametrize("side", ["left", "right"])
def test_truncated_examples_never_exceed_max_length(tokenizer, side):
    records = [pair("word " * n, "answer " * (60 - n)) for n in range(0, 60, 7)]
    for record in records:
        example = encode_record(record, tokenizer, CHAT, TokenizationConfig(truncation_side=side), 48)
        if example is not None:
            assert len(example["input_ids"]) == len(example["labels"]) <= 48
