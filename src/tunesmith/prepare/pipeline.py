"""Prepare: from the user's files to tokenized, masked train/test splits in the run folder.

The steps, in order: read each source (`data.path`, or each of `data.sources`) as a stream, detecting its shape
and validating every record (invalid ones skipped or refused as `data.on_error` says, the skipped kept in
`<run>/rejected.jsonl`); load the tokenizer and resolve the template; tokenize the records, stripped of a
baked-in template (`data.strip_template`), chunk by chunk into a spool on disk; resolve `max_length` from the
lengths; split each source (or use its test file); drop examples with nothing left to learn; mix the sources'
training sides by weight; save. Everything goes into `<run>/prepared/` at once (built in a temporary folder,
renamed into place), together with a manifest whose hashes tell a later run whether the same inputs would give
the same result, so re-running reuses the prepared data instead of redoing it.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tunesmith.config import (DataConfig, ModelConfig, SourceConfig, SplitConfig, TemplateConfig,
                              TokenizationConfig, config_hash)
from tunesmith.data.sources import (ScannedFile, StripTally, mixed_counts, sample_indices, scan_file, source_data,
                                    source_list, strip_plan, stripped_summary)
from tunesmith.data.strip import FORM_LABELS, Stripped
from tunesmith.data.validate import AUTO_SKIP_PERCENT, Rejected
from tunesmith.errors import ConfigError, DataError, RunError
from tunesmith.prepare.manifest import MANIFEST_VERSION, Manifest
from tunesmith.prepare.split import test_mask
from tunesmith.prepare.spool import Spool, iter_records, spool_workers, windows, write_spool, write_split
from tunesmith.prepare.templates import jinja_source
from tunesmith.runs import RunPaths, file_sha256

__all__ = ["Manifest", "PrepareResult", "PreparedExamples", "check_data_paths", "load_prepared", "prepare",
           "preparation_hash", "strip_setting"]

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
            f"data: {m.source.path} ({m.shape}: {m.shape_reason}), template {m.template}" if len(m.sources) < 2
            else f"data: {len(m.sources)} sources mixed, template {m.template}",
            *[f"  {s.path}: {s.train:,} train ({s.share:.1%}), {s.test:,} test"
              + (f", weight {s.weight:g}" if s.weight is not None else "") for s in m.sources if len(m.sources) > 1],
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
        "data": _data_settings(data),
        "template": template.model_dump(mode="json"),
        "tokenization": tokenization.model_dump(mode="json", exclude={"padding_side"}),
        "split": split.model_dump(mode="json") if not data.test_path else None,
    }
    if template.name == "jinja":
        parts["jinja_text"] = jinja_source(template)[1]
    return config_hash(parts)


def _data_settings(data: DataConfig) -> dict:
    """`data` without its paths (the files' content hashes stand for them); `sources` only when given, so the
    hash of a one-file preparation is what it was before sources existed."""
    settings = data.model_dump(mode="json", exclude={"path", "test_path", "sources"})
    if data.sources:
        settings["sources"] = [s.model_dump(mode="json", exclude={"path", "test_path"}) for s in data.sources]
    return settings


def check_data_paths(data: DataConfig) -> None:
    """The data paths are set and exist; callers check this before creating a run folder for them.

    Raises:
        ConfigError: no data path (neither data.path nor data.sources), both, or a path that does not exist.
    """
    if not data.path and not data.sources:
        raise ConfigError("data.path is not set: give the training data file (e.g. --set data.path=train.jsonl), "
                          "or several as data.sources")
    if data.sources and (data.path or data.test_path):
        raise ConfigError("data.path and data.sources are both set: give one file as data.path, or several as "
                          "data.sources (each with its own test_path)")
    where = "data" if not data.sources else "data.sources[{}]"
    for index, source in enumerate(source_list(data)):
        for key in ("path", "test_path"):
            value = getattr(source, key)
            if value and not Path(value).exists():
                raise ConfigError(f"{where.format(index)}.{key}={value!r}: no such file or folder")


def _input_files(data: DataConfig) -> list[dict]:
    """Each source's file and test file with their content hashes: what decides whether a preparation is reused."""
    return [{"path": str(s.path), "sha256": file_sha256(s.path),
             "test_path": s.test_path, "test_sha256": file_sha256(s.test_path) if s.test_path else None}
            for s in source_list(data)]


def _manifest_inputs(manifest: Manifest) -> list[tuple]:
    if manifest.sources:
        return [(s.sha256, s.test_sha256) for s in manifest.sources]
    return [(manifest.source.sha256, manifest.test_source.sha256 if manifest.test_source else None)]


def _same_inputs(manifest: Manifest, sources: list[dict], prep_hash: str) -> bool:
    """Whether `manifest` was made from these data files' content with these preparation settings."""
    return (manifest.version == MANIFEST_VERSION and manifest.config_hash == prep_hash
            and _manifest_inputs(manifest) == [(s["sha256"], s["test_sha256"]) for s in sources])


def _reusable(paths: RunPaths, sources: list[dict], prep_hash: str) -> Manifest | None:
    """The existing manifest when it was made from the same inputs and its splits are all there."""
    try:
        manifest = Manifest.read(paths.manifest)
    except RunError:
        return None
    complete = all((paths.prepared / split / "dataset_info.json").is_file() for split in ("train", "test"))
    return manifest if _same_inputs(manifest, sources, prep_hash) and complete else None


def _checkpoints_on_other_data(paths: RunPaths, sources: list[dict], prep_hash: str, fresh_start: bool) -> bool:
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


def prepare(paths: RunPaths, model: ModelConfig, data: DataConfig, template: TemplateConfig,
            tokenization: TokenizationConfig, split: SplitConfig, fresh_start: bool = False) -> PrepareResult:
    """Tokenize the configured data into `<run>/prepared/{train,test}` plus records and manifest.

    `paths` is the run folder, made by the caller (`tunesmith.runs.create_run`, which also saves the config);
    the sections are the only settings read. Re-running with the same data files and preparation settings
    reuses what is there (`reused=True`). Checkpoints of the run trained on other prepared data are refused,
    unless `fresh_start` (training starts over next, without --resume): then they are removed right before the
    new data is saved, so no moment leaves new data under old checkpoints.

    The records stream through in chunks (`tunesmith.data.sources`, `tunesmith.prepare.spool`): memory holds a
    few numbers per record, never the records, so a million of them fit in bounded memory.

    Raises:
        RunError: the data would change under the run's checkpoints (and not `fresh_start`).
        ConfigError: no data path, or a template/split setting that cannot work with this data.
        DataError: the data is invalid (every problem listed).
        ModelError: the tokenizer cannot be loaded.
    """
    from tunesmith.models import context_length, load_model_config, load_tokenizer
    from tunesmith.prepare.templates import resolve_template_name
    from tunesmith.prepare.tokenization import max_length_note, resolve_max_length
    from tunesmith.runs import atomic_write_json

    check_data_paths(data)
    inputs = _input_files(data)
    prep_hash = preparation_hash(model, data, template, tokenization, split)
    manifest = _reusable(paths, inputs, prep_hash)
    if manifest is not None:
        return PrepareResult(paths, manifest, reused=True)
    drop_checkpoints = _checkpoints_on_other_data(paths, inputs, prep_hash, fresh_start)

    sources = source_list(data)
    scans = [_scan(source, data) for source in sources]
    files = [f for pair in scans for f in pair if f is not None]
    rejected = [r for f in files for r in f.rejected]
    _write_rejected(paths.rejected, rejected)
    warnings = _skipped_warning(rejected, sum(f.total for f in files), data.on_error, paths.rejected)
    tokenizer = load_tokenizer(model)
    template_name = resolve_template_name(template, tokenizer)
    model_context = context_length(load_model_config(model))
    tallies = [StripTally() for _ in sources]
    paths.root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".prepare-", dir=paths.root) as tmp:  # the spool: beside the run
        spool = _tokenize(Path(tmp) / "spool.arrow", scans, strip_setting(data.strip_template, template.name),
                          tallies, tokenizer, template, tokenization, split.seed)
        max_length = resolve_max_length(tokenization, spool.totals.tolist(), model_context)
        capped = max_length_note(tokenization, model_context)  # shown with the summary, again when reused
        warnings = [*warnings, capped] if capped else warnings
        table = spool.table()
        cuts = windows(spool, table, max_length, tokenization)
        chosen = assign_rows(spool, cuts.kept, sources, split)
        if not np.count_nonzero(~chosen.is_test):
            raise DataError("no valid records to train on", file=sources[0].path)
        if not len(chosen.train):
            raise ConfigError(f"no training example is left after truncation to max_length={max_length}: "
                              f"raise tokenization.max_length")
        manifest = _manifest(inputs, prep_hash, model, tokenization, scans, spool, table, cuts, chosen,
                             {"max_length": max_length, "model_context": model_context, "template": template_name},
                             notes={"rejected": rejected, "warnings": warnings,
                                    "stripped": _stripped(scans, tallies, data.strip_template, template.name)})
        if drop_checkpoints:
            shutil.rmtree(paths.checkpoints, ignore_errors=True)
        with ThreadPoolExecutor(1, thread_name_prefix="tunesmith-stats") as pool:
            # The statistics (Python) beside the save (numpy, Arrow and writes, mostly without the GIL), each with
            # its own reader of the spool.
            stats = pool.submit(data_statistics, spool, spool.table(), chosen, sources, tokenization, max_length)
            _save(paths, table, cuts, chosen, manifest)
            atomic_write_json(paths.data_stats, stats.result())
    return PrepareResult(paths, manifest, reused=False)


