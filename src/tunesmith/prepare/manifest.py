"""The manifest of a prepared run: what was prepared from what, typed, so no stage reads it as a loose dict.

It is written once by the prepare pipeline as `prepared/manifest.json` and read back by training (the resolved
`max_length`, the template, what carries a loss), evaluation and the report. Its hashes let a later preparation
tell whether the same inputs would give the same result.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from tunesmith.errors import RunError

MANIFEST_VERSION = 1
"""Bumped whenever prepared data would come out differently from the same inputs."""


class _Part(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SourceFile(_Part):
    """A data file and the SHA-256 of its content (the content, not the path, decides reuse)."""

    path: str
    sha256: str


class SourceCounts(_Part):
    """One training source of a preparation (`data.path`, or one of `data.sources`): its files and what it gave."""

    path: str
    sha256: str
    test_path: str | None = None
    test_sha256: str | None = None
    weight: float | None = None
    max_records: int | None = None
    records: int
    """Valid records of its training file."""
    skipped_invalid: int = 0
    train: int
    """Its examples in the (mixed) training set."""
    test: int
    share: float
    """Its share of the training set: `train` / all training examples."""


class Counts(_Part):
    """How many records went where."""

    records: int
    skipped_invalid: int
    train: int
    test: int
    truncated: int
    dropped: int
    test_prompts_in_train: int = 0


class TokenCounts(_Part):
    """Tokens of one split: all of them, and those that carry a loss."""

    total: int
    loss: int


class StrippedTemplate(_Part):
    """A template that was baked into the prompts and removed before templating (`data.strip_template`)."""

    form: str
    """Which one: qa, alpaca, chatml or inst (`tunesmith.data.strip.STRIPPERS`); prompts sent to the trained model
    in the same form can be stripped the same way (`tunesmith.data.strip.strip_prompt`)."""
    records: int
    """Training-file records it was removed from."""
    setting: str
    """`data.strip_template` that removed it: auto or true."""


class Manifest(_Part):
    """`prepared/manifest.json`: the resolved preparation of a run."""

    version: int = MANIFEST_VERSION
    source: SourceFile
    test_source: SourceFile | None = None
    """The first source's files (`source`, `test_source`); `sources` lists every source with its counts."""
    sources: list[SourceCounts] = []
    config_hash: str
    model: str
    template: str
    """The template actually used (`auto` resolved to `chat` or `alpaca`)."""
    shape: str
    shape_reason: str
    max_length: int
    """The resolved maximum length in tokens (`max_length: auto` made a number)."""
    max_length_setting: int | str
    model_context: int
    train_on: str
    counts: Counts
    tokens: dict[str, TokenCounts]
    dropped: list[dict] = []
    """The first examples dropped for having no answer token left, each with split, where and reason."""
    skipped_invalid: list[str] = []
    stripped_template: StrippedTemplate | None = None
    """The baked-in template removed from the prompts; None when none was (and in older manifests)."""
    warnings: list[str] = []
    """What the preparation warned about (skipped invalid records), shown again whenever it is reused."""
    created: str

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")

    @classmethod
    def read(cls, path: str | Path) -> Manifest:
        """The manifest stored at `path`.

        Raises:
            RunError: the file is missing, unreadable or not a manifest of this version.
        """
        try:
            return cls.model_validate_json(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError, ValidationError) as e:
            raise RunError(f"{path}: no readable manifest of prepared data ({type(e).__name__}); "
                           f"run `tunesmith data prepare CONFIG` again") from None
