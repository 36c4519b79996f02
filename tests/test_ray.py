"""Ray Data: `gte.ray.Embed` in map_batches and `gte embed --ray` on a local 2-CPU cluster give the
single-process vectors, ids and row count (a row per chunk when chunked: the job's rows); the actor pool leaves
CPUs for reading and writing."""

from __future__ import annotations

import itertools

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

import gte
from gte.job import Options, embed_texts
from gte.ray import Embed, plan_pool
from gte.sources import InputError
from gte_cli import main

ray = pytest.importorskip("ray")

TEXTS = [f"document {i}: " + " ".join(["search", "deep", "fox", "paris"][: 1 + i % 4] * (1 + i % 7)) for i in range(400)]
DOCUMENTS = [f"Document {i}. " + " ".join(["Search deep.", "Fox in paris!", "Deep search?\n"][: 1 + i % 3] * (1 + i % 4))
             for i in range(60)]  # fmt: skip


def write_parts(directory, texts: list[str], parts: int = 2):
    """The texts as a parquet dataset of `parts` files: doc (an id), text, n (the row number)."""
    directory.mkdir()
    size = -(-len(texts) // parts)
    for k in range(parts):
        rows = range(k * size, min((k + 1) * size, len(texts)))
        pq.write_table(pa.table({"doc": [f"doc-{i}" for i in rows], "text": [texts[i] for i in rows], "n": list(rows)}),
                       directory / f"{k}.parquet")  # fmt: skip
    return directory


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="warning")
    yield
    ray.shutdown()


def test_pool_keeps_cpus_for_reading_and_writing():
    assert plan_pool(2) == gte.ray.Pool(1, 1, 0)  # size=2 on 2 CPUs hung in Ray 2.60: the reads starved
    assert plan_pool(16) == gte.ray.Pool(3, 4, 0)
    assert plan_pool(64) == gte.ray.Pool(14, 4, 0)
    assert plan_pool(32, 4) == gte.ray.Pool(4, 1, 1)
    assert plan_pool(16, size=2, cpus_per_worker=6) == gte.ray.Pool(2, 6, 0)
    with pytest.raises(InputError, match="would hang"):
        plan_pool(2, size=2)
    with pytest.raises(InputError, match="more than the cluster's 1 GPUs"):
        plan_pool(8, 1, size=2)


def test_embed_batches_keep_their_columns(tiny_model_dir):
    embed = Embed(str(tiny_model_dir), dim=16)
    expected = gte.Embedder(tiny_model_dir).encode(TEXTS[:5], dim=16)
    table = embed(pa.table({"id": range(5), "text": TEXTS[:5]}))
    assert table.column_names == ["id", "text", "embedding"]
    np.testing.assert_allclose(np.array(table["embedding"].to_pylist()), expected, atol=1e-5)
    batch = embed({"id": np.arange(5), "text": np.array(TEXTS[:5], dtype=object)})
    assert batch["embedding"].shape == (5, 16) and list(batch["id"]) == list(range(5))
    np.testing.assert_allclose(batch["embedding"], expected, atol=1e-5)


def test_embed_batches_dense_and_sparse(sparse_model_dir):
    """--sparse --dense on Ray: both columns, each what the Embedder gives apart."""
    embedder = gte.Embedder(sparse_model_dir)
    texts = ["der hund der hund", "北京 上海", "le chat"]
    for batch in (pa.table({"text": texts}), {"text": np.array(texts, dtype=object)}):
        out = Embed(str(sparse_model_dir), sparse=True, dense=True)(batch)
        if isinstance(out, pa.Table):
            out = {name: out[name].to_pylist() for name in ("embedding", "sparse")}
        np.testing.assert_allclose(np.array(list(out["embedding"])), embedder.encode(texts), atol=1e-5)
        sparse = [dict(w) for w in out["sparse"]]
        for got, want in zip(sparse, embedder.encode_sparse(texts)):
            assert got == pytest.approx(want, abs=1e-5)


def test_embed_batches_quantized(tiny_model_dir):
    """precision and ranges: sentence-transformers' quantization of the float32 vectors of the same batch."""
    from sentence_transformers.util import quantize_embeddings as st_quantize

    batch = pa.table({"text": TEXTS[:8]})
    vectors = np.array(Embed(str(tiny_model_dir))(batch)["embedding"].to_pylist(), dtype=np.float32)
    ranges = tuple(map(tuple, gte.quantize.calibration_ranges(vectors).tolist()))
    for precision, given in [("int8", ranges), ("ubinary", None)]:
        table = Embed(str(tiny_model_dir), precision=precision, ranges=given)(batch)
        expected = st_quantize(vectors, precision, ranges=None if given is None else np.array(given, dtype=np.float32))
        np.testing.assert_array_equal(np.array(table["embedding"].to_pylist()), expected)
    with pytest.raises(ValueError, match="needs each dimension's range"):
        Embed(str(tiny_model_dir), precision="uint8")


def test_embed_applies_the_checkpoints_modules_and_prompts(st_dir):
    """Dense, Normalize and the prompts, as sentence-transformers applies them."""
    from sentence_transformers import SentenceTransformer

    path = st_dir(pooling="mean", dense=((16, "Tanh"),), normalize=True, prompts={"query": "query: "})
    reference = SentenceTransformer(str(path), device="cpu")
    table = Embed(str(path), prompt_name="query")(pa.table({"text": TEXTS[:5]}))
    np.testing.assert_allclose(np.array(table["embedding"].to_pylist()), reference.encode_query(TEXTS[:5]), atol=1e-5)
    with pytest.raises(ValueError, match="prompt name 'passage' is not one of this model's prompts"):
        Embed(str(path), prompt_name="passage")


