"""The embedding job, for a corpus of any size: read -> window -> embed -> write.

One pipeline for `gte embed`, the Python API (`embed_corpus`) and Ray Data (`gte.ray.Embed` runs
`embed_texts` on each batch). A source streams its rows in order; they are cut into windows of at most
`window_rows` rows and `window_chars` characters; each window is tokenized, sorted by length and cut into
token-budget batches by the Embedder's packed inference path (the only one), and written as one durable part
(see sinks.py). Memory is bounded by one window whatever the corpus size. A file job keeps a manifest in its
work directory, so `resume=True` continues after any interruption from the last finished part, and the
output is row for row the one an uninterrupted run writes. A resumed job trusts nothing it finds: each part
must match the sha256 and the row count of the window it was written for, and the job embeds again from the
first part that does not (saying why).
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from itertools import chain
from pathlib import Path
from typing import IO, Any

import numpy as np
import pyarrow as pa

from gte_defaults import DEFAULT_FIELD, WINDOW_ROWS

from . import chunking
from .embed import Embedder, TruncationWarning
from .quantize import check_precision, quantize_embeddings, stored_as
from .sinks import FileSink, JsonlStream, NpyFile, Part, PartFiles, Sink, check_output
from .sources import InputError, Source, open_source

WINDOW_CHARS = 4_000_000  # about a million tokens: bounds a window's memory when the documents are long
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Options:
    """What a job computes; a resumed job must ask for the same."""

    field: str = DEFAULT_FIELD
    id_field: str | None = None
    keep_columns: tuple[str, ...] = ()
    dim: int | None = None
    normalize: bool = True
    sparse: bool = False
    window_rows: int = WINDOW_ROWS
    window_chars: int = WINDOW_CHARS
    prompt_name: str | None = None  # the checkpoint's prompt of this name (else its default prompt, if any)
    prompt: str | None = None  # or this text before each one
    truncation_side: str | None = None  # "right" (the Embedder's default) or "left"
    precision: str = "float32"  # or int8, uint8, binary, ubinary (gte.quantize)
    ranges: tuple[tuple[float, ...], ...] | None = None  # int8 / uint8: each dimension's low and high, [2, dim]
    dense: bool = False  # with sparse: the dense vectors too, from the same encoder pass
    chunk_tokens: int | None = None  # a row per chunk of at most this many tokens (gte.chunking)
    chunk_overlap: int = 0  # tokens consecutive chunks share (by sentences: the whole sentences that fit in them)
    late_chunking: bool = False  # chunk vectors from one pass over each document (mean of its tokens' states)
    keep_text: bool = False  # a chunk's text in the output
    chunk_by: str = "tokens"  # or "sentences": whole sentences packed into each chunk

    def __post_init__(self) -> None:
        if self.window_rows < 1 or self.window_chars < 1:
            raise ValueError("a window needs at least one row and one character")
        chunk_options = self.chunk_overlap or self.late_chunking or self.keep_text or self.chunk_by != "tokens"
        if self.chunk_tokens is None and chunk_options:
            raise ValueError("chunk overlap, late chunking, chunks by sentences and the chunks' text need --chunk-tokens")
        if self.chunk_tokens is not None:
            chunking.check(self.chunk_tokens, self.chunk_overlap, self.chunk_by)
            if self.sparse or check_precision(self.precision) != "float32" or self.dim is not None:
                raise ValueError("chunks are embedded as dense float32 vectors of the model's dimension: drop --sparse, "
                                 "--precision and --dim, or embed whole documents")  # fmt: skip
        if self.dense and not self.sparse:
            raise ValueError("dense adds the dense vectors to sparse ones (--sparse --dense); dense alone is the default")
        if check_precision(self.precision) != "float32" and self.sparse_only:
            raise ValueError("precision applies to dense vectors, not to sparse ones")
        if self.precision.endswith("int8") and self.ranges is None:
            raise ValueError(f"{self.precision} in a corpus job needs each dimension's range (--ranges / ranges): a job "
                             "embeds window by window, and one window's ranges would quantize the next differently; "
                             "save gte.quantize.calibration_ranges(vectors) of representative texts with numpy.save")  # fmt: skip
        if self.ranges is not None and not self.precision.endswith("int8"):
            raise ValueError("ranges apply to the int8 and uint8 precisions only")
        if self.sparse_only and (self.dim is not None or not self.normalize):
            raise ValueError("dim and normalize apply to dense vectors, not to sparse ones")
        if self.sparse and (self.prompt_name is not None or self.prompt is not None):
            raise ValueError("prompts apply to dense vectors; sparse token weights are computed on the text alone (and "
                             "with --dense, both come from one pass over the same tokens)")  # fmt: skip
        taken = {self.id_name, *self.vector_names}
        clash = [c for c in self.keep_columns if c in taken and c != self.id_field]
        if clash:
            raise ValueError(f"cannot keep the column {clash[0]!r}: the output has its own {clash[0]!r} column")

    @property
    def id_name(self) -> str:
        return self.id_field or "id"

    @property
    def sparse_only(self) -> bool:
        return self.sparse and not self.dense

    @property
    def vector_names(self) -> list[str]:
        """The output's computed columns: embedding (dense), sparse, or both; for chunks, their place too."""
        if self.chunk_tokens is not None:
            return ["chunk", "start", "end", *(["text"] if self.keep_text else []), "embedding"]
        return ["embedding", "sparse"] if self.dense else ["sparse" if self.sparse else "embedding"]

    @property
    def read_columns(self) -> list[str]:
        """The input columns the job reads: the text, the id, the kept ones (each once)."""
        return list(dict.fromkeys([self.field, *([self.id_field] if self.id_field else []), *self.keep_columns]))


