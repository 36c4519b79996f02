"""Ray Data: embed a dataset across a cluster, one model per actor (`pip install 'gte-engine[ray]'`).

    import ray, gte.ray
    ds = ray.data.read_parquet("s3://bucket/docs/")
    ds = ds.map_batches(gte.ray.Embed, fn_constructor_kwargs={"model": "Alibaba-NLP/gte-base-en-v1.5", "field": "body"},
                        compute=ray.data.ActorPoolStrategy(size=3), num_cpus=4, batch_size=8192, batch_format="pyarrow")
    ds.write_parquet("s3://bucket/vectors/")

Each batch comes back with an `embedding` column (or `sparse`) after its own columns, computed by the same
`embed_texts` step as `gte embed` and `gte.embed_corpus`; with `chunk_tokens`, a row per chunk (its document's
columns repeated, then chunk, start, end, [text], embedding), each document's chunks together and in order (the
id and chunk columns say where a row belongs: Ray may write blocks in another order).
`plan_pool` sizes the actor pool so that Ray's read and write tasks keep CPUs of their own: actors holding every
CPU starve the reads and the job hangs. `gte embed --ray` runs `run` below.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from gte_defaults import DEFAULT_MODEL

from .embed import Embedder
from .job import Options, embed_texts
from .sources import InputError

MAX_CPUS_PER_WORKER = 4  # torch's intra-op threads stop paying off beyond a few cores per model on CPU


class Embed:
    """A callable class for `Dataset.map_batches`: the model loads once per actor.

    `model` and the Embedder's options (device, dtype, max_length, batch_tokens, pooling); `field`: the text
    column; `dim`, `normalize`, `sparse`, `prompt_name`, `prompt`, `truncation_side`, `precision`, `ranges` as in
    `Embedder.encode` (`dense` with `sparse`: both, from one pass) (int8 / uint8 need `ranges`: the batches must share them);
    `chunk_tokens`, `chunk_overlap`, `chunk_by`, `late_chunking`, `keep_text` as in `gte.embed_corpus` (a chunk's
    `text` takes the place of a column of that name); `threads`: torch threads (default: Ray's OMP_NUM_THREADS for
    this actor, which is its num_cpus).
    """

    def __init__(
        self,
        model: str | os.PathLike = DEFAULT_MODEL,
        *,
        field: str = "text",
        dim: int | None = None,
        normalize: bool = True,
        sparse: bool = False,
        dense: bool = False,
        prompt_name: str | None = None,
        prompt: str | None = None,
        truncation_side: str | None = None,
        precision: str = "float32",
        ranges: tuple[tuple[float, ...], ...] | None = None,
        chunk_tokens: int | None = None,
        chunk_overlap: int = 0,
        chunk_by: str = "tokens",
        late_chunking: bool = False,
        keep_text: bool = False,
        threads: int | None = None,
        **embedder_kwargs: Any,
    ):
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.options = Options(field=field, dim=dim, normalize=normalize, sparse=sparse, prompt_name=prompt_name,
                               prompt=prompt, truncation_side=truncation_side, precision=precision, ranges=ranges,
                               dense=dense, chunk_tokens=chunk_tokens, chunk_overlap=chunk_overlap, chunk_by=chunk_by,
                               late_chunking=late_chunking, keep_text=keep_text)  # fmt: skip
        self.embedder = Embedder(model, show_progress=False, **embedder_kwargs)
        self.embedder.check_dim(dim)
        self.embedder.resolve_prompt(prompt_name, prompt)  # an unknown prompt name fails here, not in a batch

    def __call__(self, batch: pa.Table | dict[str, np.ndarray]) -> pa.Table | dict[str, np.ndarray]:
        """The batch with its computed columns added (embedding, sparse or both; a pyarrow table, or a dict of numpy
        arrays); chunked, its rows repeated for each chunk, with the chunk's columns."""
        field = self.options.field
        if isinstance(batch, pa.Table):
            result = embed_texts(self.embedder, batch.column(field), self.options)
            batch = batch if result.rows is None else batch.take(result.rows)
            for name, column in result.columns.items():
                batch = _put(batch, name, column)
            return batch
        if isinstance(batch, dict):
            result = embed_texts(self.embedder, pa.array(list(batch[field]), type=pa.string()), self.options)
            if result.rows is not None:
                batch = {name: np.asarray(values)[result.rows.to_numpy()] for name, values in batch.items()}
            return {**batch, **{name: _numpy(column) for name, column in result.columns.items()}}
        raise TypeError(f"gte.ray.Embed takes pyarrow or numpy batches, got {type(batch).__name__}: pass batch_format='pyarrow'")


def _put(table: pa.Table, name: str, column: pa.Array) -> pa.Table:
    """The table with `column` added, or in place of its own column `name` (a chunk's text for its document's)."""
    if name in table.column_names:
        return table.set_column(table.column_names.index(name), name, column)
    return table.append_column(name, column)


def _numpy(column: pa.Array) -> np.ndarray:
    if pa.types.is_fixed_size_list(column.type):
        return column.values.to_numpy().reshape(len(column), column.type.list_size)
    if pa.types.is_map(column.type):
        return np.array([dict(pairs) for pairs in column.to_pylist()], dtype=object)
    return column.to_numpy(zero_copy_only=False)  # a chunk's index, start, end, text


