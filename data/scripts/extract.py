"""Extract stage: keep the columns later stages need from every CSV file under a folder.

For each ``*.csv`` under ``--raw-dir`` (recursively, hidden files ignored) this writes
``<out-dir>/extracted/<file>.arrow`` (an Arrow IPC file, which the merge stage maps into
memory without a copy) with one row per product row:

* ``source_file`` (path relative to the raw folder), ``source_row`` (0-based data row,
  what ``pandas.read_csv`` would give as the index for a well-formed file) and
  ``source_line`` (1-based line in the file where the row starts);
* ``name``, ``main_category`` (in the comparison form of ``text.normalise_category``:
  lower case, single spaces, one form of apostrophes, commas and ampersands) and
  ``sub_category`` (trimmed, single-spaced, HTML references decoded);
* ``image_url``: the canonical form of the URL (see ``data.scripts.urls``), or the
  trimmed text as written when it cannot be used, in which case ``url_drop_reason``
  says why; ``key_hash``, the 64-bit number the merge stage writes as the row's key.

The ratings and price columns are not kept: no later stage reads them, and each row
keeps its source file and row to look them up. URL normalisation and hashing are done
here, once per file, so that they run on every core and a rerun only repeats them for
files that changed.

Files are read in blocks with pyarrow's streaming CSV reader, so memory does not grow
with file size. A file that pyarrow cannot read exactly as written (a row with too many
fields, an unclosed quote, a carriage return inside a value, text that is not UTF-8)
is read again, line by line, by a tolerant parser that repairs what it can and records
every row it drops. Text double-encoded as cp1252 (mojibake) is repaired where ftfy
finds an unambiguous fix. Each file's result is cached: a rerun only reads files whose
size or modification time changed.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import os
import re
import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from tqdm import tqdm

from data.scripts.common import (
    DEFAULT_DATA_VERSION,
    atomic_path,
    processed_dir,
    raw_dir,
    setup_logging,
    stage_lock,
    write_json,
    write_stats,
)
from data.scripts.text import (
    collapse_whitespace,
    normalise_category,
    repair_mojibake,
    repair_mojibake_array,
)
from data.scripts.urls import key_numbers, normalise_url_array, redact_text

logger = logging.getLogger(__name__)

STAGE = "extract"
# Bump when the output of a file changes for the same input, so cached files are rebuilt.
# Version 3 normalises and hashes URLs here and no longer keeps ratings and prices;
# version 4 decodes escaped unreserved characters in URLs and folds punctuation variants
# of categories.
EXTRACTOR_VERSION = 4
REQUIRED_COLUMNS = ("main_category", "sub_category", "image")
TEXT_COLUMNS = ("name",)
OUTPUT_SCHEMA = pa.schema(
    [
        ("source_file", pa.string()),
        ("source_row", pa.int64()),
        ("source_line", pa.int64()),
        ("name", pa.string()),
        ("main_category", pa.string()),
        ("sub_category", pa.string()),
        ("image_url", pa.string()),
        ("url_drop_reason", pa.string()),
        ("key_hash", pa.uint64()),
    ]
)
BLOCK_SIZE = 8 << 20  # bytes per block of the streaming reader
# Files up to this size are parsed in one go, which pyarrow spreads over every core;
# larger ones are streamed block by block, so memory does not grow with the file.
WHOLE_FILE_BYTES = 32 << 20
EXTRACT_THREADS = 2  # files extracted at once
TOLERANT_BATCH_ROWS = 50_000
MAX_JOINED_LINES = 20  # lines one quoted value may span before its quote counts as stray
MAX_FOLDED_FIELDS = 32  # extra fields folded into a name before a line counts as broken
MAX_STRAY_QUOTE_CANDIDATES = 8  # quotes tried as stray ones in one line
MAX_REPAIR_LINE_CHARS = 64 << 10  # longer lines are not searched for a stray quote
MAX_FIELD_CHARS = 16 << 20  # csv.field_size_limit for the line-by-line parser
MAX_REJECTS_KEPT = 1_000  # rejected rows stored per file, with their text
REJECT_TEXT_CHARS = 300
_UNNAMED_RE = re.compile(r"^(unnamed: ?\d+)?$")


class FileError(Exception):
    """A source file that cannot be extracted at all (the batch goes on without it)."""


class _NeedsTolerantParser(Exception):
    """Raised inside the fast path when a file needs the line-by-line parser."""


@dataclass
class FileResult:
    """Counts and outcome for one source file."""

    source_file: str
    rows_read: int = 0
    rows_written: int = 0
    parser: str = "fast"
    encoding: str = "utf-8"
    bom: bool = False
    unnamed_columns: int = 0
    counters: Counter[str] = field(default_factory=Counter)
    rejects: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    cached: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "source_file": self.source_file,
            "rows_read": self.rows_read,
            "rows_written": self.rows_written,
            "parser": self.parser,
            "encoding": self.encoding,
            "bom": self.bom,
            "unnamed_columns": self.unnamed_columns,
            "counters": dict(sorted(self.counters.items())),
            "rejects": self.rejects,
            "error": self.error,
        }

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> FileResult:
        result = cls(source_file=payload["source_file"])
        for name in ("rows_read", "rows_written", "parser", "encoding", "bom", "unnamed_columns"):
            setattr(result, name, payload[name])
        result.counters = Counter(payload["counters"])
        result.rejects = payload["rejects"]
        result.error = payload["error"]
        return result

    def reject(self, line: int, reason: str, text: str) -> None:
        self.counters[f"rejected_{reason}"] += 1
        if len(self.rejects) < MAX_REJECTS_KEPT:
            text = redact_text(text[: REJECT_TEXT_CHARS * 2])[:REJECT_TEXT_CHARS]
            self.rejects.append({"line": line, "reason": reason, "text": text})


@dataclass(frozen=True)
class Header:
    """The columns of a source file: normalised names and where the wanted ones are."""

    names: list[str]
    index: dict[str, int]  # wanted column -> position in the row
    unnamed: int
    bom: bool
    encoding: str


# ---- discovering files ----


def discover_files(source_dir: Path) -> tuple[list[Path], list[dict[str, str]]]:
    """List the CSV files under ``source_dir`` and the other files that are skipped."""
    csv_files: list[Path] = []
    skipped: list[dict[str, str]] = []
    for path in sorted(source_dir.rglob("*")):
        relative = path.relative_to(source_dir)
        if any(part.startswith(".") for part in relative.parts):
            continue
        is_csv = path.suffix.lower() == ".csv"
        if path.is_file():
            if is_csv:
                csv_files.append(path)
            else:
                skipped.append({"source_file": display_name(relative), "reason": "not a .csv file"})
        elif is_csv and not path.is_dir():
            # A dangling link, a FIFO or a socket named *.csv: listed, so it is not
            # silently missing from the counts. Reading a FIFO would block forever.
            skipped.append({"source_file": display_name(relative), "reason": "not a regular file"})
    return csv_files, skipped


def display_name(relative: Path) -> str:
    """Return a relative path as text; bytes that are not UTF-8 become ``\\xNN`` escapes.

    Escapes keep two names that differ only in such bytes apart, where U+FFFD would not.
    """
    raw = os.fsencode(relative.as_posix())
    return raw.decode("utf-8", errors="backslashreplace")


def output_name(relative: str) -> str:
    """Return a unique, safe Parquet file name for a source path such as ``Home Dcor.csv``."""
    stem = re.sub(r"[^A-Za-z0-9]+", "-", relative.rsplit(".", 1)[0]).strip("-")[:80] or "file"
    digest = hashlib.blake2b(relative.encode("utf-8", "surrogateescape"), digest_size=4)
    digest = digest.hexdigest()
    return f"{stem}-{digest}.arrow"


def fingerprint(path: Path, relative: str) -> dict[str, Any]:
    stat = path.stat()
    # The change time is set by the kernel on every write and cannot be set back with
    # touch, so an edit that keeps the size and restores the modification time is seen.
    return {
        "source_file": relative,
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "ctime_ns": stat.st_ctime_ns,
        "extractor_version": EXTRACTOR_VERSION,
    }


def counts_path(output: Path) -> Path:
    """Return the JSON file beside ``output`` that records its source and counts."""
    return output.with_suffix(".json")


def read_cached_result(output: Path, expected: dict[str, Any]) -> FileResult | None:
    """Return the stored result of ``output`` if it was made from the same input.

    The output itself must also still be a readable Arrow file of the current layout, so
    a damaged or edited output is extracted again instead of failing the merge stage.
    """
    if not output.exists():
        return None
    try:
        stored = json.loads(counts_path(output).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if stored.get("fingerprint") != expected:
        return None
    try:
        with pa.memory_map(str(output)) as source:
            reader = pa.ipc.open_file(source)
            layout_is_current = reader.schema.equals(OUTPUT_SCHEMA)
            rows = sum(reader.get_batch(i).num_rows for i in range(reader.num_record_batches))
    except (OSError, pa.ArrowInvalid):
        return None
    if not layout_is_current or rows != stored.get("result", {}).get("rows_written"):
        return None
    result = FileResult.from_json(stored["result"])
    result.cached = True
    return result


# ---- reading the header ----


def _decode(raw: bytes, result: FileResult | None = None) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        if result is not None:
            result.counters["lines_decoded_as_cp1252"] += 1
        return raw.decode("cp1252", errors="replace")


def read_header(path: Path, relative: str) -> Header:
    """Read and check the header line; raise FileError if a required column is missing."""
    with path.open("rb") as handle:
        first = handle.readline(1 << 20)
    if not first.strip():
        raise FileError(f"{relative}: the file is empty; expected a header line")
    if first.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise FileError(f"{relative}: the file is UTF-16; save it as UTF-8 and run again")
    if b"\n" not in first and first.count(b"\r") > 1:
        raise FileError(
            f"{relative}: lines end with a bare carriage return (classic Mac OS); convert "
            "the file to LF or CRLF line endings and run again"
        )
    bom = first.startswith(b"\xef\xbb\xbf")
    first = first.removeprefix(b"\xef\xbb\xbf")
    try:
        text = first.decode("utf-8")
        encoding = "utf-8"
    except UnicodeDecodeError:
        text = first.decode("cp1252", errors="replace")
        encoding = "cp1252"
    if "\x00" in text:
        raise FileError(f"{relative}: the file is binary, not CSV text; remove it from the folder")
    names = [name.strip().lower() for name in _parse_line(text.rstrip("\r\n"))]

    unnamed = sum(1 for name in names if _UNNAMED_RE.match(name))
    index: dict[str, int] = {}
    for position, name in enumerate(names):
        if name in REQUIRED_COLUMNS + TEXT_COLUMNS and name not in index:
            index[name] = position
    missing = [column for column in REQUIRED_COLUMNS if column not in index]
    if missing:
        raise FileError(
            f"{relative}: missing required column(s) {', '.join(map(repr, missing))}; "
            f"the header has {str(names)[:300]}. Expected the Amazon Products columns "
            "name,main_category,sub_category,image,link,ratings,no_of_ratings,"
            "discount_price,actual_price; move other CSV files out of the raw folder"
        )
    return Header(names=names, index=index, unnamed=unnamed, bom=bom, encoding=encoding)


# ---- turning raw string columns into the output batch ----


def _map_unique(values: pa.Array, function: Any, result_type: pa.DataType) -> tuple[pa.Array, int]:
    """Apply ``function`` once per distinct value; return the result and rows changed.

    Category and number columns have few distinct values per file, so mapping the
    dictionary of the column costs far less than a pass over every row.
    """
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    encoded = pc.dictionary_encode(values)
    dictionary = encoded.dictionary.to_pylist()
    mapped = [function(value) for value in dictionary]
    changed_ids = [i for i, (old, new) in enumerate(zip(dictionary, mapped)) if old != new]
    changed = 0
    if changed_ids:
        is_changed = pc.is_in(encoded.indices, pa.array(changed_ids, encoded.indices.type))
        changed = pc.sum(is_changed).as_py() or 0
    return pc.take(pa.array(mapped, type=result_type), encoded.indices), changed


def _normalised_category(normalise: Any, counters: Counter[str]) -> Any:
    """Return a function that repairs mojibake in a category value, then normalises it."""

    def apply(value: str) -> str:
        fixed, outcome = repair_mojibake(value)
        if outcome:
            counters["mojibake_repaired"] += 1
        elif outcome is None:
            counters["mojibake_suspect"] += 1
        return normalise(fixed)

    return apply


def _repair_names(names: pa.Array, result: FileResult) -> pa.Array:
    """Repair mojibake in product names; only names with non-ASCII text are looked at."""
    non_ascii = pc.invert(pc.string_is_ascii(names))
    if not pc.any(non_ascii).as_py():
        return names
    positions = pc.indices_nonzero(non_ascii)
    fixed, repaired, suspect = repair_mojibake_array(pc.take(names, positions))
    result.counters["mojibake_repaired"] += repaired
    result.counters["mojibake_suspect"] += suspect
    if not repaired:
        return names
    python_names = names.to_pylist()
    for position, value in zip(positions.to_pylist(), fixed.to_pylist()):
        python_names[position] = value
    return pa.array(python_names, pa.string())


def transform_columns(
    columns: dict[str, pa.Array],
    *,
    source_file: str,
    source_rows: pa.Array,
    source_lines: pa.Array,
    result: FileResult,
    collapse_name_whitespace: bool = False,
) -> pa.RecordBatch:
    """Build one output batch from the raw string columns of a block of rows.

    ``collapse_name_whitespace`` turns line breaks, tabs and runs of spaces in names
    into one space; only the line-by-line parser can produce such names.
    """
    length = len(source_rows)

    def column(name: str) -> pa.Array:
        values = columns.get(name)
        if values is None:
            return pa.array([""] * length, pa.string())
        if isinstance(values, pa.ChunkedArray):
            values = values.combine_chunks()
        return pc.fill_null(values, "")

    name = _repair_names(column("name"), result)
    if collapse_name_whitespace:
        name = pc.utf8_trim_whitespace(pc.replace_substring_regex(name, r"\s+", " "))

    categories = {}
    for column_name, normalise in (
        ("main_category", normalise_category),
        ("sub_category", collapse_whitespace),
    ):
        # The mojibake counters count distinct values here, not rows.
        function = _normalised_category(normalise, result.counters)
        categories[column_name], changed = _map_unique(column(column_name), function, pa.string())
        result.counters[f"{column_name}_values_normalised"] += changed

    trimmed = pc.utf8_trim_whitespace(column("image"))
    urls, reasons, rewritten = normalise_url_array(trimmed)
    result.counters["urls_rewritten"] += rewritten
    arrays = [
        pa.repeat(pa.scalar(source_file, pa.string()), length),
        source_rows,
        source_lines,
        name,
        categories["main_category"],
        categories["sub_category"],
        pc.coalesce(urls, trimmed),
        reasons,
        pa.array(key_numbers(urls), pa.uint64()),
    ]
    return pa.RecordBatch.from_arrays(arrays, schema=OUTPUT_SCHEMA)


# ---- the fast path: pyarrow's streaming reader ----


def _count_lines(path: Path) -> int:
    """Count physical lines; a last line without a line break counts too."""
    lines = 0
    last = b"\n"
    with path.open("rb") as handle:
        while block := handle.read(BLOCK_SIZE):
            lines += block.count(b"\n")
            last = block[-1:]
    return lines + (last != b"\n")


def read_fast(path: Path, header: Header, relative: str, result: FileResult) -> Iterator:
    """Yield output batches read with pyarrow; raise _NeedsTolerantParser on any doubt."""
    if header.encoding != "utf-8":
        raise _NeedsTolerantParser("the header is not UTF-8")
    generated = [f"c{position}" for position in range(len(header.names))]

    def on_invalid_row(row: Any) -> str:
        return "error"  # the reader raises ArrowInvalid and the tolerant parser takes over

    options = {
        "read_options": pacsv.ReadOptions(
            column_names=generated, skip_rows=1, block_size=BLOCK_SIZE, use_threads=True
        ),
        "parse_options": pacsv.ParseOptions(
            newlines_in_values=False, ignore_empty_lines=True, invalid_row_handler=on_invalid_row
        ),
        "convert_options": pacsv.ConvertOptions(
            column_types={f"c{i}": pa.string() for i in header.index.values()},
            include_columns=[f"c{i}" for i in header.index.values()],
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
        ),
    }
    rows = 0
    lines = None
    try:
        # A file object, unlike a path, also works for names that are not valid UTF-8.
        with path.open("rb") as handle:
            if path.stat().st_size <= WHOLE_FILE_BYTES:
                data = handle.read()
                lines = data.count(b"\n") + (not data.endswith(b"\n"))
                table = pacsv.read_csv(pa.BufferReader(data), **options)
                blocks: Any = table.to_batches()
            else:
                # Opening reads the first block, so a parse error can come from here too.
                blocks = pacsv.open_csv(handle, **options)
            for batch in blocks:
                columns = {name: batch.column(f"c{i}") for name, i in header.index.items()}
                source_rows = pa.array(np.arange(rows, rows + batch.num_rows, dtype=np.int64))
                yield transform_columns(
                    columns,
                    source_file=relative,
                    source_rows=source_rows,
                    source_lines=pc.add(source_rows, 2),
                    result=result,
                )
                rows += batch.num_rows
    except pa.ArrowInvalid as exc:
        raise _NeedsTolerantParser(str(exc).splitlines()[0][:200]) from exc

    # A value with a line break inside, a stray carriage return or a blank line (which
    # the reader skips) makes the number of rows differ from the number of lines; only
    # then are row and line numbers unsure, and the line-by-line parser takes over.
    if rows + 1 != (lines if lines is not None else _count_lines(path)):
        raise _NeedsTolerantParser("the row count does not match the line count")
    result.rows_read = rows


# ---- the tolerant path: line by line, with repairs ----


def _scan_quotes(text: str) -> tuple[list[int], bool]:
    """Return the positions of quotes that open a field and whether the last stays open."""
    positions = []
    in_quotes = False
    field_start = True
    i = 0
    while i < len(text):
        char = text[i]
        if in_quotes:
            if char == '"':
                if text[i + 1 : i + 2] == '"':
                    i += 2
                    continue
                in_quotes = False
        elif char == '"' and field_start:
            in_quotes = True
            positions.append(i)
        field_start = not in_quotes and char == ","
        i += 1
    return positions, in_quotes


def _open_quote_position(text: str) -> int | None:
    """Return where a quoted field opens and is never closed in ``text``, else None."""
    positions, still_open = _scan_quotes(text)
    return positions[-1] if still_open else None


_CR_PLACEHOLDER = "\uffff"  # a Unicode noncharacter, never in real text


def _parse_line(text: str) -> list[str]:
    """Split one record into fields; an unparsable record gives no fields."""
    # The csv module rejects a bare carriage return outside quotes, so it is swapped
    # for a placeholder while parsing and put back in every field afterwards.
    try:
        if "\r" not in text:
            return next(csv.reader([text], strict=False), [])
        fields = next(csv.reader([text.replace("\r", _CR_PLACEHOLDER)], strict=False), [])
    except csv.Error:  # a field over csv.field_size_limit()
        return []
    return [value.replace(_CR_PLACEHOLDER, "\r") for value in fields]


class _LineReader:
    """Physical lines split on ``\\n`` only, so a lone ``\\r`` stays inside a value."""

    def __init__(self, path: Path, result: FileResult) -> None:
        self._handle = path.open("rb")
        self._pushed: list[tuple[int, str]] = []
        self._line_number = 0
        self._result = result

    def __iter__(self) -> _LineReader:
        return self

    def __next__(self) -> tuple[int, str]:
        if self._pushed:
            return self._pushed.pop()
        raw = self._handle.readline()
        if not raw:
            raise StopIteration
        self._line_number += 1
        if self._line_number == 1:
            raw = raw.removeprefix(b"\xef\xbb\xbf")
        text = _decode(raw.removesuffix(b"\n"), self._result)
        return self._line_number, text.removesuffix("\r")

    def push_back(self, lines: list[tuple[int, str]]) -> None:
        self._pushed.extend(reversed(lines))

    def close(self) -> None:
        self._handle.close()


def _fit_fields(fields: list[str], width: int, name_index: int | None) -> list[str] | None:
    """Fold extra fields into the name column (its commas were not quoted), else None.

    More than ``MAX_FOLDED_FIELDS`` extra fields is not a product name but a broken
    line, and gives None.
    """
    if len(fields) == width:
        return fields
    if len(fields) < width or name_index is None or len(fields) - width > MAX_FOLDED_FIELDS:
        return None
    extra = len(fields) - width
    name = ",".join(fields[name_index : name_index + extra + 1])
    return fields[:name_index] + [name] + fields[name_index + extra + 1 :]


def _join_quoted_lines(first: str, lines: _LineReader, width: int) -> tuple[list[str], int] | None:
    """Join following lines while a quoted value stays open; None if that gives no row."""
    taken: list[tuple[int, str]] = []
    text = first
    for number, line in lines:
        taken.append((number, line))
        text += "\n" + line
        if _open_quote_position(text) is None:
            fields = _parse_line(text)
            if len(fields) == width:
                return fields
            break
        if len(taken) >= MAX_JOINED_LINES:
            break
    lines.push_back(taken)
    return None


def _literal_quote_fields(text: str, position: int) -> list[str]:
    """Parse ``text`` treating the quote at ``position`` as an ordinary character."""
    fields = _parse_line(text[:position] + text[position + 1 :])
    before = _parse_line(text[:position]) if position else []
    field_index = max(len(before) - 1, 0)
    if field_index < len(fields):
        fields[field_index] = '"' + fields[field_index]
    return fields


def _best_reading(text: str, fields: list[str], width: int) -> tuple[list[str], bool]:
    """Choose between the plain parse and reading one quote as an ordinary character.

    Returns ``(fields, stray_quote)``. A reading with exactly ``width`` fields wins;
    otherwise the one with the fewest fields above ``width`` (extra fields are unquoted
    commas, folded into the name later), the plain parse first on a tie. Only the first
    ``MAX_STRAY_QUOTE_CANDIDATES`` quotes of lines up to ``MAX_REPAIR_LINE_CHARS`` are
    tried, so a hostile line cannot make this quadratic.
    """
    readings = [(fields, False)]
    if len(text) <= MAX_REPAIR_LINE_CHARS:
        quotes = _scan_quotes(text)[0][:MAX_STRAY_QUOTE_CANDIDATES]
        readings += [(_literal_quote_fields(text, p), True) for p in quotes]
    for reading in readings:
        if len(reading[0]) == width:
            return reading
    wider = [reading for reading in readings if len(reading[0]) > width]
    if wider:
        return min(wider, key=lambda reading: len(reading[0]))
    return fields, False


def iter_tolerant_records(
    path: Path, header: Header, result: FileResult
) -> Iterator[tuple[int, list[str]]]:
    """Yield ``(line_number, fields)`` for each row that could be read or repaired."""
    width = len(header.names)
    name_index = header.index.get("name")
    csv.field_size_limit(max(csv.field_size_limit(), MAX_FIELD_CHARS))
    lines = _LineReader(path, result)
    try:
        next(lines, None)  # the header, already read by read_header
        for number, text in lines:
            if not text.strip():
                result.counters["blank_lines_skipped"] += 1
                continue
            result.rows_read += 1

            fields = _parse_line(text)
            if len(fields) != width:
                # A line that cannot be a whole row, even with one quote read as an
                # ordinary character, may hold the start of a value that goes on over
                # the next lines. Otherwise one quote may be stray, and unquoted commas
                # in the name are folded back into it by _fit_fields below.
                reading, stray_quote = _best_reading(text, fields, width)
                if len(reading) < width and _open_quote_position(text) is not None:
                    joined = _join_quoted_lines(text, lines, width)
                    if joined is not None:
                        result.counters["rows_spanning_lines"] += 1
                        yield number, joined
                        continue
                fields = reading
                if stray_quote:
                    result.counters["rows_repaired_stray_quote"] += 1

            fitted = _fit_fields(fields, width, name_index)
            if fitted is None:
                reason = "too_few_fields" if len(fields) < width else "too_many_fields"
                result.reject(number, reason, text)
                continue
            if len(fields) != width:
                result.counters["rows_repaired_unquoted_commas"] += 1
            if "\r" in text:
                result.counters["rows_with_carriage_return"] += 1
            yield number, fitted
    finally:
        lines.close()


def read_tolerant(path: Path, header: Header, relative: str, result: FileResult) -> Iterator:
    """Yield output batches read by the line-by-line parser."""
    result.parser = "tolerant"
    buffer: dict[str, list[str]] = {name: [] for name in header.index}
    rows: list[int] = []
    lines: list[int] = []

    def flush() -> pa.RecordBatch:
        batch = transform_columns(
            {name: pa.array(values, pa.string()) for name, values in buffer.items()},
            source_file=relative,
            source_rows=pa.array(rows, pa.int64()),
            source_lines=pa.array(lines, pa.int64()),
            result=result,
            collapse_name_whitespace=True,
        )
        for values in buffer.values():
            values.clear()
        rows.clear()
        lines.clear()
        return batch

    row = 0
    for number, fields in iter_tolerant_records(path, header, result):
        for name, position in header.index.items():
            buffer[name].append(fields[position])
        rows.append(row)
        lines.append(number)
        row += 1
        if len(rows) >= TOLERANT_BATCH_ROWS:
            yield flush()
    if rows:
        yield flush()


# ---- one file ----


def extract_file(path: Path, relative: str, output: Path) -> FileResult:
    """Extract one CSV file into ``output`` (atomically) and return its counts."""
    header = read_header(path, relative)
    source = fingerprint(path, relative)

    def new_result() -> FileResult:
        return FileResult(
            source_file=relative,
            bom=header.bom,
            encoding=header.encoding,
            unnamed_columns=header.unnamed,
        )

    result = new_result()
    try:
        _write_output(read_fast(path, header, relative, result), output, source, result)
    except _NeedsTolerantParser as reason:
        # pyarrow's message quotes the row, which may hold a URL with a password.
        logger.info("%s: reading line by line (%s)", relative, redact_text(str(reason)))
        result = new_result()
        _write_output(read_tolerant(path, header, relative, result), output, source, result)
    return result


def _write_output(
    batches: Iterator[pa.RecordBatch],
    output: Path,
    source: dict[str, Any],
    result: FileResult,
) -> None:
    """Write the batches to ``output``, then its counts beside it, each atomically.

    The old counts file goes first, so an interruption between the two writes leaves an
    output without counts, which the next run extracts again.
    """
    counts_path(output).unlink(missing_ok=True)
    with atomic_path(output) as tmp:
        with pa.ipc.new_file(tmp, OUTPUT_SCHEMA) as writer:
            for batch in batches:
                writer.write_batch(batch)
                result.rows_written += batch.num_rows
    if result.counters["lines_decoded_as_cp1252"] and result.encoding == "utf-8":
        result.encoding = "mixed"
    write_json(counts_path(output), {"fingerprint": source, "result": result.to_json()})


# ---- the stage ----


def run_extract(source_dir: Path, out_dir: Path, *, strict: bool = False) -> dict[str, Any]:
    """Extract every CSV under ``source_dir`` into ``out_dir/extracted``; return the stats.

    Raises FileNotFoundError when ``source_dir`` does not exist, ValueError when the two
    folders overlap, and RuntimeError when another run is writing into ``out_dir``. With
    ``strict``, a file that could not be extracted raises FileError after all other
    files are done.
    """
    check_folders(source_dir, out_dir)
    with stage_lock(out_dir):
        return _run_extract(source_dir, out_dir, strict=strict)


def _run_extract(source_dir: Path, out_dir: Path, *, strict: bool) -> dict[str, Any]:
    started = time.monotonic()
    csv_files, skipped = discover_files(source_dir)
    if not csv_files:
        raise FileNotFoundError(
            f"no *.csv files under {str(source_dir)!r}; run 'make download' or pass "
            "RAW_DIR=<folder with the Amazon Products CSV files>"
        )
    extracted_dir = out_dir / "extracted"
    _remove_temporary_files(extracted_dir)
    logger.info("extract: %d CSV files under %s -> %s", len(csv_files), source_dir, extracted_dir)

    results: list[FileResult] = []
    failed: list[dict[str, str]] = []
    wanted_outputs: set[str] = set()
    progress = tqdm(total=len(csv_files), desc="extract", unit="file", disable=None)
    # pyarrow parses and computes with the GIL released, so two files at a time keep
    # both cores busy where one file alone leaves gaps between its steps.
    pool = ThreadPoolExecutor(max_workers=EXTRACT_THREADS)
    try:
        jobs = [
            pool.submit(_extract_or_reuse, path, source_dir, extracted_dir) for path in csv_files
        ]
        for job in jobs:
            relative, output_file, result, error = job.result()
            wanted_outputs.add(output_file)
            progress.update(1)
            if error is not None:
                failed.append({"source_file": relative, "reason": error})
                continue
            results.append(result)
            progress.set_postfix(rows=sum(r.rows_written for r in results), refresh=False)
    finally:
        # On Ctrl-C, files not started yet are dropped; the ones in progress finish.
        pool.shutdown(wait=True, cancel_futures=True)
        progress.close()

    removed = _remove_stale_outputs(extracted_dir, wanted_outputs)
    stats = summarise(results, skipped, failed, removed, time.monotonic() - started)
    write_stats(out_dir, STAGE, stats)
    _write_rejects(out_dir, results)
    logger.info(
        "extract: done in %.1f s: %d files extracted, %d unchanged, %d failed; %d rows read, "
        "%d rows kept, %d rows rejected",
        stats["seconds"],
        stats["files_extracted"],
        stats["files_unchanged"],
        len(failed),
        stats["rows_read"],
        stats["rows_written"],
        stats["rows_rejected"],
    )
    if strict and failed:
        raise FileError(f"{len(failed)} file(s) could not be extracted (see the log above)")
    return stats


def _extract_or_reuse(
    path: Path, source_dir: Path, extracted_dir: Path
) -> tuple[str, str, FileResult | None, str | None]:
    """Extract one file unless its output is current; return (name, output, result, error)."""
    relative = display_name(path.relative_to(source_dir))
    output = extracted_dir / output_name(path.relative_to(source_dir).as_posix())
    result = read_cached_result(output, fingerprint(path, relative))
    if result is not None:
        return relative, output.name, result, None
    try:
        return relative, output.name, extract_file(path, relative, output), None
    except FileError as exc:
        logger.error("%s", exc)
        _remove_quietly(output)
        return relative, output.name, None, str(exc)
    except OSError as exc:
        logger.error("%s: %s", relative, exc)
        _remove_quietly(output)
        return relative, output.name, None, f"{relative}: {exc}"


def check_folders(source_dir: Path, out_dir: Path) -> None:
    """Raise FileNotFoundError or OSError, naming the fix, before any work starts."""
    if str(source_dir) in ("", "."):
        raise FileNotFoundError(
            "RAW_DIR is empty; pass RAW_DIR=<folder with the Amazon Products CSV files>"
        )
    if not source_dir.exists():
        raise FileNotFoundError(
            f"raw folder {str(source_dir)!r} does not exist; run 'make download' or pass "
            "RAW_DIR=<folder with the Amazon Products CSV files>"
        )
    if not source_dir.is_dir():
        raise FileNotFoundError(
            f"RAW_DIR {str(source_dir)!r} is a file; pass the folder that contains the CSV files"
        )
    raw, processed = source_dir.resolve(), out_dir.resolve()
    if raw == processed or raw in processed.parents or processed in raw.parents:
        raise ValueError(
            f"PROCESSED_DIR {str(out_dir)!r} and RAW_DIR {str(source_dir)!r} overlap, so "
            "extract would read its own output as input and 'make clean' would delete raw "
            "files; pass two separate folders"
        )
    probe = out_dir / "extracted"
    try:
        probe.mkdir(parents=True, exist_ok=True)
        with atomic_path(probe / ".write-check"):
            pass
        (probe / ".write-check").unlink()
    except OSError as exc:
        raise OSError(
            f"cannot write to {str(probe)!r} ({exc.strerror or exc}); pass "
            "PROCESSED_DIR=<writable folder> (--out-dir)"
        ) from exc


def _remove_temporary_files(folder: Path) -> None:
    """Remove temporary files that a killed run left behind."""
    for leftover in folder.glob(".*.tmp"):
        _remove_quietly(leftover)


def _remove_quietly(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        logger.warning("could not remove %s: %s", path, exc)


def _remove_stale_outputs(extracted_dir: Path, wanted: set[str]) -> list[str]:
    """Remove outputs whose source file is gone, and files of an older output format."""
    removed = []
    for output in sorted(extracted_dir.iterdir()):
        stem_output = output.with_suffix(".arrow").name
        if output.name.startswith(".") or stem_output in wanted:
            continue
        output.unlink()
        if output.suffix == ".arrow":
            removed.append(output.name)
            logger.info("removed %s: its source file is gone", output.name)
    return removed


def summarise(
    results: list[FileResult],
    skipped: list[dict[str, str]],
    failed: list[dict[str, str]],
    removed: list[str],
    seconds: float,
) -> dict[str, Any]:
    """Add up the per-file counts into the stage's stats."""
    counters: Counter[str] = Counter()
    for result in results:
        counters.update(result.counters)
    rejected = {
        key.removeprefix("rejected_"): value
        for key, value in sorted(counters.items())
        if key.startswith("rejected_")
    }
    return {
        "seconds": round(seconds, 3),
        "files_found": len(results) + len(failed),
        "files_extracted": sum(not r.cached for r in results),
        "files_unchanged": sum(r.cached for r in results),
        "files_failed": failed,
        "files_skipped": skipped,
        "outputs_removed": removed,
        "header_only_files": sorted(r.source_file for r in results if r.rows_read == 0),
        "files_read_line_by_line": sorted(r.source_file for r in results if r.parser != "fast"),
        "files_with_bom": sum(r.bom for r in results),
        "files_not_utf8": sorted(r.source_file for r in results if r.encoding != "utf-8"),
        "unnamed_columns_dropped": sum(r.unnamed_columns for r in results),
        "rows_read": sum(r.rows_read for r in results),
        "rows_written": sum(r.rows_written for r in results),
        "rows_rejected": sum(rejected.values()),
        "rows_rejected_by_reason": rejected,
        "counters": {k: v for k, v in sorted(counters.items()) if not k.startswith("rejected_")},
        "rows_per_file": {r.source_file: r.rows_written for r in results},
    }