@dataclass
class Embedded:
    """One window's result: its computed columns (Options.vector_names), the window row of each output row (None:
    one each, in order), and what they cost."""

    columns: dict[str, pa.Array]
    tokens: int
    truncated: int
    rows: pa.Array | None = None


def embed_texts(embedder: Embedder, texts: pa.Array | pa.ChunkedArray, options: Options, first_row: int = 0) -> Embedded:
    """Embed a column of texts: a FixedSizeList<float32>[dim] column "embedding" (quantized at another precision),
    a map<string, float32> column "sparse", or both from one encoder pass."""
    if texts.null_count:
        row = first_row + texts.is_null().to_pylist().index(True)
        raise InputError(f"row {row}: the {options.field!r} value is null, not a text")
    if options.chunk_tokens is not None:
        return _embed_chunks(embedder, texts.to_pylist(), options)
    prompt = "" if options.sparse else embedder.resolve_prompt(options.prompt_name, options.prompt)
    if options.dense and embedder.resolve_prompt():
        raise InputError(f"{embedder.model_name} puts its default prompt {embedder.resolve_prompt()!r} before the texts "
                         "of dense vectors, and sparse weights take none: one pass cannot give both; run --sparse and "
                         "the dense job apart")  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", TruncationWarning)
        ids = embedder.tokenize(texts.to_pylist(), prompt=prompt, truncation_side=options.truncation_side)
    truncated = sum(w.message.count for w in caught if isinstance(w.message, TruncationWarning))
    for w in caught:
        if not isinstance(w.message, TruncationWarning):
            warnings.warn(w.message, w.category, stacklevel=2)
    tokens = sum(map(len, ids))
    if options.sparse_only:
        return Embedded({"sparse": _sparse_column(embedder.sparse_tokens(ids, show_progress=False))}, tokens, truncated)
    result = embedder.encode_tokens(ids, prompt_length=embedder.prompt_length(prompt), dim=options.dim,
                                    normalize=options.normalize, show_progress=False, sparse=options.sparse)  # fmt: skip
    vectors, weights = result if options.sparse else (result, None)
    vectors = quantize_embeddings(vectors, options.precision, options.ranges)
    columns = {"embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1])}
    if weights is not None:
        columns["sparse"] = _sparse_column(weights)
    return Embedded(columns, tokens, truncated)


def _embed_chunks(embedder: Embedder, texts: list[str], options: Options) -> Embedded:
    """A row per chunk: its index in its document, its character span, its text if kept, its vector."""
    chunks, vectors = embedder.encode_chunks(texts, chunk_tokens=options.chunk_tokens, overlap=options.chunk_overlap,
                                             by=options.chunk_by, late=options.late_chunking,
                                             prompt_name=options.prompt_name, prompt=options.prompt,
                                             show_progress=False)  # fmt: skip
    columns = {
        "chunk": pa.array([c.index for c in chunks], pa.int32()),
        "start": pa.array([c.start for c in chunks], pa.int64()),
        "end": pa.array([c.end for c in chunks], pa.int64()),
        **({"text": pa.array([texts[c.document][c.start : c.end] for c in chunks], pa.string())} if options.keep_text else {}),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1]),
    }  # fmt: skip
    tokens = sum(c.last - c.first for c in chunks)
    return Embedded(columns, tokens, 0, pa.array([c.document for c in chunks], pa.int64()))


