"""Where texts come from: .txt, .jsonl, .csv and parquet files (a file, a directory or a glob of them, local or
on any pyarrow filesystem), stdin, or a list in memory.

A source yields its rows in order as pyarrow tables of at most CHUNK_ROWS rows holding only the columns asked
for (the text field, an id field, kept columns), so a corpus of any size streams through in bounded memory.
`scan()` reads a file once before any work, to count its rows and report a malformed line up front.
"""

from __future__ import annotations

import csv
import glob
import json
import os
import sys
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from itertools import islice
from pathlib import Path
from typing import IO, Any

import pyarrow as pa

from gte_defaults import DEFAULT_FIELD

INPUT_FORMATS = (".txt", ".jsonl", ".csv", ".parquet")
CHUNK_ROWS = 4096

Record = dict[str, Any]


class InputError(ValueError):
    """An unreadable or malformed input, or a missing field / column."""


class Source(ABC):
    """Rows in input order, as pyarrow tables."""

    name: str  # for messages: a path, "<stdin>", "<arguments>"
    num_rows: int | None = None  # known after scan() for files and lists, never for stdin

    def scan(self, columns: Sequence[str]) -> None:
        """Check that `columns` can be read (and count the rows where that needs a pass over the input)."""

    @abstractmethod
    def chunks(self, columns: Sequence[str]) -> Iterator[pa.Table]:
        """Tables of at most CHUNK_ROWS rows with exactly `columns`, in input order."""

    def fingerprint(self) -> list | None:
        """What identifies this input for a resumed job (None: nothing does)."""
        return None


def open_source(location: str | os.PathLike | None, field: str = DEFAULT_FIELD) -> Source:
    """The source for a path, directory, glob or URI (by extension: INPUT_FORMATS), or stdin for None."""
    if location is None:
        return StdinSource(field)
    text = str(location)
    suffix = Path(text.rstrip("/")).suffix.lower()
    dataset = suffix not in INPUT_FORMATS and _is_directory(text)  # a directory or a bucket prefix
    if suffix == ".parquet" or dataset or (glob.has_magic(text) and text.endswith(".parquet")):
        return ParquetSource(text, field)
    if "://" in text:
        raise InputError(f"{text}: URIs are read as parquet datasets; copy a {suffix} file here, or convert it to parquet")
    if suffix not in INPUT_FORMATS:
        raise InputError(f"{text}: unknown input format {suffix or '(no extension)'!r}; use one of {', '.join(INPUT_FORMATS)}")
    path = Path(text)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    return {".txt": TextSource, ".jsonl": JsonlSource, ".csv": CsvSource}[suffix](path, field)


def read_texts(location: str | os.PathLike | None, field: str = DEFAULT_FIELD) -> list[str]:
    """Every text of a source, in a list (for inputs that fit in memory, like a query's documents)."""
    source = open_source(location, field)
    source.scan([field])
    return [text for chunk in source.chunks([field]) for text in chunk.column(field).to_pylist()]


# ------------------------------------------------------------------------------ line-based formats
class RecordSource(Source):
    """A text format read record by record: subclasses yield (line number, record)."""

    def __init__(self, path: Path | None, field: str):
        self.path, self.field = path, field
        self.name = str(path)

    @abstractmethod
    def records(self, stream: IO[str]) -> Iterator[tuple[int, Record]]: ...

    def open(self) -> AbstractContextManager[IO[str]]:
        return self.path.open(encoding="utf-8-sig", newline="")

    def scan(self, columns: Sequence[str]) -> None:
        self.num_rows = sum(1 for _ in self._checked(columns))

    def chunks(self, columns: Sequence[str]) -> Iterator[pa.Table]:
        rows = self._checked(columns)
        while batch := list(islice(rows, CHUNK_ROWS)):
            yield self._table(batch, columns)

    def fingerprint(self) -> list | None:
        stat = self.path.stat()
        return [str(self.path.resolve()), stat.st_size, stat.st_mtime_ns]

    def _checked(self, columns: Sequence[str]) -> Iterator[tuple[int, Record]]:
        number = 0
        try:
            with self.open() as stream:
                for number, record in self.records(stream):
                    yield number, self._check(number, record, columns)
        except UnicodeDecodeError as error:
            raise InputError(f"{self.name}, after line {number}: not UTF-8 text ({error.reason})") from error  # csv
        except OSError as error:
            raise InputError(f"{self.name}: cannot read it ({error.strerror or error})") from error

    def _check(self, number: int, record: Record, columns: Sequence[str]) -> Record:
        where = f"{self.name}, line {number}"
        if self.field not in record:
            fields = ", ".join(record) or "none"
            raise InputError(f"{where}: no field {self.field!r} (fields: {fields}); choose one with --field")
        if not isinstance(record[self.field], str):
            raise InputError(f"{where}: field {self.field!r} is {type(record[self.field]).__name__}, not a string")
        missing = [c for c in columns if c not in record]
        if missing:
            raise InputError(f"{where}: no field {missing[0]!r} (fields: {', '.join(record)})")
        return record

    def _table(self, batch: list[tuple[int, Record]], columns: Sequence[str]) -> pa.Table:
        try:
            return pa.table({c: [record[c] for _, record in batch] for c in columns})
        except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
            raise InputError(f"{self.name}, lines {batch[0][0]}-{batch[-1][0]}: a field mixes types ({error}); give each "
                             "field one type") from error


