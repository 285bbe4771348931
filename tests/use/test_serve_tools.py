"""Tool calling through `serve` with the official `openai` client: the request's tools are rendered by the real
template (the tiny model with the SmolLM2 tokenizer, so the shipped tool template), the model's output is
scripted, and `<tool_call>` blocks come back as OpenAI's `tool_calls`, streamed or not."""

from __future__ import annotations

import json

import pytest

from tunesmith.use.generation import Generation

openai = pytest.importorskip("openai")

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city now",
                                            "parameters": {"type": "object",
                                                           "properties": {"city": {"type": "string"}},
                                                           "required": ["city"]}}}
QUESTION = [{"role": "user", "content": "Weather in Oslo?"}]
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'


@pytest.fixture(scope="module")
def generator(tiny_model_dir):
    from tunesmith.use.generation import load_for_inference

    return load_for_inference(str(tiny_model_dir), precision="fp32")


@pytest.fixture
def scripted(monkeypatch):
    """The model's answers, in order, and the prompts it was given (the worker calls `generate_batch`)."""
    from tunesmith.use import generation

    answers: list[str] = []
    prompts: list[str] = []

    def generate_batch(model, tokenizer, batch, options):
        prompts.extend(batch)
        return [Generation(answers.pop(0), 10, 5, "stop") for _ in batch]

    monkeypatch.setattr(generation, "generate_batch", generate_batch)
    return answers, prompts


@pytest.fixture
def client(generator, scripted):
    from fastapi.testclient import TestClient

    from tunesmith.use.serve import create_app

    with TestClient(create_app(generator)) as http:
        yield openai.OpenAI(base_url="http://testserver/v1", api_key="none", http_client=http, max_retries=0)


def shipped_prompt(tokenizer, messages, tools) -> str:
    """The prompt the shipped tool template gives these messages, rendered by transformers directly."""
    from tunesmith.prepare.templates import shipped_tool_template

    return tokenizer.apply_chat_template(messages, tools=tools, chat_template=shipped_tool_template(),
                                         add_generation_prompt=True, tokenize=False)


def test_a_call_in_the_output_comes_back_as_tool_calls(client, scripted, generator):
    answers, prompts = scripted
    answers.append("Let me check.\n" + CALL)
    reply = client.chat.completions.create(model="m", messages=QUESTION, tools=[WEATHER])
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Let me check."
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    assert (call.function.name, json.loads(call.function.arguments)) == ("get_weather", {"city": "Oslo"})
    assert prompts == [shipped_prompt(generator.tokenizer, QUESTION, [WEATHER])]
    assert "<tools>\n" + json.dumps(WEATHER) + "\n</tools>" in prompts[0]


def test_the_tool_result_goes_back_and_the_answer_is_text(client, scripted, generator):
    answers, prompts = scripted
    answers += [CALL, "It is 21 C in Oslo."]
    first = client.chat.completions.create(model="m", messages=QUESTION, tools=[WEATHER])
    call = first.choices[0].message.tool_calls[0]
    messages = QUESTION + [first.choices[0].message,  # resent as the client got it
                           {"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 21}'}]
    second = client.chat.completions.create(model="m", messages=messages, tools=[WEATHER])
    assert second.choices[0].finish_reason == "stop"
    assert (second.choices[0].message.content, second.choices[0].message.tool_calls) == ("It is 21 C in Oslo.", None)
    rendered = [QUESTION[0], {"role": "assistant", "content": None, "tool_calls": [
        {"id": call.id, "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 21}'}]
    assert prompts[1] == shipped_prompt(generator.tokenizer, rendered, [WEATHER])
    assert prompts[1].endswith(CALL + "<|im_end|>\n<|im_start|>tool\n<tool_response>\n{\"temp_c\": 21}\n"
                                      "</tool_response><|im_end|>\n<|im_start|>assistant\n")


def test_tool_choice_none_shows_no_tools_and_reads_no_calls(client, scripted):
    answers, prompts = scripted
    answers.append(CALL)
    reply = client.chat.completions.create(model="m", messages=QUESTION, tools=[WEATHER], tool_choice="none")
    assert (reply.choices[0].message.content, reply.choices[0].finish_reason) == (CALL, "stop")
    assert "<tools>" not in prompts[0]


def test_without_tools_a_call_shaped_answer_is_text(client, scripted):
    scripted[0].append(CALL)
    assert client.chat.completions.create(model="m", messages=QUESTION).choices[0].message.content == CALL


def test_a_streamed_call_arrives_as_tool_call_deltas(client, scripted):
    scripted[0].append("Checking.\n" + CALL)
    chunks = list(client.chat.completions.create(model="m", messages=QUESTION, tools=[WEATHER], stream=True,
                                                 stream_options={"include_usage": True}))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    [call] = [t for d in deltas for t in d.tool_calls or ()]
    assert (call.index, call.type, call.function.name) == (0, "function", "get_weather")
    assert json.loads(call.function.arguments) == {"city": "Oslo"} and call.id.startswith("call_")
    assert "".join(d.content or "" for d in deltas) == "Checking."
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    assert chunks[-1].usage.completion_tokens == 5


def test_a_streamed_answer_without_a_call_is_text(client, scripted):
    scripted[0].append("It is sunny.")
    chunks = list(client.chat.completions.create(model="m", messages=QUESTION, tools=[WEATHER], stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "It is sunny."
    assert chunks[-1].choices[0].finish_reason == "stop"


@pytest.mark.parametrize("change,param,words", [
    ({"tool_choice": "required"}, "tool_choice", "not supported"),
    ({"messages": QUESTION + [{"role": "tool", "tool_call_id": "call_x", "content": "21"}]},
     "messages.1.tool_call_id", "answers no earlier call"),
    ({"messages": QUESTION + [{"role": "assistant", "content": None, "tool_calls": [{"id": "c", "type": "function",
                                "function": {"name": "get_weather", "arguments": "Oslo"}}]},
                              {"role": "tool", "tool_call_id": "c", "content": "21"}]},
     "messages.1.tool_calls.0.function.arguments", "not valid JSON"),
])
def test_refusals_are_400s_naming_the_field(client, change, param, words):
    body = {"model": "m", "messages": QUESTION, "tools": [WEATHER], **change}
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(**body)
    error = info.value.body
    assert error["param"] == param and words in error["message"]
