"""`tunesmith chat` in a pseudo-terminal: it answers, remembers the conversation, and forgets it on /reset."""

from __future__ import annotations

import os
import sys

import pytest

pexpect = pytest.importorskip("pexpect")

PROMPT = ">>> "


@pytest.fixture
def chat(varied_model_dir, tunesmith_home):
    child = pexpect.spawn(sys.executable, ["-m", "tunesmith", "chat", str(varied_model_dir), "--max-new-tokens", "6"],
                          env={**os.environ, "TUNESMITH_HOME": str(tunesmith_home), "TUNESMITH_FORCE_FP32": "1"},
                          encoding="utf-8", timeout=120)
    child.expect("chatting with")
    child.expect_exact(PROMPT)
    yield child
    if child.isalive():
        child.terminate(force=True)


def ask(child, text: str) -> str:
    child.sendline(text)
    child.expect_exact(PROMPT)
    # the terminal echoes the line we typed; the answer follows it
    return child.before.replace("\r\n", "\n").split(text + "\n", 1)[1]


def test_two_turns_reset_system_exit(chat, varied_model_dir):
    from tunesmith.use.generation import GenerationOptions, load_for_inference

    first = ask(chat, "What is a lighthouse?")
    second = ask(chat, "Why is it tall?")
    assert ask(chat, "/reset").startswith("(conversation cleared)")
    again = ask(chat, "What is a lighthouse?")
    assert again == first  # greedy, and the earlier turns are gone

    # the second answer was written with the first exchange in the prompt
    generator = load_for_inference(str(varied_model_dir), precision="fp32")
    history = [{"role": "user", "content": "What is a lighthouse?"}, {"role": "assistant", "content": first[:-1]},
               {"role": "user", "content": "Why is it tall?"}]
    [expected] = generator.generate([generator.render(history)], GenerationOptions(max_new_tokens=6))
    assert second == expected.text + "\n"

    # a system prompt starts a new conversation that carries it
    assert ask(chat, "/system You answer in French.").startswith("(system prompt set")
    with_system = generator.render([{"role": "system", "content": "You answer in French."},
                                    {"role": "user", "content": "What is a lighthouse?"}])
    [expected] = generator.generate([with_system], GenerationOptions(max_new_tokens=6))
    assert ask(chat, "What is a lighthouse?") == expected.text + "\n"

    chat.sendline("/exit")
    chat.expect(pexpect.EOF)
    chat.close()
    assert chat.exitstatus == 0
