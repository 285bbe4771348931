"""Chat sessions fit the context window; `tunesmith chat` in a pseudo-terminal answers, remembers the
conversation, and forgets it on /reset."""

from __future__ import annotations

import contextlib
import os
import sys

import pytest

from tunesmith.cli.chat import chat_loop
from tunesmith.data.records import Message
from tunesmith.errors import GenerationError
from tunesmith.use.chat import ChatSession
from tunesmith.use.generation import GenerationOptions

PROMPT = ">>> "


class FakeGenerator:
    """Counts one token per word, answers "ok", so the context arithmetic of a chat is easy to follow."""

    context_length = 20
    name = "fake"
    template = type("Template", (), {"name": "qa"})()

    def render(self, messages):
        return " ".join(m.content for m in messages)

    def count_tokens(self, prompt):
        return len(prompt.split())

    def stream(self, prompt, options):
        self.last_prompt = prompt
        return contextlib.nullcontext(iter(["o", "k"]))


class TestChatSession:
    def test_answers_join_the_conversation(self):
        session = ChatSession(FakeGenerator(), GenerationOptions(max_new_tokens=5))
        assert "".join(session.ask("one two")) == "ok"
        assert session.messages == [Message("user", "one two"), Message("assistant", "ok")]

    def test_oldest_exchanges_are_dropped_to_fit(self):
        generator = FakeGenerator()
        session = ChatSession(generator, GenerationOptions(max_new_tokens=5), system="sys")
        for turn in ("a b c d e", "f g h i j", "k l m n o"):
            list(session.ask(turn))
        # budget 15 words: sys (1) + the latest exchange "f g h i j ok" (6) + "k l m n o" (5); "a b c d e ok" went
        assert generator.last_prompt == "sys f g h i j ok k l m n o"
        assert session.messages[0] == Message("user", "f g h i j")

    def test_a_message_too_long_for_the_context_is_an_error(self):
        session = ChatSession(FakeGenerator(), GenerationOptions(max_new_tokens=5))
        with pytest.raises(GenerationError, match="too long"):
            list(session.ask("w " * 30))
        assert session.messages == []

    def test_reset_forgets(self):
        session = ChatSession(FakeGenerator(), GenerationOptions(max_new_tokens=5))
        list(session.ask("hi"))
        session.reset()
        assert session.messages == []


def test_chat_loop_commands_and_errors():
    """The terminal loop without a terminal: commands change the session, an error is shown and the chat goes on."""
    generator = FakeGenerator()
    session = ChatSession(generator, GenerationOptions(max_new_tokens=5))
    lines = iter(["hi", "", "/system Be brief.", "there", "w " * 30, "/reset", "/exit", "never read"])
    written = []
    chat_loop(session, read=lambda prompt: next(lines), write=written.append)
    out = "".join(written)
    assert out.startswith("chatting with fake (template qa); /reset")
    assert "ok\n(system prompt set; conversation cleared)\nok\nerror: that message is too long" in out
    assert generator.last_prompt == "Be brief. there"
    assert out.endswith("(conversation cleared)\n") and session.messages == []


@pytest.fixture
def chat(varied_model_dir, tunesmith_home):
    pexpect = pytest.importorskip("pexpect")
    child = pexpect.spawn(sys.executable, ["-m", "tunesmith", "chat", str(varied_model_dir), "--max-new-tokens", "6",
                                           "--precision", "fp32"],
                          env={**os.environ, "TUNESMITH_HOME": str(tunesmith_home)}, encoding="utf-8", timeout=120)
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
    import pexpect

    from tunesmith.use.generation import load_for_inference

    first = ask(chat, "What is a lighthouse?")
    second = ask(chat, "Why is it tall?")
    assert ask(chat, "/reset").startswith("(conversation cleared)")
    again = ask(chat, "What is a lighthouse?")
    assert again == first  # greedy, and the earlier turns are gone

    # the second answer was written with the first exchange in the prompt
    generator = load_for_inference(str(varied_model_dir), precision="fp32")
    history = [{"role": "user", "content": "What is a lighthouse?"}, {"role": "assistant", "content": first[:-1]},
               {"role": "user", "content": "Why is it tall?"}]
    [expected] = generator.generate([generator.render(history)], GenerationOptions(max_new_tokens=6), batch_size=1)
    assert second == expected.text + "\n"

    # a system prompt starts a new conversation that carries it
    assert ask(chat, "/system You answer in French.").startswith("(system prompt set")
    with_system = generator.render([{"role": "system", "content": "You answer in French."},
                                    {"role": "user", "content": "What is a lighthouse?"}])
    [expected] = generator.generate([with_system], GenerationOptions(max_new_tokens=6), batch_size=1)
    assert ask(chat, "What is a lighthouse?") == expected.text + "\n"

    chat.sendline("/exit")
    chat.expect(pexpect.EOF)
    chat.close()
    assert chat.exitstatus == 0
