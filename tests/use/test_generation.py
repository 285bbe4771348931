"""Generation: batching never changes an answer, answers stop where they should, streaming matches batching."""

from __future__ import annotations

import json

import pytest

from tunesmith.config import DecodingConfig
from tunesmith.errors import RunError
from tunesmith.use.generation import (
    Generation,
    GenerationOptions,
    StopScanner,
    _encode,
    _finish,
    end_token_ids,
    first_stop,
    generate_batch,
    load_for_inference,
    stream_generate,
)

PROMPTS = [
    "Explain, in a few sentences, why the sky looks blue during the day and red at sunset.",
    "Hi",
    "What is two plus two?",
    "Write a haiku about autumn leaves falling on a quiet pond.",
    "List three fruits.",
]


@pytest.fixture(scope="module")
def model(varied_model_dir):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(varied_model_dir, dtype=torch.float32).eval()


class TestGenerateBatch:
    def test_greedy_batch_equals_one_by_one(self, model, tokenizer):
        options = GenerationOptions(max_new_tokens=10)
        batched = generate_batch(model, tokenizer, PROMPTS, options)
        alone = [generate_batch(model, tokenizer, [p], options)[0] for p in PROMPTS]
        assert batched == alone
        assert [g.num_prompt_tokens for g in batched] == [
            len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in PROMPTS]

    def test_padding_is_on_the_left(self, tokenizer):
        import torch

        input_ids, mask = _encode(tokenizer, ["a long prompt with many words", "hi"], torch.device("cpu"))
        assert mask[1, 0] == 0 and mask[1, -1] == 1
        assert input_ids[1, -1] == tokenizer("hi", add_special_tokens=False)["input_ids"][-1]

    def test_length_limit_gives_finish_reason_length(self, model, tokenizer):
        [g] = generate_batch(model, tokenizer, [PROMPTS[2]], GenerationOptions(max_new_tokens=4))
        assert g.finish_reason == "length" and g.num_tokens == 4

    def test_stop_string_cuts_the_text(self, model, tokenizer):
        [full] = generate_batch(model, tokenizer, [PROMPTS[2]], GenerationOptions(max_new_tokens=10))
        stop = full.text[len(full.text) // 2:][:3]
        assert stop.strip(), full.text
        [cut] = generate_batch(model, tokenizer, [PROMPTS[2]], GenerationOptions(max_new_tokens=10, stop=(stop,)))
        assert cut.text == full.text[:full.text.find(stop)]
        assert cut.finish_reason == "stop"
        assert cut.num_tokens <= full.num_tokens

    def test_empty_batch(self, model, tokenizer):
        assert generate_batch(model, tokenizer, [], GenerationOptions(max_new_tokens=4)) == []

    def test_sampling_with_a_seed_repeats(self, model, tokenizer):
        options = GenerationOptions(max_new_tokens=8, do_sample=True, temperature=1.5, seed=3)
        first = generate_batch(model, tokenizer, PROMPTS[:2], options)
        assert generate_batch(model, tokenizer, PROMPTS[:2], options) == first


class TestEndTokens:
    def test_chat_end_of_turn_token_stops_answers(self, tokenizer):
        im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
        assert im_end in end_token_ids(tokenizer)

    def test_finish_cuts_at_the_end_token(self, tokenizer):
        words = tokenizer(" hello world", add_special_tokens=False)["input_ids"]
        end = tokenizer.convert_tokens_to_ids("<|im_end|>")
        g = _finish(tokenizer, words + [end, 5, 6], 7, GenerationOptions(max_new_tokens=len(words) + 3), {end})
        assert g == Generation(" hello world", 7, len(words) + 1, "stop")

    def test_finish_without_end_token_is_length(self, tokenizer):
        words = tokenizer(" hello world", add_special_tokens=False)["input_ids"]
        g = _finish(tokenizer, words, 1, GenerationOptions(max_new_tokens=len(words)), set())
        assert g.finish_reason == "length" and g.text == " hello world"


class TestStreaming:
    def test_stream_matches_batch(self, model, tokenizer):
        options = GenerationOptions(max_new_tokens=12)
        stream = stream_generate(model, tokenizer, PROMPTS[3], options)
        pieces = list(stream)
        [expected] = generate_batch(model, tokenizer, [PROMPTS[3]], options)
        assert "".join(pieces) == expected.text
        assert stream.generation == expected

    def test_stream_cuts_at_stop_string(self, model, tokenizer):
        [full] = generate_batch(model, tokenizer, [PROMPTS[0]], GenerationOptions(max_new_tokens=12))
        stop = full.text[len(full.text) // 2:][:3]
        options = GenerationOptions(max_new_tokens=12, stop=(stop,))
        stream = stream_generate(model, tokenizer, PROMPTS[0], options)
        assert "".join(stream) == full.text[:full.text.find(stop)] == stream.generation.text

    def test_closing_early_stops_the_model(self, model, tokenizer):
        with stream_generate(model, tokenizer, PROMPTS[0], GenerationOptions(max_new_tokens=500)) as stream:
            pass
        assert not stream._thread.is_alive()

    @pytest.mark.parametrize("pieces, stops, shown", [
        (["ab#", "#", "#cd"], ["###"], "ab"),
        (["ab#", "x", "yz"], ["###"], "ab#xyz"),
        (["hello", " wor", "ld"], ["wor"], "hello "),
        (["plain text"], [], "plain text"),
    ])
    def test_stop_scanner(self, pieces, stops, shown):
        scanner = StopScanner(stops)
        out = "".join(scanner.feed(p) for p in pieces) + scanner.flush()
        assert out == shown


def test_first_stop_finds_the_earliest():
    assert first_stop("a. b###c", ["###", "b"]) == 3
    assert first_stop("abc", ["x", ""]) is None


def test_load_plain_model_uses_auto_template(tiny_model_dir):
    generator = load_for_inference(str(tiny_model_dir), precision="fp32")
    assert generator.template.name == "auto"
    prompt = generator.render("Hi")
    assert "Hi" in prompt
    [g] = generator.generate([prompt], GenerationOptions(max_new_tokens=3), batch_size=1)
    assert g.num_tokens <= 3


@pytest.mark.parametrize("bad", [dict(max_new_tokens=0), dict(temperature=0), dict(top_p=1.5), dict(stop="###")])
def test_invalid_options_are_refused(bad):
    from tunesmith.errors import GenerationError

    with pytest.raises(GenerationError, match=next(iter(bad))):
        GenerationOptions(**{"max_new_tokens": 4, **bad})


class TestFromConfig:
    def test_zero_temperature_is_greedy(self):
        options = GenerationOptions.from_config(DecodingConfig(max_new_tokens=7, stop=["###"]))
        assert options == GenerationOptions(max_new_tokens=7, do_sample=False, stop=("###",))

    def test_a_temperature_samples(self):
        options = GenerationOptions.from_config(DecodingConfig(temperature=0.7, top_p=0.9, seed=3))
        assert (options.do_sample, options.temperature, options.top_p, options.seed) == (True, 0.7, 0.9, 3)


def test_broken_run_info_is_a_run_error(tmp_path):
    (tmp_path / "config.yaml").write_text("{}\n")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "tunesmith.json").write_text(json.dumps({"base_model": "b", "template": {"name": "x"}}))
    with pytest.raises(RunError, match="invalid model or template"):
        load_for_inference(str(tmp_path))
    (tmp_path / "model" / "tunesmith.json").write_text("{not json")
    with pytest.raises(RunError, match="not valid JSON"):
        load_for_inference(str(tmp_path))


def test_empty_prompt_is_a_clear_error(model, tokenizer):
    from tunesmith.errors import GenerationError

    with pytest.raises(GenerationError, match="empty prompt"):
        generate_batch(model, tokenizer, ["", "hi"], GenerationOptions(max_new_tokens=2))