def _write_rejects(out_dir: Path, results: list[FileResult]) -> None:
    path = out_dir / "rejects" / f"{STAGE}.csv"
    with atomic_path(path) as tmp:
        with tmp.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["source_file", "source_line", "reason", "text"])
            for result in results:
                for reject in result.rejects:
                    writer.writerow(
                        [result.source_file, reject["line"], reject["reason"], reject["text"]]
                    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m data.scripts.extract",
        description="Keep categories, image URL and origin of every row of the CSV files.",
    )
    parser.add_argument(
        "--raw-dir",
        type=Path,
        default=raw_dir(DEFAULT_DATA_VERSION),
        help="folder searched recursively for *.csv files (default: data/raw/v1)",
    )
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=processed_dir(DEFAULT_DATA_VERSION),
        help="processed data folder; files go to OUT_DIR/extracted (default: data/processed/v1)",
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="exit with status 1 if any CSV file could not be extracted (default: log and go on)",
    )
    parser.add_argument("--verbose", action="store_true", help="log debug messages")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        run_extract(args.raw_dir, args.out_dir, strict=args.strict)
    except (FileError, OSError, RuntimeError, ValueError) as exc:
        logger.error("%s", exc)
        return 1
    except KeyboardInterrupt:
        logger.error("extract: interrupted; files done so far are kept, run again to go on")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