def _sparse_column(weights: list[dict[str, float]]) -> pa.Array:
    return pa.array([list(w.items()) for w in weights], type=pa.map_(pa.string(), pa.float32()))


def windows(chunks: Iterator[pa.Table], options: Options) -> Iterator[pa.Table]:
    """Re-cut a stream of tables into windows of at most window_rows rows and window_chars characters of text
    (at least one row each). The cuts depend only on the rows, so a resumed job cuts where the first run did."""
    import pyarrow.compute as pc

    pending: pa.Table | None = None
    for chunk in chain(chunks, [None]):
        if chunk is not None:
            pending = chunk if pending is None else pa.concat_tables([pending, chunk])
        while pending is not None and pending.num_rows:
            lengths = pc.utf8_length(pending.column(options.field)).fill_null(0).to_numpy(zero_copy_only=False)
            over = np.flatnonzero(np.cumsum(lengths[: options.window_rows]) > options.window_chars)
            cut = max(1, int(over[0])) if len(over) else min(options.window_rows, pending.num_rows)
            if chunk is not None and cut == pending.num_rows and cut < options.window_rows and not len(over):
                break  # the window is not full yet: read on
            yield pending.slice(0, cut).combine_chunks()
            pending = pending.slice(cut)


# ------------------------------------------------------------------------------ the job
@dataclass
class Summary:
    rows: int  # rows in the output so far
    embedded: int  # rows embedded by this run (fewer than rows when it resumed)
    tokens: int
    seconds: float
    output: str
    truncated: int = 0

    def add(self, done: int, rows: int, result: Embedded, seconds: float) -> None:
        self.rows, self.embedded, self.seconds = done, self.embedded + rows, max(seconds, 1e-9)
        self.tokens, self.truncated = self.tokens + result.tokens, self.truncated + result.truncated

    def line(self, options: Options) -> str:
        rate = f"{self.embedded / self.seconds:.0f} rows/s, {self.tokens / self.seconds:.0f} tokens/s" if self.seconds else ""
        resumed = f"; {self.rows - self.embedded} were done before the resume" if self.rows > self.embedded else ""
        kind = {(False, False): "", (True, False): "sparse ", (True, True): "dense and sparse "}[options.sparse, options.dense]
        return (f"wrote {self.rows} {kind}embeddings to {self.output}: {self.embedded} rows, {self.tokens} "
                f"tokens in {self.seconds:.1f} s ({rate}){resumed}")  # fmt: skip


