"""Prepare: from the user's file to tokenized, masked train/test splits in the run folder.

The steps, in order: load records (invalid ones skipped or refused as `data.on_error` says, the skipped kept in
`<run>/rejected.jsonl`), strip a baked-in template (`data.strip_template`), split (or load `data.test_path`), load
the tokenizer, resolve the template, measure lengths, resolve `max_length`, encode, drop examples with nothing left
to learn, save. Everything
goes into `<run>/prepared/` at once (built in a temporary folder, renamed into place), together with a
manifest whose hashes tell a later run whether the same inputs would give the same result, so re-running
reuses the prepared data instead of redoing it.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tunesmith.config import (DataConfig, ModelConfig, SplitConfig, TemplateConfig, TokenizationConfig,
                              config_hash)
from tunesmith.data import LoadedData, Record, load_records, prompt_key, record_to_dict
from tunesmith.data.strip import FORM_LABELS, Stripped, strip_record, strip_templates
from tunesmith.data.validate import AUTO_SKIP_PERCENT, Rejected
from tunesmith.errors import ConfigError, DataError, RunError
from tunesmith.prepare.manifest import MANIFEST_VERSION, Manifest
from tunesmith.prepare.templates import jinja_source
from tunesmith.runs import RunPaths, file_sha256

if TYPE_CHECKING:
    from tunesmith.prepare.tokenization import Measured

__all__ = ["Manifest", "PrepareResult", "check_data_paths", "load_prepared", "prepare", "preparation_hash",
           "strip_setting"]

DROPPED_LISTED = 100
"""Dropped examples named one by one in the manifest (all are counted)."""

SKIPPED_SHOWN = 5
"""Skipped records the warning names (all are in rejected.jsonl)."""


@dataclass(frozen=True)
class PrepareResult:
    """Where the prepared data is, its manifest, and whether an earlier preparation was reused."""

    paths: RunPaths
    manifest: Manifest
    reused: bool

    def notes(self) -> list[str]:
        """What training should tell the user before it starts: the warnings, and a stripped template."""
        m = self.manifest
        lines = [f"warning: {w}" for w in m.warnings]
        if m.stripped_template:
            lines.append(f"stripped the baked-in {FORM_LABELS[m.stripped_template.form]} template from "
                         f"{m.stripped_template.records:,} of {m.counts.records:,} prompts "
                         f"(data.strip_template: {m.stripped_template.setting})")
        return lines

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
        lines += self.notes()
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


def _same_inputs(manifest: Manifest, sources: dict, prep_hash: str) -> bool:
    """Whether `manifest` was made from these data files' content with these preparation settings."""
    return (manifest.version == MANIFEST_VERSION and manifest.config_hash == prep_hash
            and {"source": manifest.source.sha256, "test_source": manifest.test_source and manifest.test_source.sha256}
            == {k: (v or {}).get("sha256") for k, v in sources.items()})


def _reusable(paths: RunPaths, sources: dict, prep_hash: str) -> Manifest | None:
    """The existing manifest when it was made from the same inputs and its splits are all there."""
    try:
        manifest = Manifest.read(paths.manifest)
    except RunError:
        return None
    complete = all((paths.prepared / split / "dataset_info.json").is_file() for split in ("train", "test"))
    return manifest if _same_inputs(manifest, sources, prep_hash) and complete else None


def _checkpoints_on_other_data(paths: RunPaths, sources: dict, prep_hash: str, fresh_start: bool) -> bool:
    """Whether the run has checkpoints trained on a preparation these inputs would replace; they are what a
    `--resume` continues, so new data must not slide in under them.

    A run without a readable manifest has nothing to compare (training checks each checkpoint's fingerprint).

    Raises:
        RunError: there are such checkpoints and the caller does not start the training over (`fresh_start`).
    """
    folders = sorted(p.name for p in paths.checkpoints.glob("*") if p.is_dir()) if paths.checkpoints.is_dir() else []
    try:
        changes = bool(folders) and not _same_inputs(Manifest.read(paths.manifest), sources, prep_hash)
    except RunError:
        return False
    if changes and not fresh_start:
        raise RunError(f"{paths.checkpoints} holds checkpoints ({', '.join(folders)}) trained on other prepared "
                       f"data; preparing again would change the data under them: pick a new run name "
                       f"(--set output.name=NAME), delete {paths.checkpoints}, or train without --resume, which "
                       f"starts this run over")
    return changes


def strip_setting(setting: bool | str, template_name: str) -> bool | str:
    """`data.strip_template` as it applies under a template: `auto` keeps baked markers with template `none`,
    which trains on the prompts exactly as written.

    >>> strip_setting("auto", "none"), strip_setting("auto", "chat"), strip_setting(True, "none")
    (False, 'auto', True)
    """
    return False if setting == "auto" and template_name == "none" else setting


def _strip(loaded: LoadedData, test: LoadedData | None, data: DataConfig,
           template: TemplateConfig) -> tuple[list[Record], list[Record] | None, Stripped]:
    """The records without a baked-in template; a test file loses the form the training file lost."""
    records, stripped = strip_templates(loaded.records, strip_setting(data.strip_template, template.name))
    if test is None:
        return records, None, stripped
    return records, [strip_record(r, stripped.form) if stripped.records else r for r in test.records], stripped


def _skipped_warning(rejected: list[Rejected], total: int, on_error: str, path: Path) -> list[str]:
    """The one warning about skipped invalid records: how many, why, where they are kept, the first few."""
    if not rejected:
        return []
    count = len(rejected)
    why = f"data.on_error: auto skips up to {AUTO_SKIP_PERCENT}%" if on_error == "auto" else "data.on_error: skip"
    lines = [f"skipped {count:,} invalid record{'s' if count > 1 else ''} of {total:,} ({why}), kept in {path}:"]
    lines += [f"  {r.problem}" for r in rejected[:SKIPPED_SHOWN]]
    if count > SKIPPED_SHOWN:
        lines.append(f"  ... and {count - SKIPPED_SHOWN:,} more")
    return ["\n".join(lines)]


