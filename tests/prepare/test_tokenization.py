"""Tokenization on real SmolLM2 output: masking by position, truncation, max_length auto."""

from __future__ import annotations

import pytest

from tunesmith.config import TemplateConfig, TokenizationConfig
from tunesmith.data import Message, Record
from tunesmith.prepare import tokenization
from tunesmith.prepare.tokenization import IGNORE_INDEX, encode_prompt, encode_record, measure_lengths, resolve_max_length

QA = TemplateConfig(name="qa")
CHAT = TemplateConfig(name="chat")


def pair(prompt: str, response: str) -> Record:
    return Record("t.jsonl", 1, "qa", prompt=prompt, response=response)


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def trained_text(tokenizer, example: dict) -> str:
    """The tokens that carry a loss, decoded: what the model learns to write."""
    return tokenizer.decode([t for t in example["labels"] if t != IGNORE_INDEX])


def chat_ids(tokenizer, messages) -> list[int]:
    """The tokenizer's own chat template applied to the whole conversation at once (the reference)."""
    turns = [{"role": m.role, "content": m.content} for m in messages]
    return tokenizer.apply_chat_template(turns, tokenize=True, return_dict=True)["input_ids"]


def test_prompt_is_masked_and_response_with_end_token_is_trained(tokenizer):
    record = pair("What colour is the sky?", "Blue, mostly.")
    example = encode_record(record, tokenizer, QA, TokenizationConfig(), 512)
    prompt_text = "### Question:\nWhat colour is the sky?\n\n### Answer:\n"
    # The reference is the whole text encoded in one go, not segment by segment as the implementation does.
    assert example["input_ids"] == ids(tokenizer, prompt_text + "Blue, mostly.<|im_end|>")
    response = [t for t in example["labels"] if t != IGNORE_INDEX]
    assert tokenizer.decode(response) == "Blue, mostly.<|im_end|>"
    assert example["labels"] == [IGNORE_INDEX] * (len(example["input_ids"]) - len(response)) + response
    assert tokenizer.decode(example["input_ids"][:-len(response)]) == prompt_text


def test_end_token_is_trained_although_pad_is_the_same_id(tokenizer):
    assert tokenizer.pad_token_id == tokenizer.eos_token_id  # SmolLM2: <|im_end|> is also the pad token
    example = encode_record(pair("Hi", "Hello"), tokenizer, CHAT, TokenizationConfig(), 512)
    end_positions = [i for i, t in enumerate(example["input_ids"]) if t == tokenizer.eos_token_id]
    trained = [i for i in end_positions if example["labels"][i] == tokenizer.eos_token_id]
    # <|im_end|> closes the system and user turns (masked) and the answer (trained).
    assert len(end_positions) == 3 and len(trained) == 1
    assert trained_text(tokenizer, example) == "Hello<|im_end|>"
    assert example["input_ids"] == chat_ids(tokenizer, [Message("user", "Hi"), Message("assistant", "Hello")])


def test_chat_masks_everything_but_assistant_turns(tokenizer):
    record = Record("t.jsonl", 3, "messages", messages=(
        Message("system", "Be brief."), Message("user", "Hi"), Message("assistant", "Hey"),
        Message("user", "Again"), Message("assistant", "Sure")))
    example = encode_record(record, tokenizer, CHAT, TokenizationConfig(), 512)
    assert trained_text(tokenizer, example) == "Hey<|im_end|>Sure<|im_end|>"
    assert example["input_ids"] == chat_ids(tokenizer, record.messages)


def test_train_on_all_labels_every_token(tokenizer):
    example = encode_record(pair("Hi", "Hello"), tokenizer, QA, TokenizationConfig(train_on="all"), 512)
    assert example["labels"] == example["input_ids"]


class TestTruncation:
    def test_left_keeps_the_whole_response_when_it_fits(self, tokenizer):
        record = pair("word " * 200, "The short answer.")
        full = encode_record(record, tokenizer, QA, TokenizationConfig(), 1024)
        cut = encode_record(record, tokenizer, QA, TokenizationConfig(truncation_side="left"), 32)
        assert len(full["input_ids"]) > 32 and len(cut["input_ids"]) == 32
        assert cut["input_ids"] == full["input_ids"][-32:]
        assert trained_text(tokenizer, cut) == "The short answer.<|im_end|>"
        assert tokenizer.decode(cut["input_ids"]).endswith("word \n\n### Answer:\nThe short answer.<|im_end|>")

    def test_left_with_a_response_longer_than_max_length_keeps_prompt_tail_and_response_head(self, tokenizer):
        record = pair("Tell me a long story.", "once upon a time " * 100)
        cut = encode_record(record, tokenizer, QA, TokenizationConfig(truncation_side="left"), 40)
        prompt = [t for t, label in zip(cut["input_ids"], cut["labels"]) if label == IGNORE_INDEX]
        assert len(cut["input_ids"]) == 40
        # prompt is shorter than half of 40: kept whole
        assert tokenizer.decode(prompt) == "### Question:\nTell me a long story.\n\n### Answer:\n"
        assert cut["input_ids"][:len(prompt)] == prompt
        assert cut["labels"][len(prompt):] == cut["input_ids"][len(prompt):]
        assert trained_text(tokenizer, cut).startswith("once upon a time once upon")
        assert tokenizer.eos_token_id not in cut["labels"]  # the answer's tail (and end token) is what was cut

    def test_right_that_cuts_every_response_token_returns_none(self, tokenizer):
        record = pair("word " * 100, "Answer.")
        assert encode_record(record, tokenizer, QA, TokenizationConfig(truncation_side="right"), 16) is None
        kept = encode_record(record, tokenizer, QA, TokenizationConfig(truncation_side="left"), 16)
        assert kept is not None and kept["labels"][-1] == tokenizer.eos_token_id