@dataclass
class Manifest:
    """The state of a file job, kept in its work directory."""

    identity: dict[str, Any]  # what the output depends on: model, options, input
    rows: int | None  # the input's row count, where known
    done: int = 0  # rows written: the parts' rows
    parts: list[Part] = field(default_factory=list)  # one per finished window, in order

    @classmethod
    def load(cls, path: Path) -> Manifest:
        try:
            data = json.loads(path.read_text())
            parts = data.pop("parts", [])
            if not any(isinstance(p, str) for p in parts):  # an earlier gte listed the parts' names only
                return cls(**data, parts=[Part(str(p["name"]), int(p["rows"]), str(p["sha256"])) for p in parts])
        except (OSError, ValueError, TypeError, KeyError) as error:
            raise InputError(f"{path}: not a readable job manifest ({error}); pass --overwrite to start over") from error
        raise InputError(f"{path} was written by an earlier gte, without the checksums that prove its parts; "
                         "pass --overwrite to start over")  # fmt: skip

    def save(self, work: Path) -> None:
        from .sinks import durable

        with durable(work / MANIFEST) as tmp:
            tmp.write_text(json.dumps(asdict(self), indent=1))


class EmbedJob:
    """A job checked before any work: the output can be written, the input read, the options agree.

        job = EmbedJob(open_source("docs.parquet", "body"), Path("vectors.parquet"), Options(field="body"))
        summary = job.run(Embedder())
    """

    def __init__(
        self,
        source: Source,
        output: Path | None,
        options: Options,
        *,
        resume: bool = False,
        overwrite: bool = False,
        resume_hint: str = "the same call with resume=True",
    ):
        self.source, self.output, self.options = source, output, options
        self.resume, self.resume_hint = resume, resume_hint
        self.work = None if output is None else output.with_name(output.name + ".partial")
        if output is not None:
            check_output(output, options.sparse, vectors_only=not (options.id_field or options.keep_columns or options.chunk_tokens))
            self._check_leftovers(overwrite)
        source.scan(options.read_columns)
        if output is not None and output.suffix.lower() == ".npy" and source.num_rows is None:
            raise InputError(f"{output}: an .npy output needs the row count up front, and {source.name} cannot tell it; "
                             "write .parquet or .jsonl instead")  # fmt: skip

    def _check_leftovers(self, overwrite: bool) -> None:
        if overwrite and self.resume:
            raise InputError("--resume continues a job and --overwrite starts it over: pass one of them")
        if overwrite:
            if self.work.exists():
                shutil.rmtree(self.work)
            return
        if self.work.exists() and not self.resume:
            raise InputError(f"{self.work} holds an unfinished job for {self.output}: pass --resume to continue it "
                             "or --overwrite to start over")  # fmt: skip
        if self.output.exists() and not self.resume:
            raise InputError(f"{self.output} exists: pass --overwrite to replace it")

    @property
    def complete(self) -> bool:
        """A resumed job whose output was already finished."""
        return self.resume and self.output is not None and self.output.exists()

    def run(self, embedder: Embedder, stream: IO[str] | None = None, show_progress: bool | None = None) -> Summary:
        """Embed every row (the ones a resumed job has not done) and write the output."""
        if self.complete:
            if self.work.exists():
                shutil.rmtree(self.work)  # a job killed between its last rename and its clean-up
            return Summary(0, 0, 0, 0.0, str(self.output))
        embedder.check_dim(self.options.dim)
        dim = self.options.dim or embedder.dimension
        if self.options.ranges is not None and len(self.options.ranges[0]) != dim:
            raise InputError(f"the ranges hold {len(self.options.ranges[0])} dimensions and the vectors {dim}: "
                             "calibrate on vectors of this model (and --dim)")  # fmt: skip
        manifest, sink = self._start(embedder, stream)
        summary = Summary(manifest.done, 0, 0, 0.0, "stdout" if self.output is None else str(self.output))
        started, release = time.perf_counter(), _heap_release()
        with _progress(self.source.num_rows, manifest.done, show_progress) as bar:
            try:
                for index, start, window, ids in self._windows(manifest):
                    result = embed_texts(embedder, window.column(self.options.field), self.options, start)
                    table = self._table(window, ids, result.columns, result.rows)
                    self._write(sink, manifest, index, start, table, window.num_rows)
                    release(0)
                    summary.add(manifest.done, window.num_rows, result, time.perf_counter() - started)
                    bar.update(manifest.done - bar.n)
                    bar.set_postfix_str(f"{summary.tokens / summary.seconds:,.0f} tokens/s", refresh=False)
                if not manifest.parts and isinstance(sink, PartFiles):  # an empty input: an empty output, with its columns
                    self._write(sink, manifest, 0, 0, self._empty(embedder), 0)
                self._finish(sink, manifest)
            except KeyboardInterrupt:
                raise KeyboardInterrupt(self._interrupted(manifest)) from None
        if summary.truncated:
            warnings.warn(f"{summary.truncated} of {summary.embedded} texts were longer than max_length="
                          f"{embedder.max_length} tokens and were truncated", TruncationWarning, stacklevel=2)  # fmt: skip
        return summary

    def _windows(self, manifest: Manifest) -> Iterator[tuple[int, int, pa.Table, pa.Array]]:
        """(index, first row, window, ids) of the windows that no finished part holds; the ones before are read
        only for their ids (checked unique when resuming) and to prove the parts' row counts."""
        seen: set[int] | None = set() if self.resume and self.options.id_field else None
        start = 0
        for index, window in enumerate(windows(self.source.chunks(self.options.read_columns), self.options)):
            ids = self._ids(window, start, seen)
            if index < len(manifest.parts) and manifest.parts[index].rows != window.num_rows:
                self._drop(manifest, index, f"{self.work / MANIFEST} says part {index} holds {manifest.parts[index].rows} "
                                            f"rows where its window has {window.num_rows}")  # fmt: skip
            if index >= len(manifest.parts):
                yield index, start, window, ids
            start += window.num_rows

    def _write(self, sink: Sink, manifest: Manifest, index: int, start: int, table: pa.Table, rows: int) -> None:
        """Write window `index`: its `rows` input rows (from `start`) as `table` (a row per chunk, when chunked)."""
        with self._writing():
            part = sink.write(index, start, table)
            manifest.done = start + rows
            manifest.parts += [replace(part, rows=rows)] if part else []  # a part counts the input rows it holds
            if self.work is not None:
                manifest.save(self.work)

    def _finish(self, sink: Sink, manifest: Manifest) -> None:
        with self._writing():
            sink.finish(manifest.parts)
        if self.work is not None:
            shutil.rmtree(self.work)

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """A failed write (a full disk, a lost mount) as one user-facing line that says what is kept."""
        try:
            yield
        except BrokenPipeError:
            raise  # the reader of stdout went away: the command ends quietly
        except OSError as error:
            where = "stdout" if self.output is None else str(self.output)
            kept = f"; the finished parts are kept in {self.work}, pass --resume to continue" if self.work else ""
            raise InputError(f"cannot write {where} ({error.strerror or error}){kept}") from error

    def _start(self, embedder: Embedder, stream: IO[str] | None) -> tuple[Manifest, Sink]:
        identity = {
            "model": embedder.model_name, "max_length": embedder.max_length, "head": embedder.head.describe(),
            "prompt": "" if self.options.sparse else embedder.resolve_prompt(self.options.prompt_name, self.options.prompt),
            "dtype": str(embedder.dtype) if embedder.int8_fidelity is None else "int8", "options": asdict(self.options),
            "input": self.source.fingerprint(),
        }  # fmt: skip
        if self.output is None:
            return Manifest(identity, self.source.num_rows), JsonlStream(stream or sys.stdout)
        resuming = self.resume and (self.work / MANIFEST).is_file()
        manifest = Manifest.load(self.work / MANIFEST) if resuming else Manifest(identity, self.source.num_rows)
        if resuming:
            self._check_same(manifest.identity, identity)
        else:
            self.work.mkdir(exist_ok=True)
        if self.output.suffix.lower() == ".npy":
            dtype, width = stored_as(self.options.precision, self.options.dim or embedder.dimension)
            sink: FileSink = NpyFile(self.output, self.work, self.source.num_rows, width, dtype)
        else:
            sink = PartFiles(self.output, self.work)
        if resuming:
            self._prove(sink, manifest)
            _remove_strays(self.work, [p.name for p in manifest.parts])
        manifest.save(self.work)
        return manifest, sink

    def _prove(self, sink: FileSink, manifest: Manifest) -> None:
        """Keep the finished parts whose bytes are the ones written, up to the first that is not."""
        start = 0
        for index, part in enumerate(manifest.parts):
            damage = sink.damage(index, start, part)
            if damage:
                return self._drop(manifest, index, damage)
            start += part.rows
        if manifest.done != start:
            self._drop(manifest, len(manifest.parts), f"{self.work / MANIFEST} counts {manifest.done} rows done "
                                                      f"where its parts hold {start}")  # fmt: skip

    def _drop(self, manifest: Manifest, index: int, why: str) -> None:
        """Give up the parts from `index` on: the job embeds their windows again."""
        del manifest.parts[index:]
        manifest.done = sum(p.rows for p in manifest.parts)
        warnings.warn(f"{why}: embedding again from row {manifest.done}", stacklevel=2)

    def _check_same(self, before: dict[str, Any], now: dict[str, Any]) -> None:
        now = json.loads(json.dumps(now))  # tuples as lists, like the stored manifest
        changed = [key for key in now if before.get(key) != now[key]]
        if changed:
            raise InputError(f"cannot resume the job in {self.work}: its {', '.join(changed)} differ from this run's "
                             "(same model, options and unchanged input needed); pass --overwrite to start over")  # fmt: skip

    def _ids(self, window: pa.Table, start: int, seen: set[int] | None) -> pa.Array:
        """The id column: the id field's values (non-null; unique when resuming), else row numbers."""
        if not self.options.id_field:
            return pa.array(np.arange(start, start + window.num_rows), type=pa.int64())
        ids = window.column(self.options.id_field).combine_chunks()
        if ids.null_count:
            row = start + ids.is_null().to_pylist().index(True)
            raise InputError(f"{self.source.name}, row {row}: the id field {self.options.id_field!r} is null")
        if seen is not None:
            for offset, value in enumerate(ids.to_pylist()):
                key = hash(value if not isinstance(value, (list, dict)) else json.dumps(value, sort_keys=True))
                if key in seen:
                    raise InputError(f"{self.source.name}, row {start + offset}: the id {value!r} appears twice; "
                                     f"--resume needs unique ids in {self.options.id_field!r}")  # fmt: skip
                seen.add(key)
        return ids

    def _table(self, window: pa.Table, ids: pa.Array, vectors: dict[str, pa.Array], rows: pa.Array | None = None) -> pa.Table:
        """The output rows: the id, the computed columns, the kept ones (repeated for each chunk of a row)."""
        kept = [c for c in self.options.keep_columns if c != self.options.id_field]
        table = pa.table({self.options.id_name: ids, **{c: window.column(c) for c in kept}})
        table = table if rows is None else table.take(rows)
        for at, (name, column) in enumerate(vectors.items(), 1):
            table = table.add_column(at, name, column)
        return table

    def _empty(self, embedder: Embedder) -> pa.Table:
        dtype, width = stored_as(self.options.precision, self.options.dim or embedder.dimension)
        types = {"embedding": pa.list_(pa.from_numpy_dtype(dtype), width), "sparse": pa.map_(pa.string(), pa.float32()),
                 "chunk": pa.int32(), "start": pa.int64(), "end": pa.int64(), "text": pa.string()}  # fmt: skip
        window = pa.table({c: pa.array([], pa.null()) for c in self.options.read_columns})
        ids = pa.array([], pa.null() if self.options.id_field else pa.int64())
        return self._table(window, ids, {name: pa.array([], types[name]) for name in self.options.vector_names})

    def _interrupted(self, manifest: Manifest) -> str:
        of = f" of {manifest.rows}" if manifest.rows is not None else ""
        if self.output is None:
            return f"stopped after {manifest.done}{of} rows"
        return f"stopped after {manifest.done}{of} rows; the finished parts are kept in {self.work}; resume with: {self.resume_hint}"