# ------------------------------------------------------------------------------ sizing
@dataclass(frozen=True)
class Pool:
    """How many model actors, and what each reserves."""

    size: int
    num_cpus: float
    num_gpus: float

    def describe(self) -> str:
        gpus = f", {self.num_gpus:g} GPU" if self.num_gpus else ""
        return f"{self.size} worker{'s' * (self.size > 1)} x ({self.num_cpus:g} CPU{gpus})"


def plan_pool(
    cpus: float,
    gpus: float = 0,
    *,
    size: int | None = None,
    cpus_per_worker: float | None = None,
    gpus_per_worker: float | None = None,
) -> Pool:
    """Size the actor pool for a cluster of `cpus` and `gpus`, keeping CPUs for Ray's read and write tasks:
    one in eight (at least one). With GPUs, one actor per GPU. Every argument can be given instead."""
    spare = max(1.0, math.floor(cpus / 8))
    if gpus_per_worker is None:
        gpus_per_worker = 1.0 if gpus >= 1 else 0.0
    if gpus_per_worker:
        cpus_per_worker = cpus_per_worker or 1.0
        size = size or max(1, int(gpus // gpus_per_worker))
    else:
        cpus_per_worker = cpus_per_worker or max(1.0, min(MAX_CPUS_PER_WORKER, cpus - spare))
        size = size or max(1, int((cpus - spare) // cpus_per_worker))
    if size * cpus_per_worker > cpus - 1:
        raise InputError(
            f"{size} workers x {cpus_per_worker:g} CPUs leave no CPU of the cluster's {cpus:g} for reading and writing, "
            "and the job would hang: give fewer workers or fewer CPUs per worker"
        )
    if gpus_per_worker and size * gpus_per_worker > gpus:
        raise InputError(f"{size} workers x {gpus_per_worker:g} GPUs need more than the cluster's {gpus:g} GPUs: give fewer workers or fewer GPUs per worker")
    return Pool(size, cpus_per_worker, gpus_per_worker)


# ------------------------------------------------------------------------------ gte embed --ray
READERS = {".parquet": "read_parquet", ".jsonl": "read_json", ".csv": "read_csv", ".txt": "read_text"}


def run(
    input: str,
    output: str,
    options: Options,
    *,
    model: str = DEFAULT_MODEL,
    address: str | None = None,
    workers: int | None = None,
    cpus_per_worker: float | None = None,
    gpus_per_worker: float | None = None,
    overwrite: bool = False,
    show_progress: bool | None = None,
    threads: int | None = None,
    embedder_kwargs: dict[str, Any] | None = None,
) -> tuple[int, Pool]:
    """Embed `input` (parquet, jsonl, csv or txt files; a path, directory or URI) into a parquet dataset
    directory `output` on a Ray cluster (`address`; a local one when None), each actor computing with `threads`
    threads (default: its CPUs). Returns (rows written, pool)."""
    import ray
    import ray.data

    if not options.id_field:
        raise InputError("--ray writes its output in parallel, without row numbers: name the id column with --id-field")
    _check_output(output, overwrite)
    ray.init(address=address, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True, logging_level="warning")
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    context.enable_progress_bars = show_progress if show_progress is not None else sys.stderr.isatty()
    logging.getLogger("ray.data").setLevel(logging.INFO if context.enable_progress_bars else logging.WARNING)
    resources = ray.cluster_resources()
    pool = plan_pool(resources.get("CPU", 1), resources.get("GPU", 0), size=workers, cpus_per_worker=cpus_per_worker,
                     gpus_per_worker=gpus_per_worker)  # fmt: skip
    dataset = _read(input).select_columns(options.read_columns)
    vectors = dataset.map_batches(
        Embed,
        fn_constructor_kwargs=dict(model=str(model), **_embed_options(options), threads=threads or int(pool.num_cpus),
                                   **(embedder_kwargs or {})),  # fmt: skip
        compute=ray.data.ActorPoolStrategy(size=pool.size),
        num_cpus=pool.num_cpus,
        num_gpus=pool.num_gpus or None,
        batch_size=options.window_rows,
        batch_format="pyarrow",
    )
    kept = [options.id_field, *options.vector_names, *(c for c in options.keep_columns if c != options.id_field)]
    vectors.select_columns(kept).write_parquet(output)
    return _rows_written(output), pool


def _embed_options(options: Options) -> dict[str, Any]:
    """The job's options that `Embed` takes: all but the ones of reading and windowing the input."""
    return {k: v for k, v in asdict(options).items() if k not in ("id_field", "keep_columns", "window_rows", "window_chars")}


def _read(location: str) -> Any:
    import ray.data

    suffix = os.path.splitext(location.rstrip("/"))[1].lower()
    reader = READERS.get(suffix, "read_parquet")  # a directory or a bucket prefix: a parquet dataset
    return getattr(ray.data, reader)(location, **({"lines": True} if reader == "read_json" else {}))


def _check_output(output: str, overwrite: bool) -> None:
    from pyarrow import fs

    filesystem, path = fs.FileSystem.from_uri(output) if "://" in output else (fs.LocalFileSystem(), os.path.abspath(output))
    info = filesystem.get_file_info(path)
    if info.type == fs.FileType.File:
        raise InputError(f"{output} is a file: --ray writes a directory of parquet files")
    if info.type == fs.FileType.Directory and filesystem.get_file_info(fs.FileSelector(path)):
        if not overwrite:
            raise InputError(f"{output} exists and is not empty: pass --overwrite to replace it")
        filesystem.delete_dir_contents(path)


def _rows_written(output: str) -> int:
    import pyarrow.dataset as ds

    return ds.dataset(output, format="parquet").count_rows()
