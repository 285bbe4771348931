"""A scripted OpenAI-compatible teacher for the data-generation tests, run as a real HTTP server process.

    python tests/datagen/fake_teacher.py --mode good [--delay 0.2]   # prints the port it listens on, then serves

Modes:
- good: well-formed answers read off the prompt: self-instruct tasks (fresh ones plus planted trouble: a
  near-duplicate, an exact copy of a shown seed, an image task, a malformed item), fenced JSON question/answer
  pairs (plus a near-duplicate question and a malformed item; questions with "unverified" are graded
  ungrounded), and grading verdicts;
- garbage: a valid chat completion whose text is nonsense;
- error500: HTTP 500 every time; flaky: 500 then 429 (Retry-After: 0) then good, in turn;
- badbody: HTTP 200 whose body is not JSON; unauthorized: HTTP 401;
- slow: like good, after sleeping --delay seconds (also used with good-mode answers to slow a run down);
- cutoff: a good self-instruct answer cut off inside its last task's output, finish_reason "length";
- maxtokens: like good, but a request asking for more than 300 `max_tokens` gets the 400 `tunesmith serve` sends
  (OpenAI's error body, the maximum stated in the message); toolong: that 400 whatever is asked.
GET /stats returns {"requests": N, "max_tokens": [...]} (chat requests received, the max_tokens each asked for);
GET /v1/models lists one model.
Only binds 127.0.0.1. Standard library only, so it starts in a fraction of a second.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SYLLABLES = ["ka", "lo", "mi", "ner", "tu", "sa", "bre", "dol", "fi", "gan", "hu", "jo", "pel", "qui", "ros",
             "tev", "ul", "vo", "wim", "zar", "en", "ob", "ix", "yal"]
MAX_TOKENS = 300
"""The server's limit in the maxtokens and toolong modes."""
VERBS = ["Explain", "Describe", "Summarize", "List", "Compare", "Classify", "Rewrite", "Translate", "Outline",
         "Evaluate", "Name", "Suggest"]


class State:
    def __init__(self, mode: str, delay: float):
        self.mode, self.delay = mode, delay
        self.requests = 0
        self.max_tokens: list[int | None] = []
        self.lock = threading.Lock()
        self.rng = random.Random(1234)

    def next_request(self, max_tokens: int | None) -> int:
        with self.lock:
            self.requests += 1
            self.max_tokens.append(max_tokens)
            return self.requests

    def words(self, count: int) -> list[str]:
        with self.lock:
            return ["".join(self.rng.choice(SYLLABLES) for _ in range(3)) for _ in range(count)]


def self_instruct_answer(state: State, prompt: str) -> str:
    first, last = map(int, re.search(r"Now write tasks (\d+) to (\d+)", prompt).groups())
    shown = re.findall(r"^\d+\. Instruction: (.+)$", prompt, re.MULTILINE)
    items = []
    for _ in range(last - first + 1):
        verb = VERBS[state.rng.randrange(len(VERBS))]
        items.append((f"{verb} the {' '.join(state.words(6))}.", "<noinput>", " ".join(state.words(8)) + "."))
    fresh = items[0][0]
    items.append((fresh.rstrip(".") + " today.", "<noinput>", "A near-duplicate of an earlier task."))
    items.append((shown[0], "<noinput>", "An exact copy of a seed task."))
    items.append((f"Draw a picture of the {state.words(1)[0]} garden.", "<noinput>", "Cannot be done in text."))
    text = "Here are the new tasks you asked for!\n\n"
    for number, (instruction, given, output) in enumerate(items, start=first):
        text += (f"###\n{number}. **Instruction:** {instruction}\n{number}. Input:\n{given}\n"
                 f"{number}. Output:\n{output}\n")
    return text + f"###\n{first + len(items)}. Instruction: A task whose output was forgotten.\n"


