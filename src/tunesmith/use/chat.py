"""A conversation with a model that stays inside its context window; the terminal loop around it is the CLI's."""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

from tunesmith.data.records import Message
from tunesmith.errors import GenerationError

if TYPE_CHECKING:
    from tunesmith.use.generation import GenerationOptions, Generator


class ChatSession:
    """A conversation with a model, kept inside its context window by dropping the oldest turns first.

    `system` text goes in front of every prompt (the run's configured system prompt applies when none is set).
    """

    def __init__(self, generator: Generator, options: GenerationOptions, system: str | None = None):
        self.generator, self.options, self.system = generator, options, system
        self.messages: list[Message] = []

    def reset(self) -> None:
        self.messages = []

    def conversation(self) -> list[Message]:
        head = [Message("system", self.system)] if self.system else []
        return head + self.messages

    def fit(self) -> tuple[str, int]:
        """The prompt for the conversation so far and how many old messages had to go to leave room to answer.

        Raises:
            GenerationError: the latest message alone does not fit.
        """
        budget = self.generator.context_length - self.options.max_new_tokens
        dropped = 0
        while True:
            prompt = self.generator.render(self.conversation())
            if self.generator.count_tokens(prompt) <= budget:
                return prompt, dropped
            if len(self.messages) <= 1:
                self.messages = []
                raise GenerationError(f"that message is too long: with room for a {self.options.max_new_tokens}-token "
                                      f"answer it does not fit this model's {self.generator.context_length}-token "
                                      f"context")
            # drop the oldest exchange: a user turn and the answer that follows it
            cut = 2 if len(self.messages) > 2 and self.messages[1].role == "assistant" else 1
            self.messages = self.messages[cut:]
            dropped += cut

    def ask(self, text: str) -> Iterator[str]:
        """Stream the answer to `text`; the answer (even a cut-short one) joins the conversation."""
        self.messages.append(Message("user", text))
        prompt, _ = self.fit()
        pieces: list[str] = []
        try:
            with self.generator.stream(prompt, self.options) as stream:
                for piece in stream:
                    pieces.append(piece)
                    yield piece
        finally:
            self.messages.append(Message("assistant", "".join(pieces)))
