"""Readers that turn a data file into raw rows, each with its location and any problem found reading it.

A broken row never stops the reader: it comes back as a `RawRow` with a `problem`, so one run lists every
bad record at once and `on_error: skip` can keep the good ones. Only a file that cannot be read at all
(missing, unknown format, not a JSON array) raises `DataError`.

Locations: JSON Lines and JSON give the 1-based line where a record starts; CSV, Parquet and `datasets`
folders give the data row number (1 = first row after the header).
"""

from __future__ import annotations

import bisect
import csv
import io
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from tunesmith.errors import DataError, DataProblem

BOM = "\ufeff"


@dataclass(frozen=True)
class RawRow:
    """One row as read from the file: `data` when it parsed into a JSON object, else a `problem`."""

    file: str
    line: int
    data: dict | None = None
    problem: DataProblem | None = None


def read_rows(path: str | Path, max_record_bytes: int = 1_000_000) -> list[RawRow]:
    """Every row of a data file, in file order.

    >>> # data.jsonl: '{"a": "x"}\\n{oops\\n'
    >>> # read_rows("data.jsonl") -> [RawRow(line=1, data={"a": "x"}), RawRow(line=2, problem="invalid JSON ...")]

    Raises:
        DataError: the path is missing, has an unsupported format, or is unreadable as a whole.
    """
    return list(iter_rows(path, max_record_bytes))


def iter_rows(path: str | Path, max_record_bytes: int = 1_000_000) -> Iterator[RawRow]:
    """The rows of `read_rows` one at a time, so a file of millions of records is never held whole (JSON Lines,
    CSV rows, Parquet batches and `datasets` folders stream; a .json array is parsed as one text).

    Raises:
        DataError: the path is missing or has an unsupported format (at once), or is unreadable (when read).
    """
    path = Path(path)
    file = str(path)
    if not path.exists():
        raise DataError("data file not found", file=file)
    if path.is_dir():
        return _read_dataset_folder(path, max_record_bytes)
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        kinds = ", ".join(READERS) + ", or a folder saved by datasets"
        raise DataError(f"unsupported data format {path.suffix or '(no extension)'!r}; use {kinds}", file=file)
    return _unless_unreadable(reader(path, max_record_bytes), file)


def _unless_unreadable(rows: Iterator[RawRow], file: str) -> Iterator[RawRow]:
    try:
        yield from rows
    except OSError as e:
        raise DataError(f"cannot read the file: {e.strerror or e}", file=file) from None


def _problem(file: str, line: int, message: str) -> RawRow:
    return RawRow(file, line, problem=DataProblem(file, line, None, message))


def _too_big(size: int, limit: int) -> str:
    return f"record is {size:,} bytes, more than data.max_record_bytes={limit:,}"