def qa_answer(state: State, prompt: str) -> str:
    count = int(re.search(r"Write (\d+) question-and-answer pairs", prompt).group(1))
    pairs = [{"question": f"What does the {' '.join(state.words(4))} do?", "answer": " ".join(state.words(6))}
             for _ in range(count)]
    if count > 1:
        pairs[1]["question"] = pairs[1]["question"].replace("What does", "What unverified claim does")
    pairs.append({"question": pairs[0]["question"].replace("?", " now?"), "answer": "A near-duplicate."})
    pairs.append({"question": 42})
    return "Sure, here they are:\n```json\n" + json.dumps(pairs, indent=1) + "\n```\nLet me know if you need more."


def grade_answer(prompt: str) -> str:
    questions = re.findall(r"^\d+\. Question: (.+)$", prompt, re.MULTILINE)
    verdicts = [{"pair": i, "grounded": "unverified" not in q} for i, q in enumerate(questions, start=1)]
    return json.dumps(verdicts)


def good_answer(state: State, prompt: str) -> str:
    if "Now write tasks" in prompt:
        return self_instruct_answer(state, prompt)
    if "Check question-and-answer pairs" in prompt:
        return grade_answer(prompt)
    if "question-and-answer pairs" in prompt:
        return qa_answer(state, prompt)
    return "I do not know this kind of request."


def completion(text: str, prompt: str, finish_reason: str = "stop") -> dict:
    return {"id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()), "model": "fake-teacher",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason}],
            "usage": {"prompt_tokens": len(prompt.split()), "completion_tokens": len(text.split()),
                      "total_tokens": len(prompt.split()) + len(text.split())}}


class Handler(BaseHTTPRequestHandler):
    state: State

    def log_message(self, *args):  # keep test output clean
        pass

    def _send(self, status: int, body: bytes, content_type: str = "application/json", headers=None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the client timed out or was killed: expected here
            pass

    def do_GET(self):
        if self.path == "/stats":
            stats = {"requests": self.state.requests, "max_tokens": self.state.max_tokens}
            self._send(200, json.dumps(stats).encode())
        elif self.path.rstrip("/").endswith("/models"):
            models = {"object": "list", "data": [{"id": "fake-teacher", "object": "model"}]}
            self._send(200, json.dumps(models).encode())
        else:
            self._send(404, b'{"error": "not found"}')

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        if not self.path.endswith("/chat/completions"):
            return self._send(404, b'{"error": "not found"}')
        number = self.state.next_request(body.get("max_tokens"))
        prompt = body["messages"][-1]["content"]
        mode = self.state.mode
        if self.state.delay:
            time.sleep(self.state.delay)
        if mode == "toolong" or (mode == "maxtokens" and (body.get("max_tokens") or 0) > MAX_TOKENS):
            error = {"message": f"max_tokens={body.get('max_tokens')} is more than this server allows ({MAX_TOKENS})",
                     "type": "invalid_request_error", "param": "max_tokens", "code": None}
            return self._send(400, json.dumps({"error": error}).encode())
        if mode == "error500" or (mode == "flaky" and number % 3 == 1):
            return self._send(500, b'{"error": {"message": "internal error"}}')
        if mode == "flaky" and number % 3 == 2:
            return self._send(429, b'{"error": {"message": "slow down"}}', headers={"Retry-After": "0"})
        if mode == "unauthorized":
            return self._send(401, b'{"error": {"message": "invalid api key"}}')
        if mode == "badbody":
            return self._send(200, b"<html>proxy error</html>", "text/html")
        finish_reason = "stop"
        if mode == "garbage":
            text = "zxq " * 20 + "}{ ][ 1. Instr"
        elif mode == "cutoff":
            text = good_answer(self.state, prompt)
            text, finish_reason = text[:text.rindex("###")].rstrip()[:-8], "length"
        else:
            text = good_answer(self.state, prompt)
        self._send(200, json.dumps(completion(text, prompt, finish_reason)).encode())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", default="good",
                        choices=["good", "garbage", "error500", "flaky", "badbody", "unauthorized", "slow", "cutoff",
                                 "maxtokens", "toolong"])
    parser.add_argument("--delay", type=float, default=0.0)
    args = parser.parse_args()
    Handler.state = State(args.mode, args.delay)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    sys.exit(0)


if __name__ == "__main__":
    main()
