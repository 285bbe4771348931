"""`tunesmith serve` as a real process on a loopback port, driven by the official `openai` client."""

from __future__ import annotations

import concurrent.futures
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tunesmith.use.generation import Generation, GenerationOptions

openai = pytest.importorskip("openai")

API_KEY = "test-key-123"
MESSAGES = [{"role": "user", "content": "Tell me about the sea."}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(varied_model_dir, tmp_path_factory):
    """A served tiny model: (base_url, process, log file); the process is stopped after the module."""
    port = free_port()
    home = tmp_path_factory.mktemp("serve-home")
    log = open(home / "server.log", "w")
    env = {**os.environ, "TUNESMITH_HOME": str(home)}
    env.pop("TUNESMITH_API_KEY", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "tunesmith", "serve", str(varied_model_dir), "--port", str(port),
         "--api-key", API_KEY, "--max-tokens", "256", "--precision", "fp32"],  # compared with fp32 here
        stdout=log, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"server exited: {(home / 'server.log').read_text()}")
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("server did not start in time")
            time.sleep(0.3)
        yield f"{base}/v1", process, home / "server.log"
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server[0], api_key=API_KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def local(varied_model_dir):
    """The same model loaded in this process, to check the server answers exactly what generation gives."""
    from tunesmith.use.generation import load_for_inference

    return load_for_inference(str(varied_model_dir), precision="fp32")


@pytest.mark.parametrize("host, key, is_open", [("127.0.0.1", None, False), ("localhost", None, False),
                                               ("::1", None, False), ("0.0.0.0", None, True), ("0.0.0.0", "k", False)])
def test_only_a_network_address_without_a_key_is_open(host, key, is_open):
    from tunesmith.use.serve import Server

    assert Server(app=None, name="m", host=host, port=8000, api_key=key).is_open is is_open


def test_the_command_says_where_it_serves(server, varied_model_dir):
    url, _, log = server
    assert f"serving {varied_model_dir} at {url} (OpenAI-compatible" in log.read_text()


def test_models_lists_the_served_model(client, varied_model_dir):
    assert [m.id for m in client.models.list().data] == [str(varied_model_dir)]


def test_chat_completion_matches_local_generation(client, local):
    from tunesmith.use.generation import generate_batch

    reply = client.chat.completions.create(model="any", messages=MESSAGES, max_tokens=8)
    [expected] = generate_batch(local.model, local.tokenizer, [local.render(MESSAGES)],
                                GenerationOptions(max_new_tokens=8))
    choice = reply.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == expected.text
    assert choice.finish_reason == expected.finish_reason
    assert reply.usage.prompt_tokens == expected.num_prompt_tokens
    assert reply.usage.completion_tokens == expected.num_tokens
    assert reply.usage.total_tokens == expected.num_prompt_tokens + expected.num_tokens


def test_streamed_chat_arrives_in_pieces_before_the_end(client):
    start = time.monotonic()
    arrivals, pieces, finish, usage = [], [], None, None
    stream = client.chat.completions.create(model="any", messages=MESSAGES, max_tokens=40, stream=True,
                                            stream_options={"include_usage": True})
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        if not chunk.choices:
            continue
        if chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
            arrivals.append(time.monotonic())
        finish = chunk.choices[0].finish_reason or finish
    end = time.monotonic()
    assert len(pieces) > 3
    # the first piece came while the model was still producing the rest
    assert arrivals[0] - start < end - start and end - arrivals[0] > 0.2 * (end - start)
    full = client.chat.completions.create(model="any", messages=MESSAGES, max_tokens=40)
    assert "".join(pieces) == full.choices[0].message.content
    assert finish == full.choices[0].finish_reason
    assert usage.completion_tokens == full.usage.completion_tokens


def test_completion_with_n(client):
    reply = client.completions.create(model="any", prompt="Once upon a time", max_tokens=5, n=2)
    assert [c.index for c in reply.choices] == [0, 1]
    assert reply.choices[0].text == reply.choices[1].text  # greedy: both choices agree
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 10


