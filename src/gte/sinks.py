"""Where embeddings go: .parquet, .jsonl or .npy files built part by part, or JSON lines on a stream.

A file output is built in a work directory next to it, `<output>.partial/`: each completed window of rows
becomes a durable part there (written to a temporary name, synced, renamed), and only when every row is in is
the final file assembled under a temporary name and renamed to the output. So nothing ever stands under the
output's name before the job is complete, and a killed job keeps every part it finished. Each part is recorded
with its row count and the sha256 of its bytes (for .npy, of its rows' byte range in the one preallocated
data.npy), so a resumed job keeps only the parts it can prove are the ones written.

Schema of a table (parquet columns, JSON fields): the id column (the `--id-field`'s name and values, or `id`,
the int64 row number), then `embedding` (fixed-size list<float32>[dim]; quantized: of int8 or uint8, [dim], or
[dim / 8] packed bits for binary / ubinary) or `sparse` (map<string, float32>), then the kept columns.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import pyarrow as pa

from .sources import InputError

OUTPUT_FORMATS = (".parquet", ".jsonl", ".npy")
SPARSE_FORMATS = (".parquet", ".jsonl")
BLOCK = 1 << 20  # bytes hashed at a time


@dataclass(frozen=True)
class Part:
    """A finished window, durable in the work directory: its file, its rows and the sha256 of its bytes."""

    name: str
    rows: int
    sha256: str


class Sink(ABC):
    """Writes the windows of one job in order."""

    @abstractmethod
    def write(self, index: int, start: int, table: pa.Table) -> Part | None:
        """Write window `index` (rows start.. of the output); return the durable part, if any."""

    def finish(self, parts: list[Part]) -> None:
        """Assemble the output from every part (called once, after the last window)."""


# ------------------------------------------------------------------------------ streams
class JsonlStream(Sink):
    """JSON lines on a text stream (stdout), window by window."""

    def __init__(self, stream: IO[str]):
        self.stream = stream

    def write(self, index: int, start: int, table: pa.Table) -> None:
        write_jsonl(self.stream, table)
        self.stream.flush()


def write_jsonl(stream: IO[str], table: pa.Table) -> None:
    """One JSON object per row, its fields in the table's order; dense vectors as float32 decimals (the shortest
    that round-trip), formatted without the json module for speed."""
    import json

    if "embedding" not in table.column_names:
        for row in table.to_pylist():
            row["sparse"] = dict(row["sparse"])
            stream.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
        return
    names = table.column_names
    at = names.index("embedding")
    before, after = _rows(table, names[:at]), _rows(table, names[at + 1 :])
    for head, vector, tail in zip(before, _vectors(table), after):
        opening = json.dumps(head, ensure_ascii=False, default=str)[:-1] + ", " if head else "{"
        closing = ", " + json.dumps(tail, ensure_ascii=False, default=str)[1:] if tail else "}"
        stream.write(f'{opening}"embedding": [{", ".join(map(str, vector))}]{closing}\n')


def _rows(table: pa.Table, names: list[str]) -> list[dict]:
    return table.select(names).to_pylist() if names else [{}] * table.num_rows


def _vectors(table: pa.Table) -> np.ndarray:
    """The embedding column as [n, width] (float32, or the quantized dtype)."""
    column = table.column("embedding").combine_chunks()
    return column.values.to_numpy(zero_copy_only=False).reshape(len(column), column.type.list_size)


# ------------------------------------------------------------------------------ files
class FileSink(Sink):
    """Writes each window as a durable part in the work directory, a byte range of a file."""

    @abstractmethod
    def span(self, index: int, start: int, rows: int) -> tuple[Path, int, int | None]:
        """Where window `index` (rows start..) lies: its file, first byte and size (None: to the file's end)."""

    def damage(self, index: int, start: int, part: Part) -> str | None:
        """What is wrong with finished part `index` (rows start..) as it stands; None when its bytes are those
        written."""
        path, offset, size = self.span(index, start, part.rows)
        if part.name != path.name:
            return f"the manifest lists {part.name!r} as part {index}, where {path.name} belongs"
        if not path.is_file():
            return f"{path} is missing"
        if sha256(path, offset, size) != part.sha256:
            where = "" if size is None else f"rows {start} to {start + part.rows - 1} of "
            return f"the sha256 of {where}{path} differs from the one recorded"
        return None


class PartFiles(FileSink):
    """Parquet or JSON-lines parts in the work directory, concatenated at the end."""

    def __init__(self, output: Path, work: Path):
        self.output, self.work = output, work
        self.suffix = output.suffix.lower()

    def span(self, index: int, start: int, rows: int) -> tuple[Path, int, None]:
        return self.work / f"part-{index:06d}{self.suffix}", 0, None

    def write(self, index: int, start: int, table: pa.Table) -> Part:
        path = self.span(index, start, table.num_rows)[0]
        with durable(path) as tmp:
            if self.suffix == ".parquet":
                import pyarrow.parquet as pq

                pq.write_table(table, tmp)
            else:
                with tmp.open("w", encoding="utf-8") as f:
                    write_jsonl(f, table)
            digest = sha256(tmp)
        return Part(path.name, table.num_rows, digest)

    def finish(self, parts: list[Part]) -> None:
        with durable(self.output) as tmp:
            if self.suffix == ".parquet":
                _concat_parquet([self.work / p.name for p in parts], tmp)
            else:
                with tmp.open("wb") as out:
                    for part in parts:
                        with (self.work / part.name).open("rb") as f:
                            shutil.copyfileobj(f, out)


def _concat_parquet(parts: list[Path], target: Path) -> None:
    """One parquet file with a row group per part, in one schema (a column that was all null in early parts
    takes the type it has later)."""
    import pyarrow.parquet as pq

    schema = unify([pq.read_schema(p) for p in parts]) if parts else pa.schema([])
    with pq.ParquetWriter(target, schema) as writer:
        for part in parts:
            writer.write_table(pq.read_table(part).cast(schema))


def unify(schemas: list[pa.Schema]) -> pa.Schema:
    """The one schema the windows' tables share (null columns promoted); InputError when a column changes type."""
    try:
        return pa.unify_schemas(schemas, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
        raise InputError(f"a column changes type along the input, so its rows cannot share one output schema ({error}); give each column one type") from error


class NpyFile(FileSink):
    """An .npy file of [rows, width] vectors (float32, or the quantized dtype), preallocated in the work directory
    and filled window by window.

    The header and the size depend only on (rows, width, dtype), so they are (re)written whenever the sink opens
    the file, a resumed one included; each window's rows are a byte range, proven by its own sha256."""

    def __init__(self, output: Path, work: Path, rows: int, width: int, dtype: np.dtype = np.dtype(np.float32)):
        self.output, self.data, self.dtype, self.row_bytes = output, work / "data.npy", dtype, width * dtype.itemsize
        header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": (rows, width)}
        with os.fdopen(os.open(self.data, os.O_RDWR | os.O_CREAT, 0o666), "r+b") as f:
            np.lib.format.write_array_header_1_0(f, header)
            self.offset = f.tell()
            f.truncate(self.offset + rows * self.row_bytes)  # sparse: windows are written with plain writes
            f.flush()
            os.fsync(f.fileno())

    def span(self, index: int, start: int, rows: int) -> tuple[Path, int, int]:
        return self.data, self.offset + start * self.row_bytes, rows * self.row_bytes

    def write(self, index: int, start: int, table: pa.Table) -> Part:
        data = np.ascontiguousarray(_vectors(table), dtype=self.dtype).tobytes()
        path, offset, _ = self.span(index, start, table.num_rows)
        with path.open("r+b") as f:
            f.seek(offset)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return Part(path.name, table.num_rows, hashlib.sha256(data).hexdigest())

    def finish(self, parts: list[Part]) -> None:
        os.replace(self.data, self.output)
        _sync_directory(self.output.parent)


def sha256(path: Path, offset: int = 0, size: int | None = None) -> str:
    """The sha256 of `size` bytes of a file from `offset` (None: to its end), read a block at a time."""
    digest, left = hashlib.sha256(), math.inf if size is None else size
    with path.open("rb") as f:
        f.seek(offset)
        while left and (block := f.read(min(BLOCK, left))):
            digest.update(block)
            left -= len(block)
    return digest.hexdigest()


@contextmanager
def durable(path: Path) -> Iterator[Path]:
    """A temporary path next to `path`: synced and renamed to it when the block succeeds, removed when it fails."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        with tmp.open("rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _sync_directory(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def _sync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_output(path: Path, sparse: bool, vectors_only: bool) -> Path:
    """Validate an output path before any work is done."""
    if path.is_dir():
        raise InputError(f"{path} is a directory; name a file to write")
    if path.exists() and not path.is_file():
        raise InputError(f"{path} exists and is not a regular file; name a file to write (or leave out --output for stdout)")
    formats = SPARSE_FORMATS if sparse else OUTPUT_FORMATS
    if path.suffix.lower() not in formats:
        kind = "sparse embeddings" if sparse else "embeddings"
        raise InputError(f"{path}: cannot write {kind} as {path.suffix or '(no extension)'!r}; use one of {', '.join(formats)}")
    if path.suffix.lower() == ".npy" and not vectors_only:
        raise InputError(f"{path}: an .npy file holds vectors only; write .parquet or .jsonl to keep ids and columns")
    if not path.parent.is_dir():
        raise InputError(f"{path}: the directory {path.parent} does not exist")
    try:
        tempfile.TemporaryFile(dir=path.parent).close()
    except OSError as error:
        raise InputError(f"{path}: cannot write in {path.parent} ({error.strerror or error})") from error
    return path