def _scan(source: SourceConfig, data: DataConfig) -> tuple[ScannedFile, ScannedFile | None]:
    """A source's training file and its test file (if it has one), shapes detected and records validated."""
    settings = source_data(data, source)
    return scan_file(source.path, settings), scan_file(source.test_path, settings) if source.test_path else None


def _tokenize(path: Path, scans: list, setting: bool | str, tallies: list[StripTally], tokenizer,
              template: TemplateConfig, tokenization: TokenizationConfig, seed: int) -> Spool:
    """Every source's records, stripped of a baked-in template, tokenized into the spool at `path`.

    A test file loses the form its training file lost (`tallies` counts what stripping changed).
    """
    from tqdm.auto import tqdm

    def streams():
        for index, (train, test) in enumerate(scans):
            form = strip_plan(train, setting)
            yield index, False, train.records(form, tallies[index])
            if test is not None:  # read after the training file, so its tally is complete
                yield index, True, test.records(form if tallies[index].changed else None)

    total = sum(f.valid for pair in scans for f in pair if f is not None)
    with tqdm(total=total, desc="tokenizing", unit="ex", disable=total < 5000, leave=False) as bar:
        return write_spool(path, streams(), tokenizer, template, tokenization, seed, progress=bar,
                           workers=spool_workers(total))


