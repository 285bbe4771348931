"""Prepare: from the user's file to tokenized, masked train/test splits in the run folder.

The steps, in order: load records, split (or load `data.test_path`), load the tokenizer, resolve the template,
measure lengths, resolve `max_length`, encode, drop examples with nothing left to learn, save. Everything
goes into `<run>/prepared/` at once (built in a temporary folder, renamed into place), together with a
manifest whose hashes tell a later run whether the same inputs would give the same result, so re-running
reuses the prepared data instead of redoing it.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tunesmith.config import (DataConfig, ModelConfig, SplitConfig, TemplateConfig, TokenizationConfig,
                              config_hash)
from tunesmith.data import LoadedData, Record, load_records, prompt_key, record_to_dict
from tunesmith.errors import ConfigError, DataError, RunError
from tunesmith.prepare.manifest import MANIFEST_VERSION, Manifest
from tunesmith.prepare.templates import jinja_source
from tunesmith.runs import RunPaths, file_sha256

if TYPE_CHECKING:
    from tunesmith.prepare.tokenization import Measured

__all__ = ["Manifest", "PrepareResult", "check_data_paths", "load_prepared", "prepare", "preparation_hash"]

DROPPED_LISTED = 100
"""Dropped examples named one by one in the manifest (all are counted)."""


@dataclass(frozen=True)
class PrepareResult:
    """Where the prepared data is, its manifest, and whether an earlier preparation was reused."""

    paths: RunPaths
    manifest: Manifest
    reused: bool

    def summary_lines(self) -> list[str]:
        """What a person wants to know after preparing, one fact per line."""
        m = self.manifest
        counts, train, test = m.counts, m.tokens["train"], m.tokens["test"]
        lines = [
            f"{'reused' if self.reused else 'prepared'} {self.paths.prepared}"
            + (" (inputs unchanged since the last preparation)" if self.reused else ""),
            f"data: {m.source.path} ({m.shape}: {m.shape_reason}), template {m.template}",
            f"train: {counts.train} examples, {train.total} tokens, {train.loss} loss-bearing",
            f"test:  {counts.test} examples, {test.total} tokens, {test.loss} loss-bearing",
            f"max_length: {m.max_length} ({m.max_length_setting}; model context {m.model_context}), "
            f"{counts.truncated} examples truncated",
        ]
        if counts.skipped_invalid:
            lines.append(f"skipped {counts.skipped_invalid} invalid records (data.on_error=skip)")
        if counts.dropped:
            lines.append(f"dropped {counts.dropped} examples with no answer token left after truncation "
                         f"(listed in {self.paths.manifest.name}); raise tokenization.max_length to keep them")
        if counts.test_prompts_in_train:
            lines.append(f"warning: {counts.test_prompts_in_train} test prompts also appear in the training data")
        return lines


def preparation_hash(model: ModelConfig, data: DataConfig, template: TemplateConfig,
                     tokenization: TokenizationConfig, split: SplitConfig) -> str:
    """Hash of every setting that changes the prepared data (data content is hashed separately).

    The data paths are left out (the files' content hashes stand for them), a Jinja template file's text is in,
    and padding (applied per batch at training time) does not count.
    """
    parts = {
        "version": MANIFEST_VERSION,
        "model": model.model_dump(mode="json"),
        "data": data.model_dump(mode="json", exclude={"path", "test_path"}),
        "template": template.model_dump(mode="json"),
        "tokenization": tokenization.model_dump(mode="json", exclude={"padding_side"}),
        "split": split.model_dump(mode="json") if not data.test_path else None,
    }
    if template.name == "jinja":
        parts["jinja_text"] = jinja_source(template)[1]
    return config_hash(parts)


def check_data_paths(data: DataConfig) -> None:
    """The data paths are set and exist; callers check this before creating a run folder for them.

    Raises:
        ConfigError: no data path, or a path that does not exist.
    """
    if not data.path:
        raise ConfigError("data.path is not set: give the training data file (e.g. --set data.path=train.jsonl)")
    for key in ("path", "test_path"):
        value = getattr(data, key)
        if value and not Path(value).exists():
            raise ConfigError(f"data.{key}={value!r}: no such file or folder")


def _source(path: str) -> dict:
    return {"path": str(path), "sha256": file_sha256(path)}


def _reusable(paths: RunPaths, sources: dict, prep_hash: str) -> Manifest | None:
    """The existing manifest when it was made from the same inputs and its splits are all there."""
    try:
        manifest = Manifest.read(paths.manifest)
    except RunError:
        return None
    same = (manifest.version == MANIFEST_VERSION and manifest.config_hash == prep_hash
            and {"source": manifest.source.sha256, "test_source": manifest.test_source and manifest.test_source.sha256}
            == {k: (v or {}).get("sha256") for k, v in sources.items()})
    complete = all((paths.prepared / split / "dataset_info.json").is_file() for split in ("train", "test"))
    return manifest if same and complete else None


def _split(loaded: LoadedData, data: DataConfig, split: SplitConfig) -> tuple[list[Record], list[Record]]:
    from tunesmith.prepare.split import split_records

    if data.test_path:
        return loaded.records, load_records(data.test_path, data).records
    return split_records(loaded.records, split)


def _encode_split(records: list[Record], tokenized: list, tokenization: TokenizationConfig, max_length: int,
                  name: str) -> dict:
    """Encode one split; examples with no loss-bearing token left are dropped and named."""
    from tunesmith.prepare.tokenization import IGNORE_INDEX, build_example

    kept, examples, dropped = [], [], []
    for record, tok in zip(records, tokenized):
        example = build_example(tok, tokenization, max_length)
        if example is None:
            dropped.append({"split": name, "where": record.where,
                            "reason": f"no answer token left after truncation to max_length={max_length} "
                                      f"(prompt {tok.prompt_tokens} tokens, answer {tok.response_tokens})"})
            continue
        kept.append(record)
        examples.append(example)
    return {
        "records": kept, "examples": examples, "dropped": dropped,
        "truncated": sum(t.total_tokens > max_length for t in tokenized),
        "tokens": {"total": sum(len(e["input_ids"]) for e in examples),
                   "loss": sum(sum(label != IGNORE_INDEX for label in e["labels"][1:]) for e in examples)},
    }


def _save_split(folder: Path, name: str, encoded: dict) -> None:
    from datasets import Dataset, Features, List, Value

    features = Features({"input_ids": List(Value("int32")), "labels": List(Value("int32"))})
    columns = {key: [e[key] for e in encoded["examples"]] for key in ("input_ids", "labels")}
    Dataset.from_dict(columns, features=features).save_to_disk(str(folder / name))
    lines = "".join(json.dumps(record_to_dict(r), ensure_ascii=False) + "\n" for r in encoded["records"])
    (folder / f"{name}_records.jsonl").write_text(lines, encoding="utf-8")


def prepare(paths: RunPaths, model: ModelConfig, data: DataConfig, template: TemplateConfig,
            tokenization: TokenizationConfig, split: SplitConfig) -> PrepareResult:
    """Tokenize the configured data into `<run>/prepared/{train,test}` plus records and manifest.

    `paths` is the run folder, made by the caller (`tunesmith.runs.create_run`, which also saves the config);
    the sections are the only settings read. Re-running with the same data files and preparation settings
    reuses what is there (`reused=True`).

    Raises:
        ConfigError: no data path, or a template/split setting that cannot work with this data.
        DataError: the data is invalid (every problem listed).
        ModelError: the tokenizer cannot be loaded.
    """
    from tunesmith.prepare.tokenization import tokenize_for_model
    from tunesmith.runs import atomic_write_json

    check_data_paths(data)
    sources = {"source": _source(data.path), "test_source": _source(data.test_path) if data.test_path else None}
    prep_hash = preparation_hash(model, data, template, tokenization, split)
    manifest = _reusable(paths, sources, prep_hash)
    if manifest is not None:
        return PrepareResult(paths, manifest, reused=True)

    loaded = load_records(data.path, data)
    train, test = _split(loaded, data, split)
    if not train:
        raise DataError("no valid records to train on", file=data.path)
    measured = tokenize_for_model(train + test, model, template, tokenization)
    max_length = measured.max_length
    encoded = {"train": _encode_split(train, measured.tokenized[:len(train)], tokenization, max_length, "train"),
               "test": _encode_split(test, measured.tokenized[len(train):], tokenization, max_length, "test")}
    manifest = _manifest(sources, prep_hash, model, tokenization, loaded, measured, encoded,
                         test_prompts_in_train=_test_prompts_in_train(train, test))
    if not encoded["train"]["examples"]:
        raise ConfigError(f"no training example is left after truncation to max_length={max_length}: "
                          f"raise tokenization.max_length")
    _save(paths, encoded, manifest)
    atomic_write_json(paths.data_stats, data_statistics(train + test, measured.tokenized, train, test,
                                                        tokenization, max_length))
    return PrepareResult(paths, manifest, reused=False)


def _test_prompts_in_train(train: list[Record], test: list[Record]) -> int:
    train_prompts = {prompt_key(r) for r in train}
    return sum(prompt_key(r) in train_prompts for r in test)


def _manifest(sources: dict, prep_hash: str, model: ModelConfig, tokenization: TokenizationConfig,
              loaded: LoadedData, measured: Measured, encoded: dict, test_prompts_in_train: int) -> Manifest:
    """The typed manifest of one preparation: what was made from what, with every count."""
    dropped = encoded["train"]["dropped"] + encoded["test"]["dropped"]
    return Manifest.model_validate({
        "version": MANIFEST_VERSION,
        **sources,
        "config_hash": prep_hash,
        "model": model.name,
        "template": measured.template,
        "shape": loaded.shape,
        "shape_reason": loaded.reason,
        "max_length": measured.max_length,
        "max_length_setting": tokenization.max_length,
        "model_context": measured.model_context,
        "train_on": tokenization.train_on,
        "counts": {
            "records": len(loaded.records),
            "skipped_invalid": len(loaded.skipped),
            "train": len(encoded["train"]["examples"]),
            "test": len(encoded["test"]["examples"]),
            "truncated": encoded["train"]["truncated"] + encoded["test"]["truncated"],
            "dropped": len(dropped),
            "test_prompts_in_train": test_prompts_in_train,
        },
        "tokens": {split: encoded[split]["tokens"] for split in ("train", "test")},
        "dropped": dropped[:DROPPED_LISTED],
        "skipped_invalid": [str(p) for p in loaded.skipped[:DROPPED_LISTED]],
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    })


def _save(paths: RunPaths, encoded: dict, manifest: Manifest) -> None:
    """Both splits and the manifest into `<run>/prepared/`, all at once (built aside, renamed into place)."""
    import datasets

    from tunesmith.runs import atomic_dir, atomic_write_json

    progress_was_off = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        with atomic_dir(paths.prepared) as tmp:
            for split in ("train", "test"):
                _save_split(tmp, split, encoded[split])
            atomic_write_json(tmp / "manifest.json", manifest.to_dict())
    finally:
        if not progress_was_off:
            datasets.enable_progress_bars()


def data_statistics(records: list[Record], tokenized: list, train: list[Record], test: list[Record],
                    tokenization: TokenizationConfig, max_length: int) -> dict:
    """What `data inspect` would say about the run's data, plus train/test overlap, for the report."""
    from tunesmith.data.stats import compute_stats, overlap

    lengths = [(t.prompt_tokens, t.response_tokens) for t in tokenized]
    stats = compute_stats(records, lengths, max_length, tokenization.truncation_side).to_dict()
    return {**stats, "overlap": asdict(overlap(train, test))}


def load_prepared(paths: RunPaths):
    """(train, test, manifest) of a prepared run, as `datasets.Dataset`s with `input_ids` and `labels`.

    Raises:
        RunError: the run has no complete prepared data.
    """
    from datasets import load_from_disk

    manifest = Manifest.read(paths.manifest)
    try:
        return load_from_disk(str(paths.prepared / "train")), load_from_disk(str(paths.prepared / "test")), manifest
    except (OSError, ValueError) as e:
        raise RunError(f"{paths.root}: no complete prepared data ({type(e).__name__}); "
                       f"run `tunesmith data prepare CONFIG` first") from None