def test_embed_batches_a_row_per_chunk(tiny_model_dir):
    """Chunked: each document's columns repeated for each of its chunks, then the job's chunk columns and vectors;
    a chunk's text takes the place of the document's in a column of the same name."""
    options = Options(chunk_tokens=5, chunk_overlap=1, chunk_by="sentences", late_chunking=True, keep_text=True)
    embed = Embed(str(tiny_model_dir), chunk_tokens=5, chunk_overlap=1, chunk_by="sentences", late_chunking=True,
                  keep_text=True)  # fmt: skip
    expected = embed_texts(gte.Embedder(tiny_model_dir), pa.array(DOCUMENTS[:6]), options)
    documents = expected.rows.to_pylist()
    table = embed(pa.table({"id": range(6), "text": DOCUMENTS[:6]}))
    assert table.column_names == ["id", "text", "chunk", "start", "end", "embedding"] and table["id"].to_pylist() == documents
    for name, column in expected.columns.items():
        assert table[name].to_pylist() == column.to_pylist(), name
    batch = embed({"id": np.arange(6), "text": np.array(DOCUMENTS[:6], dtype=object)})
    assert list(batch["id"]) == documents and list(batch["chunk"]) == expected.columns["chunk"].to_pylist()
    assert list(batch["text"]) == expected.columns["text"].to_pylist()
    np.testing.assert_array_equal(batch["embedding"], np.array(expected.columns["embedding"].to_pylist()))


def test_map_batches_on_a_local_cluster(local_ray, tiny_model_dir):
    dataset = ray.data.from_arrow(pa.table({"id": range(len(TEXTS)), "text": TEXTS}))
    out = dataset.map_batches(Embed, fn_constructor_kwargs={"model": str(tiny_model_dir)}, batch_size=64,
                              compute=ray.data.ActorPoolStrategy(size=1), num_cpus=1, batch_format="pyarrow")  # fmt: skip
    table = pa.concat_tables(ray.get(out.to_arrow_refs())).sort_by("id")
    assert table["id"].to_pylist() == list(range(len(TEXTS)))
    expected = gte.Embedder(tiny_model_dir).encode(TEXTS)
    np.testing.assert_allclose(np.array(table["embedding"].to_pylist()), expected, atol=1e-5)


def test_gte_embed_ray(local_ray, capsys, tmp_path, tiny_model_dir):
    source = tmp_path / "in"
    source.mkdir()
    ids = [f"doc-{i}" for i in range(len(TEXTS))]
    for k in range(2):
        part = slice(k * 200, (k + 1) * 200)
        pq.write_table(pa.table({"doc": ids[part], "text": TEXTS[part], "n": list(range(400))[part]}), source / f"{k}.parquet")
    output = tmp_path / "out"
    argv = ["embed", "--ray", "-m", tiny_model_dir, "-i", source, "-o", output, "--id-field", "doc", "--keep-columns", "n",
            "--window", 50]  # fmt: skip
    assert main([str(a) for a in argv]) == 0
    assert "wrote 400 embeddings" in capsys.readouterr().err
    table = ds.dataset(output, format="parquet").to_table().sort_by("n")
    assert table.column_names == ["doc", "embedding", "n"] and table["doc"].to_pylist() == ids
    expected = gte.Embedder(tiny_model_dir).encode(TEXTS)
    np.testing.assert_allclose(np.array(table["embedding"].to_pylist()), expected, atol=1e-5)
    assert main([str(a) for a in argv]) == 2
    assert "exists and is not empty: pass --overwrite" in capsys.readouterr().err
    assert main([str(a) for a in argv if str(a) not in ("--id-field", "doc")]) == 2
    assert "name the id column with --id-field" in capsys.readouterr().err


@pytest.mark.parametrize("by", ["tokens", "sentences"])
def test_gte_embed_ray_chunks(local_ray, capsys, tmp_path, tiny_model_dir, by):
    """--ray with chunks: the rows of the same job on this machine (ids, chunks, spans, texts; vectors to 1e-6),
    each document's chunks together and in order."""
    source = write_parts(tmp_path / "in", DOCUMENTS)
    common = ["embed", "-m", tiny_model_dir, "-i", source, "--id-field", "doc", "--keep-columns", "n", "--window", 16,
              "--chunk-tokens", 6, "--chunk-overlap", 2, "--chunk-by", by, "--late-chunking", "--keep-text"]  # fmt: skip
    assert main([str(a) for a in [*common, "--ray", "-o", tmp_path / "ray"]]) == 0
    assert main([str(a) for a in [*common, "-o", tmp_path / "here.parquet"]]) == 0
    capsys.readouterr()
    here = pq.read_table(tmp_path / "here.parquet")
    files = sorted((tmp_path / "ray").glob("*.parquet"))
    for file in files:  # each document's chunks together, in order (Ray may write blocks in either order)
        rows = pq.read_table(file).select(["n", "chunk"]).to_pylist()
        runs = [[row["chunk"] for row in run] for _, run in itertools.groupby(rows, key=lambda row: row["n"])]
        assert len(runs) == len({row["n"] for row in rows}) and all(run == list(range(len(run))) for run in runs)
    there = pa.concat_tables(pq.read_table(file) for file in files).sort_by([("n", "ascending"), ("chunk", "ascending")])
    assert there.column_names == here.column_names == ["doc", "chunk", "start", "end", "text", "embedding", "n"]
    assert there.num_rows == here.num_rows > len(DOCUMENTS)
    assert there.drop_columns(["embedding"]).equals(here.drop_columns(["embedding"]))
    np.testing.assert_allclose(np.array(there["embedding"].to_pylist()), np.array(here["embedding"].to_pylist()), atol=1e-6)
