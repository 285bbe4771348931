"""Generation: batching never changes an answer, answers stop where they should, streaming matches batching."""

from __future__ import annotations

import json

import pytest

from tunesmith.data.records import Message, Record
from tunesmith.errors import RunError
from tunesmith.use.generation import (Generation, GenerationOptions, StopScanner, _encode, _finish, as_prompt_record,
                                end_token_ids, first_stop, generate_batch, load_for_inference, locate_model,
                                stream_generate)

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
        assert generate_batch(model, tokenizer, [], GenerationOptions()) == []

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


class TestPromptRecord:
    def test_bare_prompt_becomes_a_user_turn(self):
        record = as_prompt_record("Hi")
        assert record.messages == (Message("user", "Hi"), Message("assistant", ""))

    def test_dict_messages(self):
        record = as_prompt_record([{"role": "system", "content": "S"}, {"role": "user", "content": "U"}])
        assert [m.role for m in record.messages] == ["system", "user", "assistant"]

    def test_record_passes_through(self):
        record = Record("f", 1, "qa", prompt="Q?")
        assert as_prompt_record(record) is record

    def test_conversation_must_end_with_the_user(self):
        with pytest.raises(ValueError, match="last message"):
            as_prompt_record([{"role": "user", "content": "U"}, {"role": "assistant", "content": "A"}])


class TestLocate:
    def test_plain_model_folder_has_no_run_info(self, tiny_model_dir):
        assert locate_model(str(tiny_model_dir)) == (None, None)

    def test_run_without_model_is_a_clear_error(self, tmp_path):
        (tmp_path / "config.yaml").write_text("{}\n")
        with pytest.raises(RunError, match="no trained model"):
            locate_model(str(tmp_path))

    def test_run_folder_points_at_its_model(self, tmp_path):
        (tmp_path / "config.yaml").write_text("{}\n")
        (tmp_path / "model").mkdir()
        (tmp_path / "model" / "tunesmith.json").write_text(json.dumps({"base_model": "b", "method": "lora"}))
        assert locate_model(str(tmp_path)) == (tmp_path / "model", {"base_model": "b", "method": "lora"})


def test_load_plain_model_uses_auto_template(tiny_model_dir):
    generator = load_for_inference(str(tiny_model_dir), precision="fp32")
    assert generator.template.name == "auto"
    prompt = generator.render("Hi")
    assert "Hi" in prompt
    [g] = generator.generate([prompt], GenerationOptions(max_new_tokens=3))
    assert g.num_tokens <= 3


class FakeGenerator:
    """Counts one token per word, answers "ok", so the context arithmetic of a chat is easy to follow."""

    context_length = 20

    def render(self, messages):
        return " ".join(m.content for m in messages)

    def count_tokens(self, prompt):
        return len(prompt.split())

    def stream(self, prompt, options):
        import contextlib

        self.last_prompt = prompt
        return contextlib.nullcontext(iter(["o", "k"]))


class TestChatSession:
    def test_answers_join_the_conversation(self):
        from tunesmith.use.generation import ChatSession

        session = ChatSession(FakeGenerator(), GenerationOptions(max_new_tokens=5))
        assert "".join(session.ask("one two")) == "ok"
        assert session.messages == [Message("user", "one two"), Message("assistant", "ok")]

    def test_oldest_exchanges_are_dropped_to_fit(self):
        from tunesmith.use.generation import ChatSession

        generator = FakeGenerator()
        session = ChatSession(generator, GenerationOptions(max_new_tokens=5), system="sys")
        for turn in ("a b c d e", "f g h i j", "k l m n o"):
            list(session.ask(turn))
        # budget 15 words: sys (1) + the latest exchange "f g h i j ok" (6) + "k l m n o" (5); "a b c d e ok" went
        assert generator.last_prompt == "sys f g h i j ok k l m n o"
        assert session.messages[0] == Message("user", "f g h i j")

    def test_a_message_too_long_for_the_context_is_an_error(self):
        from tunesmith.errors import GenerationError
        from tunesmith.use.generation import ChatSession

        session = ChatSession(FakeGenerator(), GenerationOptions(max_new_tokens=5))
        with pytest.raises(GenerationError, match="too long"):
            list(session.ask("w " * 30))
        assert session.messages == []

    def test_reset_forgets(self):
        from tunesmith.use.generation import ChatSession

        session = ChatSession(FakeGenerator(), GenerationOptions(max_new_tokens=5))
        list(session.ask("hi"))
        session.reset()
        assert session.messages == []


class TestPromptFiles:
    def test_reads_prompt_shapes(self, tmp_path):
        from tunesmith.use.generation import read_prompts

        path = tmp_path / "p.jsonl"
        path.write_text('{"prompt": "A?"}\n\n{"instruction": "Add", "input": "2+2"}\n'
                        '{"messages": [{"role": "user", "content": "Hi"}]}\n')
        rows = read_prompts(path)
        assert [r.prompt for _, r in rows[:2]] == ["A?", "Add"] and rows[1][1].input == "2+2"
        assert rows[2][1].messages[-1] == Message("assistant", "")
        assert [r.line for _, r in rows] == [1, 3, 4]

    def test_every_bad_line_is_named(self, tmp_path):
        from tunesmith.errors import DataError
        from tunesmith.use.generation import read_prompts

        path = tmp_path / "p.jsonl"
        path.write_text('{"prompt": 3}\n{oops\n{"messages": [{"role": "assistant", "content": "x"}]}\n')
        with pytest.raises(DataError) as info:
            read_prompts(path)
        assert [(p.line, p.field) for p in info.value.problems] == [(1, "prompt"), (2, None), (3, "messages")]


@pytest.mark.parametrize("bad", [dict(max_new_tokens=0), dict(temperature=0), dict(top_p=1.5), dict(stop="###")])
def test_invalid_options_are_refused(bad):
    from tunesmith.errors import GenerationError

    with pytest.raises(GenerationError, match=next(iter(bad))):
        GenerationOptions(**bad)


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
