"""The LLM judge: parsing verdicts, the cache, failures recorded as `unknown`, and a whole eval judged by
`tunesmith serve` running a scripted model, its grades in the report."""

from __future__ import annotations

import json
import re

import pytest

from servers import tunesmith_serve
from test_run import trained_run  # noqa: F401  (the fixture: a run folder with a prepared test split)

from tunesmith.datagen.teachers import TeacherFailure, TeacherReply
from tunesmith.errors import ConfigError
from tunesmith.evaluate.judge import Verdict, cache_key, judge_answers, judge_prompt, parse_verdict


class TestParseVerdict:
    @pytest.mark.parametrize("reply, grade, reason", [
        ('{"grade": "correct", "reason": "same box number"}', "correct", "same box number"),
        ('Sure!\n```json\n{"grade": "Wrong", "reason": "names the kettle"}\n```', "wrong", "names the kettle"),
        ("Grade: partially correct\nReason: the price is right, the size is not.", "partly",
         "the price is right, the size is not."),
        ("Incorrect - it swaps the two products.", "wrong", "it swaps the two products."),
        ("Partly: right box, wrong shelf", "partly", "right box, wrong shelf"),
    ])
    def test_grades_in_the_shapes_judges_write(self, reply, grade, reason):
        assert parse_verdict(reply) == Verdict(grade, reason)

    @pytest.mark.parametrize("reply", ["", "I am not sure what you mean.", '{"grade": "great", "reason": "x"}'])
    def test_a_reply_without_a_grade_is_unknown_with_the_raw_reply(self, reply):
        verdict = parse_verdict(reply)
        assert verdict.grade == "unknown" and verdict.raw == reply[:500]


class ScriptedJudge:
    """A `Teacher` in-process: replies (or failures) by answer text, counting what it was asked."""

    name = "scripted @ memory"
    concurrency = 2

    def __init__(self, replies: dict[str, str | None], refuse_after: int | None = None):
        self.replies, self.refuse_after, self.asked = replies, refuse_after, []

    def complete_many(self, prompts):
        for index, prompt in enumerate(prompts):
            if self.refuse_after is not None and len(self.asked) >= self.refuse_after:
                raise ConfigError("judge answered HTTP 401 (bad key)")
            self.asked.append(prompt)
            answer = prompt.split("Answer to grade:\n", 1)[1].split("\n", 1)[0]
            reply = self.replies[answer]
            yield index, TeacherFailure("timed out after 1 s", 3) if reply is None else TeacherReply(reply, "stop")


QUESTIONS, REFERENCES = ["Size of the Wren?", "Size of the Siskin?"], ["1.7 litres.", "Four waffles."]


def test_verdicts_are_cached_by_prompt_answer_and_judge(tmp_path):
    cache = tmp_path / "eval" / "judge_cache.jsonl"
    judge = ScriptedJudge({"1.7 litres.": '{"grade": "correct", "reason": "same"}',
                           "Two waffles.": "Wrong: two, not four", "4 waffles": "no idea"})
    verdicts, counts = judge_answers(judge, QUESTIONS, REFERENCES, ["1.7 litres.", "Two waffles."], cache)
    assert [v.grade for v in verdicts] == ["correct", "wrong"] and counts["asked"] == 2 and counts["cached"] == 0
    assert len(cache.read_text().splitlines()) == 2

    # the same answers again: nothing asked; a changed answer is asked; an unknown verdict is not cached
    again, counts = judge_answers(judge, QUESTIONS, REFERENCES, ["1.7 litres.", "4 waffles"], cache)
    assert [v.grade for v in again] == ["correct", "unknown"] and counts == {
        "judge": judge.name, "asked": 1, "cached": 1, "failed": 0}
    assert again[1].raw == "no idea" and len(cache.read_text().splitlines()) == 2

    other = ScriptedJudge(judge.replies)
    other.name = "another @ memory"  # another judge does not reuse these verdicts
    assert judge_answers(other, QUESTIONS, REFERENCES, ["1.7 litres.", "Two waffles."], cache)[1]["asked"] == 2
    assert cache_key(judge.name, judge_prompt("q", "r", "a")) != cache_key(judge.name, judge_prompt("q", "r2", "a"))


