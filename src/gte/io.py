"""Input and output files of `gte embed` / `gte rerank`.

Inputs: .txt (one text a line), .jsonl (a field of each object), .csv (a column), .parquet (a column),
or text lines on stdin. Outputs by extension: .npy, .parquet (id + vector), .jsonl; each is written to
a temporary name next to the target and renamed at the end, so a failed run leaves no partial file.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np

INPUT_FORMATS = (".txt", ".jsonl", ".csv", ".parquet")
OUTPUT_FORMATS = (".npy", ".parquet", ".jsonl")
DEFAULT_FIELD = "text"

Sparse = dict[str, float]


class InputError(ValueError):
    """An unreadable or malformed input file, or a missing field / column."""


# ------------------------------------------------------------------------------ reading
def read_texts(path: str | os.PathLike, field: str = DEFAULT_FIELD) -> list[str]:
    """The texts of a .txt, .jsonl, .csv or .parquet file (`field`: the JSON field or column)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in INPUT_FORMATS:
        raise InputError(f"{path}: unknown input format {suffix or '(no extension)'!r}; use one of {', '.join(INPUT_FORMATS)}")
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        if suffix == ".parquet":
            return _read_parquet(path, field)
        with path.open(encoding="utf-8", newline="" if suffix == ".csv" else None) as f:
            return {".txt": _read_lines, ".jsonl": _read_jsonl, ".csv": _read_csv}[suffix](f, field, path)
    except UnicodeDecodeError as error:
        raise InputError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from error
    except OSError as error:
        raise InputError(f"{path}: cannot read it ({error.strerror or error})") from error


def read_lines(stream: IO[str]) -> list[str]:
    """One text per line (the line break removed)."""
    return _read_lines(stream, DEFAULT_FIELD, Path("<stdin>"))


def _read_lines(f: IO[str], field: str, path: Path) -> list[str]:
    lines = f.read().split("\n")  # only line feeds end a text (str.splitlines also splits at \x0c, \u2028, ...)
    return lines[:-1] if lines[-1] == "" else lines


def _read_jsonl(f: IO[str], field: str, path: Path) -> list[str]:
    texts = []
    for number, line in enumerate(f, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise InputError(f"{path}, line {number}: not valid JSON ({error.msg})") from error
        if not isinstance(record, dict):
            raise InputError(f"{path}, line {number}: expected a JSON object with a {field!r} field")
        if field not in record:
            fields = ", ".join(record) or "none"
            raise InputError(f"{path}, line {number}: no field {field!r} (fields: {fields}); choose one with --field")
        texts.append(_check_str(record[field], f"{path}, line {number}: field {field!r}"))
    return texts


def _read_csv(f: IO[str], field: str, path: Path) -> list[str]:
    reader = csv.DictReader(f)
    columns = reader.fieldnames or []
    if field not in columns:
        raise InputError(f"{path}: no column {field!r} (columns: {', '.join(columns) or 'none'}); choose one with --field")
    try:
        return [_check_str(row[field], f"{path}, line {reader.line_num}: column {field!r}") for row in reader]
    except csv.Error as error:
        raise InputError(f"{path}, line {reader.line_num}: malformed CSV ({error})") from error


def _read_parquet(path: Path, field: str) -> list[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
        if field not in schema.names:
            raise InputError(f"{path}: no column {field!r} (columns: {', '.join(schema.names)}); choose one with --field")
        column = pq.read_table(path, columns=[field]).column(field)
    except pa.ArrowException as error:
        raise InputError(f"{path}: not a readable parquet file ({error})") from error
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        raise InputError(f"{path}: column {field!r} holds {column.type}, not strings")
    texts = column.to_pylist()
    if None in texts:
        raise InputError(f"{path}, row {texts.index(None)}: column {field!r} is null")
    return texts


def _check_str(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise InputError(f"{where} is {type(value).__name__}, not a string")
    return value


# ------------------------------------------------------------------------------ writing
@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path next to `path`, renamed to it when the block succeeds and removed when it fails."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def check_output(path: str | os.PathLike, sparse: bool) -> Path:
    """Validate an output path before any work is done."""
    path = Path(path)
    formats = (".parquet", ".jsonl") if sparse else OUTPUT_FORMATS
    if path.suffix.lower() not in formats:
        kind = "sparse embeddings" if sparse else "embeddings"
        raise InputError(f"{path}: cannot write {kind} as {path.suffix or '(no extension)'!r}; use one of {', '.join(formats)}")
    if not path.parent.is_dir():
        raise InputError(f"{path}: the directory {path.parent} does not exist")
    return path


def write_embeddings(path: Path, vectors: np.ndarray | Sequence[Sparse]) -> None:
    """Dense [n, dim] float32 vectors or sparse {token: weight} dicts, in the format of the extension."""
    suffix = path.suffix.lower()
    with atomic_path(path) as tmp:
        if suffix == ".npy":
            with tmp.open("wb") as f:
                np.save(f, vectors)
        elif suffix == ".parquet":
            _write_parquet(tmp, vectors)
        else:
            with tmp.open("w", encoding="utf-8") as f:
                write_jsonl(f, vectors)


def write_jsonl(f: IO[str], vectors: np.ndarray | Sequence[Sparse]) -> None:
    """{"id": i, "embedding": [...]} (or "sparse": {token: weight}) per line."""
    dense = isinstance(vectors, np.ndarray)
    for i, vector in enumerate(vectors):
        if dense:
            f.write(f'{{"id": {i}, "embedding": [{", ".join(map(str, vector))}]}}\n')
        else:
            f.write(json.dumps({"id": i, "sparse": vector}, ensure_ascii=False) + "\n")


def _write_parquet(path: Path, vectors: np.ndarray | Sequence[Sparse]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    ids = pa.array(range(len(vectors)), type=pa.int64())
    if isinstance(vectors, np.ndarray):
        flat = pa.array(vectors.reshape(-1), type=pa.float32())
        column = pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])
        table = pa.table({"id": ids, "embedding": column})
    else:
        column = pa.array([list(v.items()) for v in vectors], type=pa.map_(pa.string(), pa.float32()))
        table = pa.table({"id": ids, "sparse": column})
    pq.write_table(table, path)


def stdin_texts() -> list[str]:
    if sys.stdin is None or sys.stdin.isatty():
        raise InputError("no input: pass texts as arguments, a file with --input, or pipe text lines into stdin")
    return read_lines(sys.stdin)