@dataclass(frozen=True)
class Assignment:
    """Which spool rows become which split: the training rows in their final (mixed) order, the test rows."""

    is_test: np.ndarray
    """Per spool row: on the test side (split out, or from a test file), dropped or not."""
    train: np.ndarray
    test: np.ndarray
    per_source: list[dict]
    """Per source: its weight and max_records, its training and test examples."""


def assign_rows(spool: Spool, kept: np.ndarray, sources: list[SourceConfig], split: SplitConfig) -> Assignment:
    """Split each source (`tunesmith.prepare.split.test_mask`, or its test file), drop the examples with nothing
    left to learn, and mix the training sides by weight (`tunesmith.data.sources.mixed_counts`).

    One source keeps file order, exactly as before sources existed; several are interleaved at random, seeded, so
    the same seed gives the same order (`_interleave`).
    """
    is_test = spool.from_test_file.copy()
    for index, source in enumerate(sources):
        if source.test_path is None:
            rows = np.flatnonzero(spool.source == index)
            is_test[rows] = test_mask(spool.keys[rows], split.test_size)
    pools = [np.flatnonzero((spool.source == i) & ~is_test & kept) for i in range(len(sources))]
    available = [min(len(pool), s.max_records or len(pool)) for pool, s in zip(pools, sources)]
    counts = mixed_counts(available, [s.weight for s in sources])
    chosen = [pool[sample_indices(len(pool), count, split.seed, i)] for i, (pool, count) in
              enumerate(zip(pools, counts))]
    train = chosen[0] if len(chosen) == 1 else _interleave(chosen, split.seed)
    test = np.flatnonzero(is_test & kept)
    per_source = [{"weight": s.weight, "max_records": s.max_records, "train": len(rows),
                   "test": int(np.count_nonzero(spool.source[test] == i))}
                  for i, (s, rows) in enumerate(zip(sources, chosen))]
    return Assignment(is_test, train, test, per_source)


def _interleave(chosen: list[np.ndarray], seed: int) -> np.ndarray:
    """The sources' rows interleaved at random (seeded), each source's rows still in file order, so the spool is
    read forward once per source.

    >>> _interleave([np.array([0, 1, 2]), np.array([7])], 0).tolist()
    [0, 1, 2, 7]
    """
    which = np.random.default_rng(seed).permutation(np.repeat(np.arange(len(chosen)), [len(c) for c in chosen]))
    order = np.empty(len(which), dtype=np.int64)
    for index, rows in enumerate(chosen):
        order[which == index] = rows
    return order