def _write_rejected(path: Path, rejected: list[Rejected]) -> None:
    """`rejected.jsonl` with one line per skipped record; an old one goes when nothing was skipped this time."""
    from tunesmith.runs import atomic_write_text

    if not rejected:
        path.unlink(missing_ok=True)
        return
    # default=str: Parquet and datasets rows may hold dates or bytes, which JSON has no type for.
    atomic_write_text(path, "".join(json.dumps(r.to_dict(), ensure_ascii=False, default=str) + "\n"
                                    for r in rejected))


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
            tokenization: TokenizationConfig, split: SplitConfig, fresh_start: bool = False) -> PrepareResult:
    """Tokenize the configured data into `<run>/prepared/{train,test}` plus records and manifest.

    `paths` is the run folder, made by the caller (`tunesmith.runs.create_run`, which also saves the config);
    the sections are the only settings read. Re-running with the same data files and preparation settings
    reuses what is there (`reused=True`). Checkpoints of the run trained on other prepared data are refused,
    unless `fresh_start` (training starts over next, without --resume): then they are removed right before the
    new data is saved, so no moment leaves new data under old checkpoints.

    Raises:
        RunError: the data would change under the run's checkpoints (and not `fresh_start`).
        ConfigError: no data path, or a template/split setting that cannot work with this data.
        DataError: the data is invalid (every problem listed).
        ModelError: the tokenizer cannot be loaded.
    """
    from tunesmith.prepare.tokenization import max_length_note, tokenize_for_model
    from tunesmith.runs import atomic_write_json

    check_data_paths(data)
    sources = {"source": _source(data.path), "test_source": _source(data.test_path) if data.test_path else None}
    prep_hash = preparation_hash(model, data, template, tokenization, split)
    manifest = _reusable(paths, sources, prep_hash)
    if manifest is not None:
        return PrepareResult(paths, manifest, reused=True)
    drop_checkpoints = _checkpoints_on_other_data(paths, sources, prep_hash, fresh_start)

    from tunesmith.prepare.split import split_records

    loaded = load_records(data.path, data)
    test_loaded = load_records(data.test_path, data) if data.test_path else None
    records, test_records, stripped = _strip(loaded, test_loaded, data, template)
    rejected = loaded.rejected + (test_loaded.rejected if test_loaded else [])
    _write_rejected(paths.rejected, rejected)
    warnings = _skipped_warning(rejected, loaded.total + (test_loaded.total if test_loaded else 0), data.on_error,
                                paths.rejected)
    train, test = (records, test_records) if test_records is not None else split_records(records, split)
    if not train:
        raise DataError("no valid records to train on", file=data.path)
    measured = tokenize_for_model(train + test, model, template, tokenization)
    max_length = measured.max_length
    capped = max_length_note(tokenization, measured.model_context)  # shown with the summary, again when reused
    warnings = [*warnings, capped] if capped else warnings
    encoded = {"train": _encode_split(train, measured.tokenized[:len(train)], tokenization, max_length, "train"),
               "test": _encode_split(test, measured.tokenized[len(train):], tokenization, max_length, "test")}
    manifest = _manifest(sources, prep_hash, model, tokenization, loaded, measured, encoded,
                         test_prompts_in_train=_test_prompts_in_train(train, test),
                         notes={"rejected": rejected, "stripped": stripped, "warnings": warnings})
    if not encoded["train"]["examples"]:
        raise ConfigError(f"no training example is left after truncation to max_length={max_length}: "
                          f"raise tokenization.max_length")
    if drop_checkpoints:
        shutil.rmtree(paths.checkpoints, ignore_errors=True)
    _save(paths, encoded, manifest)
    atomic_write_json(paths.data_stats, data_statistics(train + test, measured.tokenized, train, test,
                                                        tokenization, max_length))
    return PrepareResult(paths, manifest, reused=False)


def _test_prompts_in_train(train: list[Record], test: list[Record]) -> int:
    train_prompts = {prompt_key(r) for r in train}
    return sum(prompt_key(r) in train_prompts for r in test)


def _manifest(sources: dict, prep_hash: str, model: ModelConfig, tokenization: TokenizationConfig,
              loaded: LoadedData, measured: Measured, encoded: dict, test_prompts_in_train: int,
              notes: dict) -> Manifest:
    """The typed manifest of one preparation: what was made from what, with every count.

    `notes` holds what the data steps reported: `rejected` records, what was `stripped`, the `warnings`.
    """
    dropped = encoded["train"]["dropped"] + encoded["test"]["dropped"]
    stripped: Stripped = notes["stripped"]
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
            "skipped_invalid": len(notes["rejected"]),
            "train": len(encoded["train"]["examples"]),
            "test": len(encoded["test"]["examples"]),
            "truncated": encoded["train"]["truncated"] + encoded["test"]["truncated"],
            "dropped": len(dropped),
            "test_prompts_in_train": test_prompts_in_train,
        },
        "tokens": {split: encoded[split]["tokens"] for split in ("train", "test")},
        "dropped": dropped[:DROPPED_LISTED],
        "skipped_invalid": [str(r.problem) for r in notes["rejected"][:DROPPED_LISTED]],
        "stripped_template": ({"form": stripped.form, "records": stripped.records, "setting": stripped.setting}
                              if stripped.records else None),
        "warnings": notes["warnings"],
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
