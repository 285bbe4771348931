"""The chat-template fast path (a skeleton rendered once per conversation form) gives exactly Jinja's segments,
and falls back to Jinja where it could not; the spool's flat columns equal `full_example`."""

import json
import os
import random
import shutil

import pyarrow as pa
import pytest
from transformers import AutoTokenizer

from tunesmith.config import TemplateConfig, TokenizationConfig, load_config
from tunesmith.data import Message, Record
from tunesmith.prepare import spool, templates
from tunesmith.prepare.pipeline import prepare
from tunesmith.prepare.spool import _flat_columns, _flat_pieces
from tunesmith.prepare.templates import Segment, _chat_messages, _rendered_segments, render_segments
from tunesmith.prepare.tokenization import TokenizedRecord, full_example, group_pieces, tokenize_records
from tunesmith.runs import create_run

RECORDS = [
    Record("f", 1, "qa", prompt="2+2?", response="4"),
    Record("f", 2, "qa", prompt="  padded \n", response="\n answer with edges  "),
    Record("f", 3, "alpaca", prompt="Translate", input="Bonjour {{ x }} {% if %}", response="Hello ✓ ünï"),
    Record("f", 4, "qa", prompt="Who?", response="", system="You are terse."),
    Record("f", 5, "qa", prompt="", response="empty question"),
    Record("f", 6, "qa", prompt="has the end <|im_end|> token", response="ok"),
    Record("f", 7, "messages", messages=(Message("user", "Hi"), Message("assistant", "Hey"),
                                         Message("user", "More?"), Message("assistant", "Sure."))),
    Record("f", 8, "messages", messages=(Message("system", "Be kind."), Message("user", "a\ue000b"),
                                         Message("assistant", "c"))),
]


def jinja_segments(record, template, tokenizer):
    return _rendered_segments(_chat_messages(record, template), record, tokenizer)


@pytest.fixture
def fresh(monkeypatch):
    """No skeletons from earlier tests, so each test sees its forms built and verified from the start."""
    monkeypatch.setattr(templates, "_skeletons", templates.weakref.WeakKeyDictionary())


@pytest.mark.parametrize("system_prompt", [None, "Answer briefly."])
def test_fast_path_equals_jinja_beyond_the_verified_records(tokenizer, fresh, system_prompt):
    template = TemplateConfig(name="chat", system_prompt=system_prompt)
    for _ in range(templates.VERIFIED_RECORDS + 2):  # past the records compared to Jinja
        for record in RECORDS:
            assert render_segments(record, template, tokenizer) == jinja_segments(record, template, tokenizer)
    forms = templates._skeletons[tokenizer]
    assert forms and all(s is not None and s.verified == templates.VERIFIED_RECORDS for s in forms.values())


def test_the_skeleton_is_what_renders_a_record(tokenizer, fresh, monkeypatch):
    """Once verified, the record's text comes from the skeleton, not from Jinja."""
    template = TemplateConfig(name="chat")
    for i in range(templates.VERIFIED_RECORDS):
        render_segments(Record("f", i, "qa", prompt=f"q{i}", response="a"), template, tokenizer)
    monkeypatch.setattr(templates, "_rendered_segments", lambda *a: pytest.fail("Jinja rendered a record"))
    segments = render_segments(Record("f", 99, "qa", prompt="Why?", response="Because."), template, tokenizer)
    assert [s.text for s in segments] == [
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nWhy?<|im_end|>\n<|im_start|>assistant\n", "Because.<|im_end|>", "\n"]


def test_a_template_that_changes_contents_falls_back_to_jinja(tokenizer_dir, fresh):
    trimming = AutoTokenizer.from_pretrained(tokenizer_dir)
    trimming.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] | trim }}"
                              "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
                              "{% endif %}")
    template = TemplateConfig(name="chat")
    for record in RECORDS:
        assert render_segments(record, template, trimming) == jinja_segments(record, template, trimming)
    assert set(templates._skeletons[trimming].values()) == {None}


def test_a_difference_on_a_verified_record_switches_the_form_to_jinja(tokenizer, fresh, monkeypatch):
    template = TemplateConfig(name="chat")
    record = Record("f", 1, "qa", prompt="q", response="a")
    render_segments(record, template, tokenizer)
    monkeypatch.setattr(templates, "_fill", lambda segments, contents: [templates.Segment("wrong", False)])
    assert render_segments(record, template, tokenizer) == jinja_segments(record, template, tokenizer)
    assert list(templates._skeletons[tokenizer].values()) == [None]


