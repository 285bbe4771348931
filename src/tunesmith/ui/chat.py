"""Chat with a run's models from the browser: a few loaded sessions kept warm, answers streamed as events.

Each (run, base|finetuned) pair has one `ChatSession` from `api.open_chat` (the run's template, its history kept
inside the context window); a lock lets one answer at a time use it. Loading a model takes seconds, so the
least recently used session is dropped once `MAX_SESSIONS` are open.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Iterator

from tunesmith.errors import TunesmithError

MAX_SESSIONS = 4
WHICH = ("finetuned", "base")


def sse(event: str, data) -> str:
    """One server-sent event: `event: NAME` and its data as one JSON line."""
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


class ChatRooms:
    """The open chat sessions, by (run folder, which model)."""

    def __init__(self):
        self.sessions: OrderedDict[tuple[Path, str], tuple[object, threading.Lock]] = OrderedDict()
        self.guard = threading.Lock()

    def session(self, root: Path, which: str, max_new_tokens: int):
        """The open session for this run and model, loaded on first use (which takes a while)."""
        from tunesmith import api
        from tunesmith.config import ChatConfig

        key = (root, which)
        with self.guard:
            if key in self.sessions:
                self.sessions.move_to_end(key)
                return self.sessions[key]
        session = api.open_chat(str(root), ChatConfig(max_new_tokens=max_new_tokens), None, which)
        with self.guard:
            entry = self.sessions.setdefault(key, (session, threading.Lock()))
            while len(self.sessions) > MAX_SESSIONS:
                self.sessions.popitem(last=False)
            return entry

    def stream(self, root: Path, which: str, text: str, system: str | None, reset: bool,
               max_new_tokens: int) -> Iterator[str]:
        """Events for one answer: `loading`, then `piece`s, then `done` (or `error` with the message)."""
        yield sse("loading", {"which": which})
        try:
            session, lock = self.session(root, which, max_new_tokens)
            with lock:
                if reset:
                    session.reset()
                session.system = system or None
                session.options = _with_max_new_tokens(session.options, max_new_tokens)
                count = 0
                for piece in session.ask(text):
                    count += 1
                    yield sse("piece", {"text": piece})
            yield sse("done", {"pieces": count})
        except TunesmithError as e:
            yield sse("error", {"error": str(e)})

    def forget(self, root: Path) -> None:
        """Close a run's sessions (its model changed: training resumed)."""
        with self.guard:
            for key in [k for k in self.sessions if k[0] == root]:
                del self.sessions[key]


def _with_max_new_tokens(options, max_new_tokens: int):
    import dataclasses

    if dataclasses.is_dataclass(options) and getattr(options, "max_new_tokens", None) != max_new_tokens:
        return dataclasses.replace(options, max_new_tokens=max_new_tokens)
    return options
