"""Exception types the library raises for user mistakes.

The CLI turns every TunesmithError into one clear line and a non-zero exit code; anything else is a bug
and keeps its traceback. This module imports nothing so every other module can use it.
"""

from __future__ import annotations


class TunesmithError(Exception):
    """Base class: a problem the user can fix; its message is shown to them as is."""


class ConfigError(TunesmithError):
    """The configuration is invalid; the message lists every problem with key, value and fix."""

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        if len(self.problems) == 1:
            super().__init__(f"config error: {self.problems[0]}")
        else:
            body = "\n".join(f"  - {p}" for p in self.problems)
            super().__init__(f"config has {len(self.problems)} problems:\n{body}")


class DataProblem:
    """One problem in one record: where it is and what was expected."""

    __slots__ = ("file", "line", "field", "message")

    def __init__(self, file: str, line: int | None, field: str | None, message: str):
        self.file, self.line, self.field, self.message = file, line, field, message

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"

    def __repr__(self) -> str:
        return f"DataProblem({str(self)!r})"


class DataError(TunesmithError):
    """Input data is unreadable or invalid; carries every problem found (file, line, field).

    `hint` is the way on (which setting lets the data through, what to check), printed after the problems.
    """

    SHOWN = 20

    def __init__(self, problems: list[DataProblem] | DataProblem | str, file: str = "", line: int | None = None,
                 field: str | None = None, *, hint: str | None = None):
        self.hint = hint
        if isinstance(problems, str):
            problems = [DataProblem(file, line, field, problems)]
        elif isinstance(problems, DataProblem):
            problems = [problems]
        self.problems = list(problems)
        shown = [str(p) for p in self.problems[: self.SHOWN]]
        more = len(self.problems) - len(shown)
        if more > 0:
            shown.append(f"... and {more} more problems")
        head = "data error" if len(self.problems) == 1 else f"{len(self.problems)} data problems"
        message = (f"{head}:\n" + "\n".join(f"  {s}" for s in shown) if len(self.problems) > 1
                   else f"{head}: {shown[0]}")
        super().__init__(f"{message}\n{hint}" if hint else message)


class ModelError(TunesmithError):
    """A model or tokenizer cannot be found or loaded."""


class RunError(TunesmithError):
    """A run folder is missing, incomplete or inconsistent with what was asked."""


class TrainingError(TunesmithError):
    """Training cannot go on (non-finite loss, no data left, disk full...)."""


class TeacherError(TunesmithError):
    """A data generator's teacher answered nothing usable: every request failed. `report` is the run's summary."""

    def __init__(self, message: str, report: str = ""):
        super().__init__(message)
        self.report = report


class GenerationError(TunesmithError):
    """A prompt cannot be answered as asked (too long for the context, bad generation options)."""