def _remove_strays(work: Path, parts: Sequence[str]) -> None:
    """Files of the work directory that no manifest lists (a part that was being written when the job died)."""
    keep = {MANIFEST, "data.npy", *parts}
    for path in work.iterdir():
        if path.name not in keep:
            path.unlink()


def _heap_release() -> Callable[[int], int]:
    """Give the heap's free pages back to the system after each window (glibc only; elsewhere a no-op).

    Measured (BENCHMARKS.md): without it, RSS crept up with the rows done, as the batches' big buffers of
    ever-different sizes fragment the heap; with a trim per window it stayed flat, at about 1% of the time.
    (A fixed mmap threshold flattened it too, but cost 25-40% in page faults.)"""
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return lambda pad=0: 0


def _progress(total: int | None, initial: int, show: bool | None):
    from tqdm import tqdm

    enabled = sys.stderr.isatty() if show is None else show
    return tqdm(total=total, initial=initial, disable=not enabled, file=sys.stderr, unit="rows", unit_scale=True,
                dynamic_ncols=True, smoothing=0.05)  # fmt: skip


# ------------------------------------------------------------------------------ the Python API
def embed_corpus(
    input: str | os.PathLike | Sequence[str],
    output: str | os.PathLike | None = None,
    *,
    embedder: Embedder | None = None,
    field: str = DEFAULT_FIELD,
    id_field: str | None = None,
    keep_columns: Sequence[str] = (),
    dim: int | None = None,
    normalize: bool = True,
    sparse: bool = False,
    dense: bool = False,
    chunk_tokens: int | None = None,
    chunk_overlap: int = 0,
    late_chunking: bool = False,
    keep_text: bool = False,
    chunk_by: str = "tokens",
    prompt_name: str | None = None,
    prompt: str | None = None,
    truncation_side: str | None = None,
    precision: str = "float32",
    ranges: np.ndarray | None = None,
    resume: bool = False,
    overwrite: bool = False,
    window_rows: int = WINDOW_ROWS,
    show_progress: bool | None = None,
) -> Summary:
    """Embed a corpus file (.txt, .jsonl, .csv, parquet file / directory / glob / URI) or a list of texts into
    a .parquet, .jsonl or .npy file (or JSON lines on stdout), streaming, in input order; `precision` and
    `ranges` [2, dim] as in `Embedder.encode`, except that int8 / uint8 need the ranges; `sparse` token weights
    instead of dense vectors, or with `dense` both, from one encoder pass; with `chunk_tokens`, a row per chunk of
    each text, cut `chunk_by` tokens or sentences (`Embedder.encode_chunks`: chunk, start, end, the text with
    `keep_text`, embedding).

        gte.embed_corpus("docs.parquet", "vectors.parquet", field="body", id_field="doc_id")
    """
    from .sources import ListSource

    source = ListSource(input, field) if isinstance(input, (list, tuple)) else open_source(input, field)
    ranges = None if ranges is None else tuple(map(tuple, np.asarray(ranges, dtype=np.float32).tolist()))
    options = Options(field, id_field, tuple(keep_columns), dim, normalize, sparse, window_rows, prompt_name=prompt_name,
                      prompt=prompt, truncation_side=truncation_side, precision=precision, ranges=ranges, dense=dense,
                      chunk_tokens=chunk_tokens, chunk_overlap=chunk_overlap, late_chunking=late_chunking,
                      keep_text=keep_text, chunk_by=chunk_by)  # fmt: skip
    job = EmbedJob(source, None if output is None else Path(output), options, resume=resume, overwrite=overwrite)
    return job.run(embedder or Embedder(), show_progress=show_progress)