class TextSource(RecordSource):
    """.txt: one text per line; only line feeds end a text (str.splitlines would also split at \\x0c, \\u2028)."""

    def open(self) -> AbstractContextManager[IO[bytes]]:
        return self.path.open("rb")

    def records(self, stream: IO[bytes]) -> Iterator[tuple[int, Record]]:
        for number, line in _decoded(stream, self.name):
            line = line[:-1] if line.endswith("\n") else line
            yield number, {self.field: line[:-1] if line.endswith("\r") else line}

    def _check(self, number: int, record: Record, columns: Sequence[str]) -> Record:
        if set(columns) - {self.field}:
            raise InputError(f"{self.name}: a .txt input holds one text per line and no other fields; "
                             "use .jsonl, .csv or .parquet for ids and kept columns")  # fmt: skip
        return record


class StdinSource(TextSource):
    """Text lines piped into stdin (UTF-8, checked line by line)."""

    def __init__(self, field: str):
        super().__init__(None, field)
        self.name = "<stdin>"

    def open(self) -> AbstractContextManager[IO[str]]:
        if sys.stdin is None or sys.stdin.isatty():
            raise InputError("no input: pass texts as arguments, a file with --input, or pipe text lines into stdin")
        return nullcontext(getattr(sys.stdin, "buffer", sys.stdin))  # bytes, or text where stdin is a StringIO

    def scan(self, columns: Sequence[str]) -> None:
        self._check(0, {}, columns)  # stdin is read once, while the job runs

    def fingerprint(self) -> list | None:
        return None


class JsonlSource(RecordSource):
    """.jsonl: one JSON object per line; blank lines are skipped."""

    def open(self) -> AbstractContextManager[IO[bytes]]:
        return self.path.open("rb")

    def records(self, stream: IO[bytes]) -> Iterator[tuple[int, Record]]:
        for number, line in _decoded(stream, self.name):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise InputError(f"{self.name}, line {number}: not valid JSON ({error.msg})") from error
            if not isinstance(record, dict):
                raise InputError(f"{self.name}, line {number}: expected a JSON object with a {self.field!r} field")
            yield number, record


class CsvSource(RecordSource):
    """.csv: a header row, then one record per row (quoted fields may hold line breaks); a UTF-8 BOM is skipped."""

    def records(self, stream: IO[str]) -> Iterator[tuple[int, Record]]:
        reader = csv.reader(stream, strict=True)
        header = self._header(reader)
        start = reader.line_num + 1
        try:
            for row in reader:
                if row and len(row) != len(header):
                    raise InputError(f"{self.name}, line {start}: {len(row)} fields where the header has {len(header)}")
                if row:
                    yield start, dict(zip(header, row))
                start = reader.line_num + 1
        except csv.Error as error:
            raise InputError(f"{self.name}, line {start}: malformed CSV ({error}); is a quote left open?") from error

    def _header(self, reader: Any) -> list[str]:
        try:
            header = next(reader, [])
        except csv.Error as error:
            raise InputError(f"{self.name}, line 1: malformed CSV header ({error})") from error
        if self.field not in header:
            raise InputError(f"{self.name}: no column {self.field!r} (columns: {', '.join(header) or 'none'}); choose one with --field")
        return header

    def _check(self, number: int, record: Record, columns: Sequence[str]) -> Record:
        missing = [c for c in columns if c not in record]
        if missing:
            raise InputError(f"{self.name}: no column {missing[0]!r} (columns: {', '.join(record)})")
        return record


def _decoded(lines: Iterable[bytes | str], name: str) -> Iterator[tuple[int, str]]:
    """(line number, line), each line decoded as strict UTF-8 (a BOM before the first one dropped)."""
    for number, line in enumerate(lines, start=1):
        if isinstance(line, bytes):
            try:
                line = line.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as error:
                raise InputError(f"{name}, line {number}: not UTF-8 text ({error.reason} at byte {error.start} of the line)") from error
        yield number, line