@pytest.mark.parametrize("train_on", ["responses", "all"])
def test_spool_columns_equal_full_example(train_on):
    """The flat columns and lengths equal `full_example` and the `TokenizedRecord` properties record by record
    (empty pieces, records without a trainable piece, several trainable pieces)."""
    rng = random.Random(0)
    tokenized = []
    for _ in range(200):
        count = rng.randrange(1, 5)
        tokenized.append(TokenizedRecord(
            tuple(tuple(rng.randrange(49152) for _ in range(rng.randrange(6))) for _ in range(count)),
            tuple(rng.random() < 0.5 for _ in range(count))))
    tokenization = TokenizationConfig(train_on=train_on)
    ids, labels, prompt, response, answer = _flat_columns(
        [list(p) for t in tokenized for p in t.pieces], [f for t in tokenized for f in t.trainable],
        [len(t.pieces) for t in tokenized], tokenization)
    full = [full_example(t, tokenization) for t in tokenized]
    assert ids.type == labels.type == pa.list_(pa.int32())
    assert ids.to_pylist() == [i for i, _ in full]
    assert labels.to_pylist() == [lab for _, lab in full]
    assert prompt.tolist() == [t.prompt_tokens for t in tokenized]
    assert response.tolist() == [t.response_tokens for t in tokenized]
    assert answer.tolist() == [t.answer_start for t in tokenized]


@pytest.mark.parametrize("prefix", [(), (1,)])
def test_flat_pieces_put_the_prefix_where_group_pieces_does(prefix):
    rendered = [[Segment("a", False), Segment("b", True)], [Segment("c", True)], [Segment("d", False)]]
    ids = [[1, 5], [6], [7, 8], [1]]  # the first record starts with the prefix already, the last is the prefix
    pieces, trainable, counts = _flat_pieces(rendered, ids, prefix)
    grouped = group_pieces(rendered, ids, prefix)
    assert counts == [len(t.pieces) for t in grouped]
    assert [tuple(p) for p in pieces] == [p for t in grouped for p in t.pieces]
    assert trainable == [f for t in grouped for f in t.trainable]


def test_the_overlapped_spool_equals_tokenize_records(tmp_path, tokenizer, monkeypatch):
    """Chunks encoded in a thread while the next is rendered: the same ids, labels and lengths as
    `tokenize_records` record by record, in order, and the parallelism setting is as it was afterwards."""
    monkeypatch.setattr(spool, "SPOOL_RECORDS", 3)
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    template, tokenization = TemplateConfig(name="chat"), TokenizationConfig()
    records = RECORDS * 2
    written = spool.write_spool(tmp_path / "spool.arrow", [(0, False, iter(records))], tokenizer, template,
                                tokenization, seed=0, workers=1)
    expected = tokenize_records(records, tokenizer, template)
    table = pa.ipc.open_file(str(tmp_path / "spool.arrow")).read_all()
    assert table.column("input_ids").to_pylist() == [full_example(t, tokenization)[0] for t in expected]
    assert table.column("labels").to_pylist() == [full_example(t, tokenization)[1] for t in expected]
    assert written.prompt_tokens.tolist() == [t.prompt_tokens for t in expected]
    assert written.answer_start.tolist() == [t.answer_start for t in expected]
    assert written.batch_rows == [3] * (len(records) // 3) + ([len(records) % 3] if len(records) % 3 else [])
    assert os.environ["TOKENIZERS_PARALLELISM"] == "false"


def test_tokenizer_threads_are_on_inside_and_as_they_were_after(monkeypatch):
    monkeypatch.delenv("TOKENIZERS_PARALLELISM", raising=False)
    with spool.tokenizer_threads():
        assert os.environ["TOKENIZERS_PARALLELISM"] == "true"
    assert "TOKENIZERS_PARALLELISM" not in os.environ
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    with pytest.raises(KeyError), spool.tokenizer_threads():
        raise KeyError
    assert os.environ["TOKENIZERS_PARALLELISM"] == "false"


def _prepared_files(root) -> dict:
    """Every file of a prepared run by path, less what differs between any two runs."""
    files = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.name != "config.yaml":
            data = path.read_bytes()
            if path.name in ("manifest.json", "state.json"):  # a time, and the datasets library's random id
                data = json.dumps({k: v for k, v in json.loads(data).items()
                                   if k not in ("created", "_fingerprint")}).encode()
            files[str(path.relative_to(root))] = data
    return files


def test_two_worker_processes_write_the_same_preparation(tmp_path, tiny_model_dir, monkeypatch):
    """Forced small chunks, so the pool has several on a small file: the files are byte-identical to
    the one-process preparation (same examples, order, split, manifest, rejected records, statistics)."""
    rows = [{"question": f"Question {i}: what is {i} plus {i % 7}?" + (" with more words" * (i % 5)),
             "answer": f"It is {i + i % 7}."} for i in range(300)]
    rows[17] = {"question": "no answer here"}
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    monkeypatch.setattr(spool, "SPOOL_RECORDS", 32)
    results = {}
    for count in (1, 2):
        monkeypatch.setattr(spool, "SPOOL_WORKERS", count)
        config = load_config(None, [f"data.path={data}", f"model.name={tiny_model_dir}", "data.on_error=skip",
                                    f"output.runs_dir={tmp_path / 'runs'}", "output.name=prep",
                                    "split.test_size=0.1"])
        prepare(create_run(config), config.model, config.data, config.template, config.tokenization, config.split)
        results[count] = _prepared_files(tmp_path / "runs" / "prep")
        shutil.rmtree(tmp_path / "runs")  # the same folder for both: the manifest names it
    assert "rejected.jsonl" in results[1] and "prepared/train_records.jsonl" in results[1]
    assert results[2] == results[1]

