"""The terminal loop of `tunesmith chat`: read a line, stream the answer; /reset, /system TEXT, /exit."""

from __future__ import annotations

import sys
from typing import Callable

HELP = "/reset starts over, /system TEXT sets the system prompt, /exit quits"


def _command(session, line: str, write: Callable[[str], object]) -> bool:
    """Carry out a /reset or /system line; False when the line is not one of those commands."""
    if line == "/reset":
        session.reset()
        write("(conversation cleared)\n")
        return True
    if line == "/system" or line.startswith("/system "):
        session.system = line[len("/system"):].strip() or None
        session.reset()
        write(f"(system prompt {'set' if session.system else 'cleared'}; conversation cleared)\n")
        return True
    return False


def _answer(session, line: str, write: Callable[[str], object]) -> None:
    """Stream the answer as it comes; Ctrl-C stops it, an error is shown and the conversation goes on."""
    from tunesmith.errors import TunesmithError

    try:
        for piece in session.ask(line):
            write(piece)
            sys.stdout.flush()
    except KeyboardInterrupt:
        write(" [stopped]")
    except TunesmithError as e:
        write(f"error: {e}")
    write("\n")


def chat_loop(session, read: Callable[[str], str] = input, write: Callable[[str], object] | None = None) -> None:
    """Talk with a `ChatSession` until /exit, /quit, end of input or Ctrl-C at the prompt."""
    write = write or sys.stdout.write
    generator = session.generator
    write(f"chatting with {generator.name} (template {generator.template.name}); {HELP}\n")
    while True:
        try:
            line = read(">>> ").strip()
        except (EOFError, KeyboardInterrupt):
            write("\n")
            return
        if not line:
            continue
        if line in ("/exit", "/quit"):
            return
        if not _command(session, line, write):
            _answer(session, line, write)