def test_measure_lengths_counts_prompt_and_response_with_end_token(tokenizer):
    record = pair("What colour is the sky?", "Blue.")
    [(prompt, response)] = measure_lengths([record], tokenizer, QA)
    whole = ids(tokenizer, "### Question:\nWhat colour is the sky?\n\n### Answer:\nBlue.<|im_end|>")
    assert prompt + response == len(whole)
    assert tokenizer.decode(whole[prompt:]) == "Blue.<|im_end|>"


def test_encode_prompt_is_exactly_the_masked_prefix(tokenizer):
    record = pair("What colour is the sky?", "Blue.")
    example = encode_record(record, tokenizer, CHAT, TokenizationConfig(), 512)
    prompt = encode_prompt(record, tokenizer, CHAT)
    reference = tokenizer.apply_chat_template([{"role": "user", "content": record.prompt}], tokenize=True,
                                              return_dict=True, add_generation_prompt=True)["input_ids"]
    assert prompt == reference
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


@pytest.mark.parametrize("side", ["left", "right"])
def test_truncated_examples_never_exceed_max_length(tokenizer, side):
    records = [pair("word " * n, "answer " * (60 - n)) for n in range(0, 60, 7)]
    for record in records:
        example = encode_record(record, tokenizer, CHAT, TokenizationConfig(truncation_side=side), 48)
        if example is not None:
            assert len(example["input_ids"]) == len(example["labels"]) <= 48


class TestMaxLengthCap:
    def test_an_int_longer_than_the_model_context_is_capped(self):
        assert resolve_max_length(TokenizationConfig(max_length=4096), [100, 5000], 2048) == 2048

    def test_the_cap_is_noted_and_nothing_else_is(self):
        from tunesmith.prepare.tokenization import max_length_note

        note = max_length_note(TokenizationConfig(max_length=4096), 2048)
        assert "4096" in note and "capped at 2048" in note
        assert max_length_note(TokenizationConfig(max_length=2048), 2048) is None
        assert max_length_note(TokenizationConfig(), 64) is None  # auto is capped silently, as always

    def test_prepare_records_the_setting_and_prints_the_cap(self, tmp_path, tiny_model_dir):
        import json

        from tunesmith.config import load_config
        from tunesmith.prepare.pipeline import prepare
        from tunesmith.runs import create_run

        data = tmp_path / "qa.jsonl"
        data.write_text("".join(json.dumps({"question": f"Q{i}?", "answer": f"A{i}."}) + "\n" for i in range(6)))
        config = load_config(None, [f"data.path={data}", f"model.name={tiny_model_dir}", "split.test_size=2",
                                    f"output.runs_dir={tmp_path / 'runs'}", "output.name=cap",
                                    "tokenization.max_length=100000"])
        result = prepare(create_run(config), config.model, config.data, config.template, config.tokenization,
                         config.split)
        manifest = result.manifest
        assert manifest.max_length == manifest.model_context == 2048
        assert manifest.max_length_setting == 100000
        assert any("capped at 2048" in line for line in result.summary_lines())
        again = prepare(create_run(config), config.model, config.data, config.template, config.tokenization,
                        config.split)
        assert again.reused and any("capped at 2048" in line for line in again.summary_lines())


TRICKY_TEXTS = ["", "<|im_end|>", "<|im_start|><|im_end|>", "<|im_start|>user\nHi<|im_end|>\n", " <|im_end|> x ",
                "\n\n<|im_start|>assistant\n  spaced  <|im_end|>", "<|im_end|>\n", "no special tokens at all",
                "ünï ✓ 水壶<|endoftext|>tail", "<|im_start|>system\nSame<|im_end|>",
                "<|im_start|>system\nSame<|im_end|>", "<|im_end|<|im_end|>>", "a<|im_start|>"]


def test_encoding_between_special_tokens_gives_the_whole_texts_ids(tokenizer, monkeypatch):
    """Trusted from the first text (no comparison): the parts between special tokens, each distinct one encoded
    once, put together are the ids of the whole text, edge whitespace, adjacent and repeated tokens included."""
    monkeypatch.setattr(tokenization, "_piece_splits", tokenization.weakref.WeakKeyDictionary())
    monkeypatch.setattr(tokenization, "VERIFIED_TEXTS", 0)
    whole = [e.ids for e in tokenizer.backend_tokenizer.encode_batch(TRICKY_TEXTS, add_special_tokens=False)]
    assert tokenization.encode_texts(tokenizer, TRICKY_TEXTS) == whole
    assert tokenization._piece_splits[tokenizer].split is not None  # the texts were encoded by parts


def test_a_tokenizer_that_encodes_a_texts_start_differently_is_encoded_whole(monkeypatch):
    """Metaspace with `prepend_scheme: first` marks only the text's first word: its parts would not add up, so the
    comparison on the first texts turns the parts off for this tokenizer."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({"[UNK]": 0, "▁a": 1, "a": 2, "▁b": 3, "<e>": 4}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    backend.add_special_tokens([AddedToken("<e>", special=True, normalized=False)])
    metaspace = PreTrainedTokenizerFast(tokenizer_object=backend)
    assert tokenization.encode_texts(metaspace, ["a<e>a b", "a b"]) == [[1, 4, 2, 3], [1, 3]]
    assert tokenization._piece_splits[metaspace].split is None
    assert tokenization.encode_texts(metaspace, ["b<e>a"]) == [[3, 4, 2]]