def _stripped(scans: list, tallies: list[StripTally], setting: bool | str, template_name: str) -> Stripped:
    """What stripping did: the first source's form and example, the records counted over every source."""
    summaries = [stripped_summary(train, strip_setting(setting, template_name), tally)
                 for (train, _), tally in zip(scans, tallies)]
    first = next((s for s in summaries if s.records), summaries[0])
    return replace(first, records=sum(s.records for s in summaries), total=sum(s.total for s in summaries))


def _dropped(table, spool: Spool, cuts, chosen: Assignment, max_length: int) -> tuple[int, list[dict]]:
    """How many examples were dropped for having no answer token left, and the first ones, each named."""
    rows = {"train": np.flatnonzero(~chosen.is_test & ~cuts.kept), "test": np.flatnonzero(chosen.is_test & ~cuts.kept)}
    listed = []
    for name, found in rows.items():
        head = found[:DROPPED_LISTED - len(listed)]
        for row, record in zip(head, iter_records(table, head)):
            listed.append({"split": name, "where": record.where,
                           "reason": f"no answer token left after truncation to max_length={max_length} (prompt "
                                     f"{spool.prompt_tokens[row]} tokens, answer {spool.response_tokens[row]})"})
    return sum(len(found) for found in rows.values()), listed


def _manifest(inputs: list[dict], prep_hash: str, model: ModelConfig, tokenization: TokenizationConfig,
              scans: list, spool: Spool, table, cuts, chosen: Assignment, resolved: dict, notes: dict) -> Manifest:
    """The typed manifest of one preparation: what was made from what, with every count.

    `resolved` holds the `max_length`, `model_context` and `template` the settings came to; `notes` what the data
    steps reported: `rejected` records, what was `stripped`, the `warnings`.
    """
    stripped: Stripped = notes["stripped"]
    dropped, listed = _dropped(table, spool, cuts, chosen, resolved["max_length"])
    train_side = spool.keys[~chosen.is_test]
    shapes = {train.shape for train, _ in scans}
    lengths = cuts.end - cuts.start
    return Manifest.model_validate({
        "version": MANIFEST_VERSION,
        "source": {"path": inputs[0]["path"], "sha256": inputs[0]["sha256"]},
        "test_source": ({"path": inputs[0]["test_path"], "sha256": inputs[0]["test_sha256"]}
                        if inputs[0]["test_path"] else None),
        "sources": [{**files, **counts, "records": train.valid, "share": round(counts["train"] / len(chosen.train), 4),
                     "skipped_invalid": len(train.rejected) + (len(test.rejected) if test else 0)}
                    for files, (train, test), counts in zip(inputs, scans, chosen.per_source)],
        "config_hash": prep_hash,
        "model": model.name,
        "template": resolved["template"],
        "shape": shapes.pop() if len(shapes) == 1 else "mixed",
        "shape_reason": scans[0][0].reason if len(scans) == 1 else
        "; ".join(f"{train.path}: {train.shape} ({train.reason})" for train, _ in scans),
        "max_length": resolved["max_length"],
        "max_length_setting": tokenization.max_length,
        "model_context": resolved["model_context"],
        "train_on": tokenization.train_on,
        "counts": {
            "records": sum(train.valid for train, _ in scans),
            "skipped_invalid": len(notes["rejected"]),
            "train": len(chosen.train),
            "test": len(chosen.test),
            "truncated": int(np.count_nonzero(spool.totals > resolved["max_length"])),
            "dropped": dropped,
            "test_prompts_in_train": int(np.count_nonzero(np.isin(spool.keys[chosen.is_test], train_side))),
        },
        "tokens": {name: {"total": int(lengths[rows].sum()), "loss": int(cuts.loss[rows].sum())}
                   for name, rows in (("train", chosen.train), ("test", chosen.test))},
        "dropped": listed,
        "skipped_invalid": [str(r.problem) for r in notes["rejected"][:DROPPED_LISTED]],
        "stripped_template": ({"form": stripped.form, "records": stripped.records, "setting": stripped.setting}
                              if stripped.records else None),
        "warnings": notes["warnings"],
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    })


def _save(paths: RunPaths, table, cuts, chosen: Assignment, manifest: Manifest) -> None:
    """Both splits and the manifest into `<run>/prepared/`, all at once (built aside, renamed into place)."""
    import datasets

    from tunesmith.runs import atomic_dir, atomic_write_json

    progress_was_off = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        with atomic_dir(paths.prepared) as tmp:
            for name, rows in (("train", chosen.train), ("test", chosen.test)):
                write_split(tmp, name, table, rows, cuts)
            atomic_write_json(tmp / "manifest.json", manifest.to_dict())
    finally:
        if not progress_was_off:
            datasets.enable_progress_bars()