def _parse_object(text: str, file: str, line: int) -> RawRow:
    """One line of JSON that must hold an object; anything else becomes a problem at `line`."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        return _problem(file, line, f"invalid JSON: {e.msg} (column {e.colno})")
    except RecursionError:
        return _problem(file, line, "invalid JSON: nested too deeply")
    return _as_object(value, file, line)


def _as_object(value: Any, file: str, line: int) -> RawRow:
    if not isinstance(value, dict):
        return _problem(file, line, f"expected a JSON object with named fields, got {_type_name(value)}")
    return RawRow(file, line, data=value)


def _type_name(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null",
             int: "a number", float: "a number"}
    return names.get(type(value), type(value).__name__)


def _read_jsonl(path: Path, limit: int) -> Iterator[RawRow]:
    file = str(path)
    with path.open("rb") as f:
        line = 0
        while True:
            # Never read more than just over the limit, so a 10 GB line does not land in memory.
            chunk = f.readline(limit + 2)
            if not chunk:
                return
            line += 1
            if len(chunk) == limit + 2 and not chunk.endswith(b"\n"):
                yield _problem(file, line, _too_big(len(chunk) + _skip_rest_of_line(f), limit))
                continue
            if len(chunk.rstrip(b"\r\n")) > limit:
                yield _problem(file, line, _too_big(len(chunk.rstrip(b"\r\n")), limit))
                continue
            if line == 1 and chunk.startswith(b"\xef\xbb\xbf"):
                chunk = chunk[3:]
            try:
                text = chunk.decode("utf-8")
            except UnicodeDecodeError as e:
                yield _problem(file, line, f"not valid UTF-8: byte 0x{chunk[e.start]:02x} at column {e.start + 1}")
                continue
            if not text.strip():
                continue
            row = _parse_object(text.rstrip("\r\n"), file, line)
            if row.problem and not chunk.endswith(b"\n") and "invalid JSON" in row.problem.message:
                row = _problem(file, line, row.problem.message + "; the last line looks cut off (truncated file?)")
            yield row


def _skip_rest_of_line(f) -> int:
    skipped = 0
    while True:
        chunk = f.readline(1 << 20)
        skipped += len(chunk)
        if not chunk or chunk.endswith(b"\n"):
            return skipped


def _decode_whole(path: Path) -> str:
    """File text with undecodable bytes kept as lone surrogates, so each bad record can be found and named."""
    text = path.read_bytes().decode("utf-8", errors="surrogateescape")
    return text[1:] if text.startswith(BOM) else text


_UNDECODABLE = re.compile("[\udc80-\udcff]")


def _bad_utf8_column(text: str) -> int | None:
    """1-based column of the first undecodable byte (a surrogate from `surrogateescape`), if any."""
    match = _UNDECODABLE.search(text)
    return None if match is None else match.start() + 1


def _line_finder(text: str) -> Callable[[int], int]:
    """Position in `text` -> 1-based line number."""
    starts = [m.end() for m in re.finditer("\n", text)]
    return lambda pos: bisect.bisect_right(starts, pos) + 1


def _read_json(path: Path, limit: int) -> Iterator[RawRow]:
    """A JSON array of objects, or an object whose `data` key holds one; each element located by its first line."""
    file = str(path)
    text = _decode_whole(path)
    line_of = _line_finder(text)
    decoder = json.JSONDecoder()
    pos = _skip_ws(text, 0)
    if text.startswith("{", pos):
        pos = _find_data_key(text, pos, decoder, file, line_of)
    if not text.startswith("[", pos):
        raise DataError("a .json data file must hold an array of records or {\"data\": [...]}",
                        file=file, line=line_of(pos))
    pos = _skip_ws(text, pos + 1)
    if text.startswith("]", pos):
        return
    while True:
        start = pos
        try:
            value, pos = decoder.raw_decode(text, start)
        except json.JSONDecodeError as e:
            # The rest of the array cannot be located reliably after a syntax error.
            yield _problem(file, line_of(e.pos), f"invalid JSON: {e.msg}; records after this point were not read")
            return
        except RecursionError:
            yield _problem(file, line_of(start), "invalid JSON: nested too deeply; records after it were not read")
            return
        item = text[start:pos]
        size = len(item.encode("utf-8", errors="surrogateescape"))
        bad = _bad_utf8_column(item)
        if size > limit:
            yield _problem(file, line_of(start), _too_big(size, limit))
        elif bad is not None:
            yield _problem(file, line_of(start + bad - 1), "not valid UTF-8 (undecodable byte in this record)")
        else:
            yield _as_object(value, file, line_of(start))
        pos = _skip_ws(text, pos)
        if text.startswith(",", pos):
            pos = _skip_ws(text, pos + 1)
        elif text.startswith("]", pos):
            return
        else:
            where = "file ends" if pos >= len(text) else f"found {text[pos]!r}"
            yield _problem(file, line_of(pos), f"invalid JSON: expected ',' or ']' after a record, {where}"
                           + ("; the file looks cut off (truncated?)" if pos >= len(text) else ""))
            return


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _find_data_key(text: str, pos: int, decoder: json.JSONDecoder, file: str, line_of) -> int:
    """Position of the value of the top-level `data` key of `{"data": [...], ...}`."""
    pos = _skip_ws(text, pos + 1)
    while pos < len(text) and text[pos] != "}":
        try:
            key, pos = decoder.raw_decode(text, pos)
            pos = _skip_ws(text, pos)
            if not text.startswith(":", pos) or not isinstance(key, str):
                break
            pos = _skip_ws(text, pos + 1)
            if key == "data":
                return pos
            _, pos = decoder.raw_decode(text, pos)
        except (json.JSONDecodeError, RecursionError):
            break
        pos = _skip_ws(text, pos)
        if text.startswith(",", pos):
            pos = _skip_ws(text, pos + 1)
    raise DataError("a .json data file that holds an object must have a \"data\" key with the array of records",
                    file=file, line=line_of(min(pos, len(text))))


def _read_csv(path: Path, limit: int) -> Iterator[RawRow]:
    """Rows under a header line; cells are strings, a short row lacks its last columns."""
    file = str(path)
    text = _decode_whole(path)
    # csv's default cell limit (128 KB) is below ours; oversized records are reported below instead.
    csv.field_size_limit(max(csv.field_size_limit(), min(limit + 1, sys.maxsize)))
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as e:
        raise DataError(f"unreadable CSV header: {e}", file=file, line=1) from None
    row_number = 0
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            row_number += 1
            yield _problem(file, row_number, f"unreadable CSV row: {e}")
            continue
        if not cells:
            continue
        row_number += 1
        joined = "".join(cells)
        size = len(joined.encode("utf-8", errors="surrogateescape"))
        if size > limit:
            yield _problem(file, row_number, _too_big(size, limit))
        elif _bad_utf8_column(joined) is not None:
            yield _problem(file, row_number, "not valid UTF-8 (undecodable byte in this row)")
        elif len(cells) > len(header):
            yield _problem(file, row_number, f"row has {len(cells)} cells but the header has {len(header)} columns")
        else:
            yield RawRow(file, row_number, data=dict(zip(header, cells)))


def _read_parquet(path: Path, limit: int) -> Iterator[RawRow]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
        batches = table.iter_batches(batch_size=1024)
        yield from _table_rows(str(path), (row for batch in batches for row in batch.to_pylist()), limit)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"unreadable Parquet file: {e}", file=str(path)) from None


def _read_dataset_folder(path: Path, limit: int) -> Iterator[RawRow]:
    """A folder written by `datasets` `save_to_disk`; a DatasetDict uses its `train` split (or its only one)."""
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError, OSError) as e:
        raise DataError(f"a folder must be one saved by datasets' save_to_disk ({e})", file=str(path)) from None
    if isinstance(loaded, datasets.DatasetDict):
        if "train" in loaded:
            loaded = loaded["train"]
        elif len(loaded) == 1:
            loaded = next(iter(loaded.values()))
        else:
            raise DataError(f"the saved DatasetDict has splits {sorted(loaded)} but no 'train'; point at one "
                            f"split's folder", file=str(path))
    yield from _table_rows(str(path), iter(loaded), limit)


def _table_rows(file: str, rows: Iterator[dict], limit: int) -> Iterator[RawRow]:
    for number, row in enumerate(rows, start=1):
        size = len(json.dumps(row, ensure_ascii=False, default=str).encode("utf-8", errors="surrogateescape"))
        yield _problem(file, number, _too_big(size, limit)) if size > limit else RawRow(file, number, data=row)


READERS: dict[str, Callable[[Path, int], Iterator[RawRow]]] = {
    ".jsonl": _read_jsonl,
    ".json": _read_json,
    ".csv": _read_csv,
    ".parquet": _read_parquet,
}
"""File suffix → reader; a folder is read as a `datasets` save."""