def test_failed_and_refused_requests_become_unknown_not_a_crash(tmp_path):
    judge = ScriptedJudge({"1.7 litres.": None, "Two waffles.": "Wrong."})
    verdicts, counts = judge_answers(judge, QUESTIONS, REFERENCES, ["1.7 litres.", "Two waffles."])
    assert verdicts[0] == Verdict("unknown", "no answer from the judge", "timed out after 1 s")
    assert verdicts[1].grade == "wrong" and counts["failed"] == 1

    refusing = ScriptedJudge({"1.7 litres.": "Correct.", "Two waffles.": "Wrong."}, refuse_after=1)
    verdicts, counts = judge_answers(refusing, QUESTIONS, REFERENCES, ["1.7 litres.", "Two waffles."])
    assert [v.grade for v in verdicts] == ["correct", "unknown"] and "401" in counts["error"]
    assert "401" in verdicts[1].raw


SCRIPT = "Partly: right box, wrong shelf"


def scripted_model(tokenizer_dir, folder, reply: str = SCRIPT):
    """A one-layer Llama that answers every chat prompt with `reply`, then ends: a scripted model to serve.

    Its layers add nothing to the residual, so each next token depends on the current token alone (a bigram
    table): the embedding of "\\n" (the last prompt token after `<|im_start|>assistant`) and of each reply token
    is a unit vector, and the output row of the token that should follow reads that vector.
    """
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    chain = [tokenizer.encode("\n")[-1]] + tokenizer.encode(reply) + [tokenizer.convert_tokens_to_ids("<|im_end|>")]
    assert len(set(chain)) == len(chain), "a bigram script needs every token once"
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False,
                         bos_token_id=1, eos_token_id=2, pad_token_id=2)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            parameter.fill_(1.0 if name.endswith("norm.weight") else 0.0)
        for position, (token, following) in enumerate(zip(chain, chain[1:])):
            model.model.embed_tokens.weight[token, position] = 1.0
            model.lm_head.weight[following, position] = 10.0
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_eval_judged_by_tunesmith_serve_shows_grades_in_the_report(trained_run, tokenizer_dir, tmp_path,  # noqa: F811
                                                                   capsys):
    from tunesmith import api
    from tunesmith.cli import main

    judge_model = scripted_model(tokenizer_dir, tmp_path / "judge-model")
    with tunesmith_serve(judge_model) as url:
        assert main(["eval", str(trained_run.root), "--judge-url", url]) == 0
        printed = capsys.readouterr().out

    assert re.search(r"judge: partly %\s+100\.0\s+100\.0", printed) and "3 answers graded" in printed
    assert f"@ {url}/chat/completions" in printed
    # base and finetuned are the same weights: the finetuned answers' verdicts came from the cache
    models = json.loads((trained_run.eval_dir / "metrics.json").read_text())["models"]
    assert models["base"]["judge"]["asked"] == 3 and models["finetuned"]["judge"]["cached"] == 3
    assert models["finetuned"]["judge"]["partly"] == 1.0
    rows = [json.loads(line) for line in (trained_run.eval_dir / "predictions.jsonl").read_text().splitlines()]
    assert all(row[m]["judge"] == {"grade": "partly", "reason": "right box, wrong shelf"}
               for row in rows for m in ("base", "finetuned"))
    assert len((trained_run.eval_dir / "judge_cache.jsonl").read_text().splitlines()) == 3

    report = api.build_report(str(trained_run.root)).read_text(encoding="utf-8")
    assert report.count("judge: <b>partly</b> · right box, wrong shelf") == 2 * 2 * 3  # worst + all, 2 models
    assert "<td>judged partly %</td><td>100.0%</td><td>100.0%</td>" in report


def test_judge_model_alone_is_refused(trained_run):  # noqa: F811
    from tunesmith import api

    with pytest.raises(ConfigError, match="--judge-url"):
        api.evaluate_run(str(trained_run.root), judge_model="gpt-x")