def data_statistics(spool: Spool, table, chosen: Assignment, sources: list[SourceConfig],
                    tokenization: TokenizationConfig, max_length: int) -> dict:
    """What `data inspect` would say about the run's data (every valid record: training side, then test side),
    plus train/test overlap and each source's lengths, for the report.

    Exactly `compute_stats` and `overlap` over those records, reading back from the spool only the records that
    can change a figure (at a million records, a few percent of them): the numbers kept per row give the counts
    and lengths; the first `DUPLICATES_SCANNED` records are the duplicate scan; only the rows flagged as holding a
    template marker can count as baked, only those using tools in the tool counts; only training rows whose split
    key (a hash of the prompt) a test row shares can overlap.
    """
    from tunesmith.data.stats import (DUPLICATES_SCANNED, baked_templates, overlap, stats_from_parts, summarize,
                                      tool_use)

    train_rows, test_rows = np.flatnonzero(~chosen.is_test), np.flatnonzero(chosen.is_test)
    order = np.concatenate([train_rows, test_rows])
    lengths = list(zip(spool.prompt_tokens[order].tolist(), spool.response_tokens[order].tolist()))
    shapes, kinds = _profile_counts(spool, order)
    uses_tools = np.array([tools for _, _, tools in spool.profiles], dtype=bool).reshape(-1)[spool.profile[order]]
    stats = stats_from_parts(shapes, kinds, lengths, list(iter_records(table, order[:DUPLICATES_SCANNED])),
                             baked_templates(iter_records(table, order[spool.marked[order]])),
                             tool_use(iter_records(table, order[uses_tools])), max_length,
                             tokenization.truncation_side).to_dict()
    test = list(iter_records(table, test_rows))
    candidates = train_rows[np.isin(spool.keys[train_rows], spool.keys[test_rows])]
    found = overlap(iter_records(table, candidates), test)
    per_source = [{"path": source.path, "records": int(np.count_nonzero(spool.source == i)),
                   "train": counts["train"], "test": counts["test"],
                   "lengths": {name: asdict(summarize(values[spool.source == i].tolist())) for name, values in
                               (("prompt", spool.prompt_tokens), ("response", spool.response_tokens),
                                ("total", spool.totals))}}
                  for i, (source, counts) in enumerate(zip(sources, chosen.per_source))]
    return {**stats, "overlap": asdict(found), "sources": per_source}


def _profile_counts(spool: Spool, order: np.ndarray) -> tuple[dict[str, int], dict[str, int]]:
    """Records per shape and per kind over the rows `order`, each dict in the order its keys first occur there
    (what counting record by record gives)."""
    codes, first, counts = np.unique(spool.profile[order], return_index=True, return_counts=True)
    shapes: dict[str, int] = {}
    kinds: dict[str, int] = {}
    for position in np.argsort(first, kind="stable").tolist():
        shape, kind, _ = spool.profiles[int(codes[position])]
        shapes[shape] = shapes.get(shape, 0) + int(counts[position])
        kinds[kind] = kinds.get(kind, 0) + int(counts[position])
    return shapes, kinds


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


class PreparedExamples(Sequence):
    """A prepared split as training indexes it: example i is read from the memory-mapped Arrow file when a step
    asks for it, so the data costs no memory per process (a copy into Python lists costs about 70 bytes a token
    in every process: 70 GB for a million 1k-token examples).

    `examples[i]` is `{"input_ids": [...], "labels": [...]}`, as the collators take it.
    """

    def __init__(self, dataset):
        if getattr(dataset, "_indices", None) is not None:
            dataset = dataset.flatten_indices()
        batches = [b for b in dataset.data.table.to_batches() if b.num_rows]
        # zero-copy numpy views of the mapped buffers: offsets and values of each column, per record batch
        self._parts = [tuple((b.column(k).offsets.to_numpy(), b.column(k).values.to_numpy())
                             for k in ("input_ids", "labels")) for b in batches]
        self._starts = np.cumsum([0] + [b.num_rows for b in batches])

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        index = int(index)
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        index %= len(self)
        part = int(np.searchsorted(self._starts, index, side="right")) - 1
        row = index - self._starts[part]
        (id_offsets, ids), (label_offsets, labels) = self._parts[part]
        return {"input_ids": ids[id_offsets[row]:id_offsets[row + 1]].tolist(),
                "labels": labels[label_offsets[row]:label_offsets[row + 1]].tolist()}

    def lengths(self) -> np.ndarray:
        """Tokens of every example, read from the offsets alone."""
        return np.concatenate([np.diff(ids[0]) for ids, _ in self._parts]) if self._parts else np.zeros(0, int)