def test_stop_string_cuts_the_answer(client):
    full = client.completions.create(model="any", prompt="Once upon a time", max_tokens=6).choices[0].text
    stop = full.split()[0]
    cut = client.completions.create(model="any", prompt="Once upon a time", max_tokens=6, stop=[stop])
    assert cut.choices[0].text == full[:full.find(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_wrong_api_key_gets_401(server):
    wrong = openai.OpenAI(base_url=server[0], api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        wrong.models.list()
    assert info.value.status_code == 401
    assert info.value.body["code"] == "invalid_api_key"
    assert httpx.get(f"{server[0]}/models").status_code == 401  # no key at all


def _post(server, body, **headers):
    return httpx.post(f"{server[0]}/chat/completions", content=body, timeout=60,
                      headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json", **headers})


def _assert_openai_error(response, status):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    return error


@pytest.mark.parametrize("body, param", [
    ("{not json", None),
    ("[1, 2]", None),
    (json.dumps({"model": "m", "messages": MESSAGES, "surprise": 1}), "surprise"),
    (json.dumps({"model": "m", "messages": "hello"}), "messages"),
    (json.dumps({"model": "m", "messages": [{"role": "robot", "content": "x"}]}), "messages.0.role"),
    (json.dumps({"model": "m", "messages": MESSAGES, "max_tokens": "many"}), "max_tokens"),
    (json.dumps({"model": "m", "messages": MESSAGES, "temperature": -1}), "temperature"),
    (json.dumps({"model": "m", "messages": []}), "messages"),
    (json.dumps({"messages": MESSAGES}), "model"),
    (json.dumps({"model": "m", "messages": MESSAGES + [{"role": "assistant", "content": "x"}]}), "messages"),
])
def test_malformed_body_gets_openai_error_shape(server, body, param):
    error = _assert_openai_error(_post(server, body), 400)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param


@pytest.mark.parametrize("extra, param", [
    ({"max_tokens": 100_000}, "max_tokens"),
    ({"n": 1000}, "n"),
    ({"messages": [{"role": "user", "content": "word " * 3000}]}, "messages"),
])
def test_limits_give_4xx(server, extra, param):
    body = json.dumps({"model": "m", "messages": MESSAGES, **extra})
    assert _assert_openai_error(_post(server, body), 400)["param"] == param


def test_empty_completion_prompt_gets_400(server):
    response = httpx.post(f"{server[0]}/completions", json={"model": "m", "prompt": ""}, timeout=60,
                          headers={"Authorization": f"Bearer {API_KEY}"})
    assert _assert_openai_error(response, 400)["param"] == "prompt"


def test_body_too_large_gets_413(server):
    _assert_openai_error(_post(server, b"x" * 2_000_000), 413)

    def chunks():  # no Content-Length: the limit is enforced while reading
        for _ in range(200):
            yield b"x" * 10_000
    _assert_openai_error(_post(server, chunks()), 413)


def test_unknown_route_gets_openai_error_shape(server):
    _assert_openai_error(httpx.get(f"{server[0]}/nothing", headers={"Authorization": f"Bearer {API_KEY}"}), 404)


def test_50_concurrent_requests_all_succeed(client):
    def ask(i):
        reply = client.chat.completions.create(model="any", messages=[{"role": "user", "content": f"q{i}"}],
                                               max_tokens=6)
        return reply.choices[0].message.content, reply.usage.completion_tokens

    with concurrent.futures.ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(ask, range(50)))
    assert len(results) == 50
    assert all(isinstance(text, str) and 1 <= tokens <= 6 for text, tokens in results)


def _rss_bytes(pid: int) -> int:
    try:
        import psutil

        return psutil.Process(pid).memory_info().rss
    except ImportError:
        pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.slow
def test_load_500_requests_50_concurrent(server):
    url, process, _ = server

    def ask(i):
        body = {"model": "m", "messages": [{"role": "user", "content": f"question {i % 37}"}], "max_tokens": 8,
                "stream": i % 5 == 0}
        with httpx.Client(timeout=300, headers={"Authorization": f"Bearer {API_KEY}"}) as http:
            response = http.post(f"{url}/chat/completions", json=body)
        complete = response.text.rstrip().endswith("[DONE]") if body["stream"] else "usage" in response.json()
        return response.status_code, complete

    with concurrent.futures.ThreadPoolExecutor(max_workers=50) as pool:
        list(pool.map(ask, range(100)))  # warm-up: allocator pools and caches reach their working size
        before = _rss_bytes(process.pid)
        started = time.monotonic()
        results = list(pool.map(ask, range(500)))
        elapsed = time.monotonic() - started
    after = _rss_bytes(process.pid)
    assert [s for s, _ in results if s >= 500] == []
    assert all(s == 200 and complete for s, complete in results)
    assert elapsed < 600
    assert after - before < 64 * 2**20, f"RSS grew {(after - before) / 2**20:.1f} MiB over 500 requests"


class FakeGenerator:
    """Stands in for a model in-process: renders by joining, one token per word."""

    name = "fake"
    context_length = 64
    model = tokenizer = None

    def render(self, messages):
        from tunesmith.data.prompts import as_prompt_record

        return " ".join(m.content for m in as_prompt_record(messages).messages)

    def count_tokens(self, prompt):
        return len(prompt.split())


def _json_values():
    from hypothesis import strategies as st

    scalars = st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats(allow_nan=False) | st.text()
    return st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                        | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)


def test_fuzzed_bodies_never_get_5xx(monkeypatch):
    """Whatever JSON a client sends, the answer is a normal reply or a 4xx in OpenAI's shape, never a 5xx."""
    from fastapi.testclient import TestClient
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from tunesmith.use import generation as generate
    from tunesmith.use.serve import create_app

    monkeypatch.setattr(generate, "generate_batch", lambda model, tokenizer, prompts, options: [
        Generation("ok", 1, 1, "stop") for _ in prompts])
    def either(plausible):  # mostly plausible values, so the fuzz reaches the code behind validation too
        return st.integers(0, 9).flatmap(lambda i: plausible if i < 9 else _json_values())

    text = st.text(max_size=40)
    message = st.fixed_dictionaries({"role": either(st.sampled_from(["user", "system", "assistant", "developer"])),
                                     "content": either(text | st.lists(st.fixed_dictionaries(
                                         {"type": st.just("text"), "text": text}), max_size=2))})
    sampling = {"max_tokens": either(st.integers(-5, 3000)), "temperature": either(st.floats(-1, 3)),
                "top_p": either(st.floats(-0.5, 1.5)), "n": either(st.integers(-1, 20)),
                "stream": either(st.booleans()), "stop": either(text | st.lists(text, max_size=6)),
                "seed": either(st.integers()), "user": either(text),
                "stream_options": either(st.fixed_dictionaries({"include_usage": st.booleans()}))}
    chat = st.fixed_dictionaries({"model": either(text), "messages": either(st.lists(message, max_size=4))},
                                 optional={**sampling, "max_completion_tokens": either(st.integers(-5, 3000))})
    completion = st.fixed_dictionaries({"model": either(text), "prompt": either(text | st.lists(text, max_size=9))},
                                       optional=sampling)
    body = st.one_of(chat.map(lambda b: ("/v1/chat/completions", b)),
                     completion.map(lambda b: ("/v1/completions", b)),
                     st.tuples(st.sampled_from(["/v1/chat/completions", "/v1/completions"]), _json_values()))

    with TestClient(create_app(FakeGenerator())) as http:
        @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
        @given(body)
        def check(request):
            path, data = request
            response = http.post(path, content=json.dumps(data), headers={"Content-Type": "application/json"})
            assert response.status_code < 500, (data, response.text)
            if response.status_code >= 400:
                assert set(response.json()["error"]) == {"message", "type", "param", "code"}

        check()