# ------------------------------------------------------------------------------ parquet
class ParquetSource(Source):
    """A parquet file, or every *.parquet file under a directory or matching a glob, read as one dataset in
    path order, record batch by record batch; local paths or URIs (s3://, gs://, ...) via pyarrow filesystems."""

    def __init__(self, location: str, field: str = DEFAULT_FIELD):
        import pyarrow.parquet as pq

        self.name, self.field = location, field
        self.filesystem, self.files = _parquet_files(location)
        try:
            self.metadata = [pq.read_metadata(self.filesystem.open_input_file(f)) for f in self.files]
        except (pa.ArrowException, OSError) as error:
            raise InputError(f"{location}: not a readable parquet file ({error})") from error
        self.schema = self.metadata[0].schema.to_arrow_schema().remove_metadata()
        for path, meta in zip(self.files[1:], self.metadata[1:]):
            if not meta.schema.to_arrow_schema().remove_metadata().equals(self.schema):
                other = meta.schema.to_arrow_schema()
                raise InputError(f"{location}: the files of a dataset must share one schema; {path} has "
                                 f"{_describe(other)}, {self.files[0]} has {_describe(self.schema)}")  # fmt: skip
        self.num_rows = sum(meta.num_rows for meta in self.metadata)

    def scan(self, columns: Sequence[str]) -> None:
        for column in columns:
            if column not in self.schema.names:
                raise InputError(f"{self.name}: no column {column!r} (columns: {', '.join(self.schema.names)}); "
                                 "choose one with --field")  # fmt: skip
        kind = self.schema.field(self.field).type
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)):
            raise InputError(f"{self.name}: column {self.field!r} holds {kind}, not strings")

    def chunks(self, columns: Sequence[str]) -> Iterator[pa.Table]:
        import pyarrow.parquet as pq

        for path in self.files:
            with self.filesystem.open_input_file(path) as f:
                for batch in pq.ParquetFile(f).iter_batches(batch_size=CHUNK_ROWS, columns=list(columns)):
                    yield pa.Table.from_batches([batch])

    def fingerprint(self) -> list | None:
        infos = self.filesystem.get_file_info(self.files)
        return [[info.path, info.size, info.mtime_ns] for info in infos]


def _describe(schema: pa.Schema) -> str:
    return "(" + ", ".join(f"{f.name}: {f.type}" for f in schema) + ")"


def _is_directory(location: str) -> bool:
    return "://" in location or os.path.isdir(location)


def _parquet_files(location: str) -> tuple[Any, list[str]]:
    """(filesystem, sorted file paths) of a parquet file, directory or glob."""
    from pyarrow import fs

    try:
        filesystem, root = fs.FileSystem.from_uri(location) if "://" in location else (fs.LocalFileSystem(), location)
        if "://" not in location and glob.has_magic(location):
            files = sorted(os.path.abspath(p) for p in glob.glob(location, recursive=True) if os.path.isfile(p))
        else:
            info = filesystem.get_file_info(root)
            if info.type == fs.FileType.NotFound:
                raise InputError(f"{location}: no such file or directory")
            if info.type == fs.FileType.Directory:
                selector = fs.FileSelector(root, recursive=True)
                files = sorted(i.path for i in filesystem.get_file_info(selector) if _is_data_file(i))
            else:
                files = [root]
    except (pa.ArrowException, OSError) as error:
        raise InputError(f"{location}: cannot list it ({error})") from error
    if not files:
        raise InputError(f"{location}: no .parquet files there; pass a .parquet file, a directory or a glob of them")
    return filesystem, files


def _is_data_file(info: Any) -> bool:
    from pyarrow import fs

    hidden = any(part.startswith((".", "_")) for part in Path(info.path).parts)
    return info.type == fs.FileType.File and info.path.endswith(".parquet") and not hidden


# ------------------------------------------------------------------------------ in memory
class ListSource(Source):
    """Texts given as arguments or from Python."""

    def __init__(self, texts: Iterable[str], field: str = DEFAULT_FIELD, name: str = "<arguments>"):
        self.texts, self.field, self.name = list(texts), field, name
        self.num_rows = len(self.texts)

    def scan(self, columns: Sequence[str]) -> None:
        if set(columns) - {self.field}:
            raise InputError(f"{self.name}: texts given directly have no ids or other fields; use an input file")

    def chunks(self, columns: Sequence[str]) -> Iterator[pa.Table]:
        for start in range(0, len(self.texts), CHUNK_ROWS):
            yield pa.table({self.field: pa.array(self.texts[start : start + CHUNK_ROWS], type=pa.string())})

    def fingerprint(self) -> list | None:
        import hashlib

        digest = hashlib.sha256()
        for text in self.texts:
            digest.update(text.encode("utf-8", "surrogatepass") + b"\0")
        return [self.name, digest.hexdigest()]
