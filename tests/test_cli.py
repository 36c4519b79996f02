"""`gte embed | rerank | info` end to end: every input and output format, sparse output, reranking,
the user errors (exit code 2, one line), atomic output files, start-up without torch, signals and a
closed stdout."""

from __future__ import annotations

import csv
import io as stdio
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import fixtures
import gte
from gte import cli, hub, sinks, sources
from gte_cli import main

TEXTS = ["the quick brown fox", "", "paris london berlin", "deep neural network for search", "北京 hund"]


@pytest.fixture(scope="module")
def embedder(tiny_model_dir) -> gte.Embedder:
    return gte.Embedder(tiny_model_dir)


def run(capsys, *argv) -> tuple[int, str, str]:
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit_info:  # argparse: --help, argument errors
        code = exit_info.code
    out, err = capsys.readouterr()
    return code, out, err


def read_jsonl(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def write_inputs(directory: Path, texts: list[str], field: str = "text") -> dict[str, Path]:
    """The same texts as .txt, .jsonl, .csv and .parquet files."""
    files = {suffix: directory / f"in{suffix}" for suffix in sources.INPUT_FORMATS}
    files[".txt"].write_text("\n".join(texts) + "\n", encoding="utf-8")
    files[".jsonl"].write_text("".join(json.dumps({"id": i, field: t}) + "\n" for i, t in enumerate(texts)), encoding="utf-8")
    with files[".csv"].open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["id", field])
        writer.writerows(enumerate(texts))
    pq.write_table(pa.table({"id": range(len(texts)), field: texts}), files[".parquet"])
    return files


# ------------------------------------------------------------------------------ embed
def test_embed_arguments_to_stdout(capsys, tiny_model_dir, embedder):
    code, out, err = run(capsys, "embed", "--model", tiny_model_dir, *TEXTS)
    assert code == 0, err
    rows = read_jsonl(out)
    assert [r["id"] for r in rows] == list(range(len(TEXTS)))
    np.testing.assert_allclose([r["embedding"] for r in rows], embedder.encode(TEXTS), atol=1e-5)


def test_embed_stdin_lines(capsys, monkeypatch, tiny_model_dir, embedder):
    monkeypatch.setattr(sys, "stdin", stdio.StringIO("\n".join(TEXTS) + "\n"))
    code, out, err = run(capsys, "embed", "-m", tiny_model_dir, "--dim", 8)
    assert code == 0, err
    np.testing.assert_allclose([r["embedding"] for r in read_jsonl(out)], embedder.encode(TEXTS, dim=8), atol=1e-5)


@pytest.mark.parametrize("suffix", sources.INPUT_FORMATS)
def test_embed_every_input_format(capsys, tmp_path, tiny_model_dir, embedder, suffix):
    field = "text" if suffix == ".txt" else "body"
    source = write_inputs(tmp_path, TEXTS, field)[suffix]
    output = tmp_path / "out.npy"
    code, _, err = run(capsys, "embed", "-m", tiny_model_dir, "--input", source, "--field", field, "--output", output)
    assert code == 0, err
    assert f"wrote {len(TEXTS)} embeddings" in err
    np.testing.assert_allclose(np.load(output), embedder.encode(TEXTS), atol=1e-5)


def test_embed_every_output_format(capsys, tmp_path, tiny_model_dir, embedder):
    expected = embedder.encode(TEXTS, normalize=False)
    common = ["embed", "-m", tiny_model_dir, "--no-normalize", "--batch-tokens", 8, *TEXTS]
    for name in ("v.npy", "v.parquet", "v.jsonl"):
        assert run(capsys, *common, "-o", tmp_path / name)[0] == 0
    np.testing.assert_allclose(np.load(tmp_path / "v.npy"), expected, atol=1e-5)
    table = pq.read_table(tmp_path / "v.parquet")
    assert table.column_names == ["id", "embedding"] and table["id"].to_pylist() == list(range(len(TEXTS)))
    np.testing.assert_allclose(np.array(table["embedding"].to_pylist()), expected, atol=1e-5)
    rows = read_jsonl((tmp_path / "v.jsonl").read_text())
    np.testing.assert_allclose([r["embedding"] for r in rows], expected, atol=1e-5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.jsonl", "v.npy", "v.parquet"]  # no temporary files left


def test_embed_quantized_outputs(capsys, tmp_path, tiny_model_dir):
    """--precision writes sentence-transformers' quantization of the vectors the float32 job writes, in every output
    format, with the types the schema names; int8 / uint8 take --ranges."""
    from sentence_transformers.util import quantize_embeddings as st_quantize

    from gte.quantize import calibration_ranges

    common = ["embed", "-m", tiny_model_dir, "--overwrite", *TEXTS]
    assert run(capsys, *common, "-o", tmp_path / "f.npy")[0] == 0
    vectors = np.load(tmp_path / "f.npy")
    np.save(tmp_path / "ranges.npy", calibration_ranges(vectors))
    for precision in ("int8", "uint8", "binary", "ubinary"):
        ranges = ["--ranges", tmp_path / "ranges.npy"] if precision.endswith("int8") else []
        expected = st_quantize(vectors, precision, ranges=np.load(tmp_path / "ranges.npy") if ranges else None)
        for name in ("q.npy", "q.parquet", "q.jsonl"):
            code, _, err = run(capsys, *common, "--precision", precision, *ranges, "-o", tmp_path / name)
            assert code == 0, err
        stored = np.load(tmp_path / "q.npy")
        assert stored.dtype == expected.dtype and stored.shape == expected.shape
        np.testing.assert_array_equal(stored, expected)
        table = pq.read_table(tmp_path / "q.parquet")
        assert table.schema.field("embedding").type == pa.list_(pa.from_numpy_dtype(expected.dtype), expected.shape[1])
        np.testing.assert_array_equal(np.array(table["embedding"].to_pylist()), expected)
        np.testing.assert_array_equal([r["embedding"] for r in read_jsonl((tmp_path / "q.jsonl").read_text())], expected)
    (tmp_path / "empty.txt").write_text("")
    assert run(capsys, "embed", "-m", tiny_model_dir, "-i", tmp_path / "empty.txt", "--precision", "ubinary",
               "-o", tmp_path / "empty.parquet")[0] == 0  # fmt: skip
    assert pq.read_table(tmp_path / "empty.parquet").schema.field("embedding").type == pa.list_(pa.uint8(), 4)


def test_embed_quantized_errors(capsys, tmp_path, tiny_model_dir):
    common = ["embed", "-m", tiny_model_dir, *TEXTS]
    code, _, err = run(capsys, *common, "--precision", "int8")
    assert code == 2 and "needs each dimension's range (--ranges" in err and err.count("\n") == 1
    code, _, err = run(capsys, *common, "--ranges", tmp_path / "none.npy")
    assert code == 2 and "not a readable .npy file" in err
    np.save(tmp_path / "r.npy", np.zeros((3, 4)))
    code, _, err = run(capsys, *common, "--precision", "uint8", "--ranges", tmp_path / "r.npy")
    assert code == 2 and "not float [2, dim]" in err
    np.save(tmp_path / "r.npy", np.zeros((2, 4), dtype=np.float32))
    code, _, err = run(capsys, *common, "--precision", "uint8", "--ranges", tmp_path / "r.npy")
    assert code == 2 and "the ranges hold 4 dimensions and the vectors 32" in err
    code, _, err = run(capsys, *common, "--precision", "binary", "--ranges", tmp_path / "r.npy")
    assert code == 2 and "ranges apply to the int8 and uint8 precisions only" in err


def test_embed_sparse(capsys, tmp_path, sparse_model_dir):
    texts = ["der hund der hund", "北京 上海", ""]
    expected = gte.Embedder(sparse_model_dir).encode_sparse(texts)
    code, out, err = run(capsys, "embed", "-m", sparse_model_dir, "--sparse", *texts)
    assert code == 0, err
    rows = read_jsonl(out)
    assert [r["id"] for r in rows] == [0, 1, 2]
    assert [r["sparse"].keys() for r in rows] == [e.keys() for e in expected]
    assert run(capsys, "embed", "-m", sparse_model_dir, "--sparse", "-o", tmp_path / "s.parquet", *texts)[0] == 0
    table = pq.read_table(tmp_path / "s.parquet")
    assert table.column_names == ["id", "sparse"]
    for got, want in zip(table["sparse"].to_pylist(), expected):
        assert dict(got) == pytest.approx(want)
    code, _, err = run(capsys, "embed", "-m", sparse_model_dir, "--sparse", "-o", tmp_path / "s.npy", *texts)
    assert code == 2 and "cannot write sparse embeddings as '.npy'" in err


def test_embed_dense_and_sparse_in_one_pass(capsys, tmp_path, sparse_model_dir):
    texts = ["der hund der hund", "北京 上海", ""]
    embedder = gte.Embedder(sparse_model_dir)
    code, _, err = run(capsys, "embed", "-m", sparse_model_dir, "--sparse", "--dense", "--dim", "16", "-o",
                       tmp_path / "both.parquet", "--keep-columns", "text", "-i", write_inputs(tmp_path, texts)[".jsonl"])  # fmt: skip
    assert code == 0 and "dense and sparse embeddings" in err, err
    table = pq.read_table(tmp_path / "both.parquet")
    assert table.column_names == ["id", "embedding", "sparse", "text"]
    np.testing.assert_allclose(np.array(table["embedding"].to_pylist()), embedder.encode(texts, dim=16), atol=1e-5)
    for got, want in zip(table["sparse"].to_pylist(), embedder.encode_sparse(texts)):
        assert dict(got) == pytest.approx(want, abs=1e-5)
    rows = read_jsonl(run(capsys, "embed", "-m", sparse_model_dir, "--sparse", "--dense", *texts)[1])
    assert [sorted(r) for r in rows] == [["embedding", "id", "sparse"]] * 3
    assert "dense adds the dense vectors to sparse ones" in error_of(capsys, "embed", "--dense", "hello")
    prompted = gte.Embedder(sparse_model_dir, prompts={"query": "q: "}, default_prompt_name="query")
    with pytest.raises(sources.InputError, match="default prompt 'q: '"):
        gte.embed_corpus(texts, tmp_path / "p.parquet", embedder=prompted, sparse=True, dense=True)
    assert "prompts apply to dense vectors" in error_of(capsys, "embed", "-m", sparse_model_dir, "--sparse", "--dense",
                                                        "--prompt", "q: ", "hello")  # fmt: skip


def test_embed_chunks_a_row_per_chunk(capsys, tmp_path):
    texts = ["Pandas live in the mountains of central China. They eat bamboo, almost nothing else.", "short", "",
             "Élan vital, naïve café: unicode — and punctuation!!! " * 2]  # fmt: skip
    source = write_inputs(tmp_path, texts)[".jsonl"]
    embedder = gte.Embedder()
    for late in (False, True):
        out = tmp_path / f"chunks-{late}.parquet"
        argv = ["embed", "-i", source, "--id-field", "id", "--keep-columns", "id", "--chunk-tokens", "6",
                "--keep-text", "--window", "2", "-o", out, *(["--late-chunking"] if late else [])]  # fmt: skip
        code, _, err = run(capsys, *argv)
        assert code == 0, err
        table = pq.read_table(out)
        assert table.column_names == ["id", "chunk", "start", "end", "text", "embedding"]
        chunks, vectors = embedder.encode_chunks(texts, chunk_tokens=6, late=late)
        assert table["id"].to_pylist() == [c.document for c in chunks]
        assert table["chunk"].to_pylist() == [c.index for c in chunks]
        np.testing.assert_allclose(np.array(table["embedding"].to_pylist()), vectors, atol=1e-5)
        for document, text in enumerate(texts):  # the spans tile each text; the text column is the span's
            rows = [r for r in table.to_pylist() if r["id"] == document]
            assert "".join(r["text"] for r in rows) == text
            assert all(text[r["start"] : r["end"]] == r["text"] for r in rows)
        assert run(capsys, *argv, "--resume")[0] == 0  # a finished job: nothing to resume
    assert "need --chunk-tokens" in error_of(capsys, "embed", "--chunk-overlap", "2", "hello")
    assert "chunks are embedded as dense float32" in error_of(capsys, "embed", "--chunk-tokens", "8", "--dim", "8", "hello")
    assert "overlap must be" in error_of(capsys, "embed", "--chunk-tokens", "4", "--chunk-overlap", "4", "hello")
    assert ".npy file holds vectors only" in error_of(capsys, "embed", "--chunk-tokens", "4", "-o", tmp_path / "c.npy", "hi")


def test_embed_chunks_by_sentences(capsys, tmp_path):
    """--chunk-by sentences: whole sentences in each chunk (the Embedder's chunks), the last that fit in the overlap
    repeated."""
    texts = ["Pandas live in China. They eat bamboo! Do they sleep?\nYes, a lot.", "北京很大。上海也很大。", "one"]
    source = write_inputs(tmp_path, texts)[".jsonl"]
    embedder = gte.Embedder()
    for late in (False, True):
        out = tmp_path / f"sentences-{late}.parquet"
        argv = ["embed", "-i", source, "--chunk-tokens", "10", "--chunk-overlap", "4", "--chunk-by", "sentences",
                "--keep-text", "-o", out, *(["--late-chunking"] if late else [])]  # fmt: skip
        code, _, err = run(capsys, *argv)
        assert code == 0, err
        table = pq.read_table(out)
        chunks, vectors = embedder.encode_chunks(texts, chunk_tokens=10, overlap=4, by="sentences", late=late)
        assert table["text"].to_pylist() == ["Pandas live in China. They eat bamboo! ", "They eat bamboo! Do they sleep?\n",
                                             "Do they sleep?\nYes, a lot.", "北京很大。", "上海也很大。", "one"]  # fmt: skip
        assert [(r["id"], r["chunk"], r["start"], r["end"]) for r in table.to_pylist()] == [
            (c.document, c.index, c.start, c.end) for c in chunks]  # fmt: skip
        np.testing.assert_allclose(np.array(table["embedding"].to_pylist()), vectors, atol=1e-5)
    assert "invalid choice: 'words'" in error_of(capsys, "embed", "--chunk-tokens", "8", "--chunk-by", "words", "hi")
    assert "need --chunk-tokens" in error_of(capsys, "embed", "--chunk-by", "sentences", "hello")


# ------------------------------------------------------------------------------ errors
def error_of(capsys, *argv) -> str:
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(("gte ", "gte: "))
    return lines[0]


def test_missing_model(capsys, tmp_path):
    assert "not a checkpoint directory" in error_of(capsys, "embed", "-m", tmp_path / "none", "x")
    message = error_of(capsys, "embed", "-m", "Alibaba-NLP/not-cached", "x")
    assert "not in the Hugging Face cache" in message and "local checkpoint directory" in message
    assert "not a checkpoint directory" in error_of(capsys, "info", tmp_path / "none")
    assert "not a checkpoint directory" in error_of(capsys, "rerank", "-q", "q", "-m", tmp_path / "none", "d")


def test_malformed_and_missing_inputs(capsys, tmp_path, tiny_model_dir):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a"}\n{"text": "b"}\n{"text": oops}\n')
    assert "bad.jsonl, line 3: not valid JSON" in error_of(capsys, "embed", "-m", tiny_model_dir, "-i", bad)
    bad.write_text('{"text": "a"}\n{"body": "b"}\n')
    assert "line 2: no field 'text' (fields: body)" in error_of(capsys, "embed", "-m", tiny_model_dir, "-i", bad)
    bad.write_text('{"text": "a"}\n{"text": 7}\n')
    assert "line 2: field 'text' is int, not a string" in error_of(capsys, "embed", "-m", tiny_model_dir, "-i", bad)
    files = write_inputs(tmp_path, ["a", "b"])
    for suffix in (".csv", ".parquet"):
        message = error_of(capsys, "embed", "-m", tiny_model_dir, "-i", files[suffix], "--field", "body")
        assert "no column 'body' (columns: id, text)" in message
    assert "no such file" in error_of(capsys, "embed", "-m", tiny_model_dir, "-i", tmp_path / "missing.txt")
    assert "unknown input format '.xml'" in error_of(capsys, "embed", "-m", tiny_model_dir, "-i", tmp_path / "a.xml")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    assert "not UTF-8" in error_of(capsys, "embed", "-m", tiny_model_dir, "-i", tmp_path / "latin1.txt")
    (tmp_path / "broken.parquet").write_bytes(b"not parquet")
    assert "not a readable parquet file" in error_of(capsys, "embed", "-m", tiny_model_dir, "-i", tmp_path / "broken.parquet")
    assert "not both" in error_of(capsys, "embed", "-m", tiny_model_dir, "-i", files[".txt"], "x")
    assert "cannot write embeddings as '.csv'" in error_of(capsys, "embed", "-m", tiny_model_dir, "-o", tmp_path / "o.csv", "x")
    assert "dim must be between 1 and the model's 32 dimensions" in error_of(capsys, "embed", "-m", tiny_model_dir, "--dim", 99, "x")


def test_failed_run_leaves_no_partial_output(capsys, monkeypatch, tmp_path, tiny_model_dir):
    output = tmp_path / "v.parquet"

    def write_half_then_fail(parts, target):
        target.write_bytes(b"PAR1 partial")
        raise ValueError("disk full")

    monkeypatch.setattr(sinks, "_concat_parquet", write_half_then_fail)
    assert "disk full" in error_of(capsys, "embed", "-m", tiny_model_dir, "-o", output, "x", "y")
    assert [p.name for p in tmp_path.iterdir()] == ["v.parquet.partial"]  # the finished parts, nothing under the name


def test_text_lines_split_at_line_feeds_only(tmp_path):
    source = tmp_path / "in.txt"
    source.write_bytes("one\r\ntwo\u2028still two\x0c\n\nfour".encode())
    assert sources.read_texts(source) == ["one", "two\u2028still two\x0c", "", "four"]


def test_truncation_warning_is_one_line(capsys, tiny_model_dir):
    code, out, err = run(capsys, "embed", "-m", tiny_model_dir, "fox " * 200, "dog")
    assert code == 0 and len(read_jsonl(out)) == 2
    assert err.strip() == "gte: warning: 1 of 2 texts were longer than max_length=64 tokens and were truncated"


# ------------------------------------------------------------------------------ rerank
def test_rerank(capsys, monkeypatch, tmp_path, reranker_model_dir):
    docs = ["der hund ist schnell", "the panda is a bear", "北京 上海"]
    expected = gte.Reranker(reranker_model_dir).rank("panda", docs)
    code, out, err = run(capsys, "rerank", "-m", reranker_model_dir, "--query", "panda", *docs)
    assert code == 0, err
    lines = [line.split("\t") for line in out.splitlines()]
    assert [(int(i), text) for _, i, text in lines] == [(hit["index"], hit["text"]) for hit in expected]
    np.testing.assert_allclose([float(s) for s, _, _ in lines], [hit["score"] for hit in expected], atol=1e-5)

    source = write_inputs(tmp_path, docs)[".jsonl"]
    code, out, _ = run(capsys, "rerank", "-m", reranker_model_dir, "-q", "panda", "-i", source, "--top-k", 1, "--normalize")
    best = expected[0]
    assert code == 0 and out.splitlines() == [f"{1 / (1 + np.exp(-best['score'])):.6f}\t{best['index']}\t{best['text']}"]

    monkeypatch.setattr(sys, "stdin", stdio.StringIO("\n".join(docs)))
    code, out, _ = run(capsys, "rerank", "-m", reranker_model_dir, "-q", "panda")
    assert code == 0 and len(out.splitlines()) == 3


@pytest.mark.filterwarnings("ignore::gte.embed.TruncationWarning")
def test_rerank_truncation_side(capsys, reranker_model_dir):
    docs = ["the panda " * 100 + "lives in china", "a dog"]
    reranker = gte.Reranker(reranker_model_dir)
    expected = reranker.rank("panda", docs, truncation_side="left")
    code, out, err = run(capsys, "rerank", "-m", reranker_model_dir, "-q", "panda", "--truncation-side", "left",
                         "--format", "jsonl", *docs)  # fmt: skip
    assert code == 0, err
    hits = read_jsonl(out)
    assert [hit["index"] for hit in hits] == [hit["index"] for hit in expected]
    np.testing.assert_allclose([hit["score"] for hit in hits], [hit["score"] for hit in expected], atol=1e-5)
    long_doc = next(hit for hit in expected if hit["index"] == 0)
    assert abs(long_doc["score"] - reranker.score("panda", docs)[0]) > 1e-3  # the side mattered
    assert "invalid choice: 'up'" in error_of(capsys, "rerank", "-q", "q", "--truncation-side", "up", "d")


def test_rerank_refuses_an_embedding_model(capsys, tiny_model_dir):
    assert "not a reranker" in error_of(capsys, "rerank", "-m", tiny_model_dir, "-q", "q", "d")


def test_embed_with_the_checkpoints_modules_and_prompts(capsys, st_dir):
    """gte embed gives sentence-transformers' vectors: Dense, Normalize, the default prompt, a named one, a text."""
    from sentence_transformers import SentenceTransformer

    prompts = {"query": "query: ", "passage": "passage: "}
    path = st_dir(pooling="mean", dense=((16, "GELU"),), normalize=True, prompts=prompts, default_prompt_name="query")
    reference = SentenceTransformer(str(path), device="cpu")
    texts = TEXTS[:1] + TEXTS[2:]
    cases = {(): {}, ("--prompt-name", "passage"): {"prompt_name": "passage"}, ("--prompt", "x: "): {"prompt": "x: "}}
    for flags, encode in cases.items():
        code, out, _ = run(capsys, "embed", "-m", path, *flags, *texts)
        assert code == 0
        got = np.array([row["embedding"] for row in read_jsonl(out)])
        np.testing.assert_allclose(got, reference.encode(texts, **encode), atol=1e-5, err_msg=str(flags))
    message = error_of(capsys, "embed", "-m", path, "--prompt-name", "nope", "x")
    assert "prompt name 'nope' is not one of this model's prompts (query, document, passage)" in message
    assert run(capsys, "embed", "-m", path, "--prompt-name", "query", "--prompt", "q", "x")[0] == 2  # one or the other


def test_embed_truncation_side(capsys, tiny_model_dir, embedder):
    text = " ".join(["deep neural network for search"] * 40)  # longer than the model's 64 tokens
    for side in ("right", "left"):
        code, out, _ = run(capsys, "embed", "-m", tiny_model_dir, "--truncation-side", side, text)
        assert code == 0
        expected = embedder.encode(text, truncation_side=side)
        np.testing.assert_allclose(read_jsonl(out)[0]["embedding"], expected[0], atol=1e-6)
    start = embedder.tokenize(text + " paris", truncation_side="right")
    end = embedder.tokenize("paris " + text, truncation_side="left")
    assert start[0][:3] == embedder.tokenize("deep neural")[0][:3] and end[0][-3:] == embedder.tokenize("for search")[0][-3:]
    assert len(start[0]) == len(end[0]) == embedder.max_length


def test_embed_refuses_a_module_it_cannot_apply(capsys, st_dir, tmp_path):
    import shutil

    path = Path(shutil.copytree(st_dir(pooling="mean"), tmp_path / "unknown"))
    modules = json.loads((path / "modules.json").read_text())
    modules.append({"idx": 2, "name": "2", "path": "2_LayerNorm", "type": "sentence_transformers.models.LayerNorm"})
    (path / "modules.json").write_text(json.dumps(modules))
    message = error_of(capsys, "embed", "-m", path, "x")
    assert "module '2' of type 'sentence_transformers.models.LayerNorm' is not one gte can apply" in message


def test_pooling_of_a_checkpoint_without_sentence_transformers_files(capsys, multilingual_model_dir):
    code, _, err = run(capsys, "embed", "-m", multilingual_model_dir, "x")
    assert code == 0 and err.count("pooling is 'cls'") == 1
    code, out, _ = run(capsys, "info", multilingual_model_dir, "--json")
    assert json.loads(out)["pooling"].startswith("cls (no sentence-transformers files")
    assert run(capsys, "embed", "-m", multilingual_model_dir, "--pooling", "mean", "x")[2] == ""


# ------------------------------------------------------------------------------ info
def test_info(capsys, sparse_model_dir):
    code, out, _ = run(capsys, "info", sparse_model_dir, "--json")
    assert code == 0
    report = json.loads(out)
    model = gte.NewForTokenClassification.from_pretrained(sparse_model_dir)
    assert report["parameters"] == sum(p.numel() for p in model.parameters())
    assert report["architecture"] == "NewForTokenClassification" and report["sparse_head"] is True
    assert (report["hidden_size"], report["num_hidden_layers"], report["type_vocab_size"]) == (32, 2, 1)
    assert report["rope_scaling"] == {"type": "ntk", "factor": 8.0}
    assert set(report["attention_backends"]["cpu float32"]) == set(gte.available_backends("cpu", "float32"))
    code, out, _ = run(capsys, "info", sparse_model_dir)
    assert code == 0 and "architecture:" in out and "NewForTokenClassification" in out


# ------------------------------------------------------------------------------ classify
def test_classify(capsys, monkeypatch, tmp_path, classifier_model_dir, tiny_model_dir):
    texts = ["a man is sleeping", "the dog runs", ""]
    classifier = gte.Classifier(classifier_model_dir)
    code, out, err = run(capsys, "classify", "-m", classifier_model_dir, *texts)
    assert code == 0, err
    rows = [line.split("\t") for line in out.splitlines()]
    for i, (row, expected) in enumerate(zip(rows, classifier.predict(texts))):
        assert int(row[0]) == i and row[1::2] == [p["label"] for p in expected]
        np.testing.assert_allclose([float(v) for v in row[2::2]], [p["score"] for p in expected], atol=1e-5)

    source = write_inputs(tmp_path, texts)[".jsonl"]
    code, out, _ = run(capsys, "classify", "-m", classifier_model_dir, "-i", source, "--pair", "a person rests",
                       "--top-k", 1, "--activation", "none", "--format", "jsonl")  # fmt: skip
    expected = classifier.predict([(text, "a person rests") for text in texts], activation="none", top_k=1)
    got = read_jsonl(out)
    assert code == 0 and [r["text"] for r in got] == texts and [r["index"] for r in got] == [0, 1, 2]
    for row, want in zip(got, expected):
        assert [p["label"] for p in row["labels"]] == [p["label"] for p in want]
        np.testing.assert_allclose([p["score"] for p in row["labels"]], [p["score"] for p in want], atol=1e-5)

    monkeypatch.setattr(sys, "stdin", stdio.StringIO(""))
    assert run(capsys, "classify", "-m", classifier_model_dir)[:2] == (0, "")  # no texts: nothing to print
    assert "needs --model" in error_of(capsys, "classify", "x")
    assert "not a sequence classifier" in error_of(capsys, "classify", "-m", tiny_model_dir, "x")
    assert "invalid choice: 'tanh'" in error_of(capsys, "classify", "-m", tiny_model_dir, "--activation", "tanh", "x")


def test_serve_is_a_subcommand(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    usage = capsys.readouterr().out
    assert all(command in usage for command in ("embed", "rerank", "classify", "info", "serve"))


# ------------------------------------------------------------------------------ start-up
def test_help_and_argument_errors_import_neither_torch_nor_transformers():
    """`gte` starts in gte_cli, which imports no part of gte (only gte_defaults): help and argument errors need no
    torch."""
    probe = """
import sys, gte_cli
for argv in (["--help"], ["embed", "--help"], ["serve", "--help"], ["classify", "--help"], ["rerank", "-q", "q", "--top-k", "0"],
             ["embed", "--dim", "x"], ["serve", "--port", "x"], []):
    try:
        gte_cli.main(argv)
    except SystemExit as exit_info:
        print("exit", exit_info.code, file=sys.stderr)
print(sorted(name for name in ("torch", "transformers", "gte") if name in sys.modules), file=sys.stderr)
"""
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    lines = done.stderr.splitlines()
    assert lines[-1] == "[]", done.stderr
    assert [line for line in lines if line.startswith("exit")] == ["exit 0"] * 4 + ["exit 2"] * 4
    assert "usage: gte embed" in done.stdout


def test_the_command_starts_in_gte_cli():
    from importlib.metadata import entry_points

    (script,) = entry_points(group="console_scripts", name="gte")
    assert script.value == "gte_cli:main"


def test_install_hints_name_our_distribution():
    """`gte` on the package index is another project: every extra we point users at is gte-engine's."""
    import re

    from gte import export

    src = Path(gte.__file__).parent
    found = {str(path.relative_to(src.parent)): re.findall(r"(?<![-\w])gte\[", path.read_text())
             for path in [*src.rglob("*.py"), src.parent / "gte_cli.py"]}  # fmt: skip
    assert not {path: hits for path, hits in found.items() if hits}
    assert "pip install 'gte-engine[onnx]'" in export.EXTRA_HINT


def test_argument_errors_are_one_line(capsys):
    assert error_of(capsys, "embed", "--dim", "x") == "gte embed: error: argument --dim: invalid int value: 'x' (see `gte embed --help`)"
    assert "required: --query/-q" in error_of(capsys, "rerank", "d")
    assert "required: COMMAND" in error_of(capsys)
    assert "argument --batch-tokens: must be at least 1, got 0" in error_of(capsys, "embed", "--batch-tokens", 0, "x")


def test_non_utf8_arguments(capsys, tiny_model_dir):
    """Bytes that are not UTF-8 reach sys.argv as lone surrogates (surrogateescape)."""
    not_utf8 = os.fsdecode(b"caf\xe9")
    assert "argument TEXT: not UTF-8" in error_of(capsys, "embed", "-m", tiny_model_dir, "ok", not_utf8)
    assert "argument --query/-q: not UTF-8" in error_of(capsys, "rerank", "-q", not_utf8, "d")
    assert "argument DOC: not UTF-8" in error_of(capsys, "rerank", "-q", "q", not_utf8)


# ------------------------------------------------------------------------------ signals and a closed stdout
def test_closed_stdout_ends_quietly(tiny_model_dir):
    """`gte embed ... | head -1`: the reader is gone; no traceback, the exit status of a SIGPIPE (141)."""
    read, write = os.pipe()
    os.close(read)  # every write to the pipe fails: EPIPE
    command = [sys.executable, "-c", "import sys, gte_cli; sys.exit(gte_cli.main())", "embed", "-m", str(tiny_model_dir)]
    with os.fdopen(write, "wb") as stdout:
        done = subprocess.run([*command, *TEXTS], stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=300)
    assert (done.returncode, done.stderr) == (128 + signal.SIGPIPE, "")


@pytest.mark.parametrize("message", ["", "interrupted; resume with: gte embed --resume job"])
def test_ctrl_c_is_one_line(capsys, monkeypatch, tiny_model_dir, message):
    def interrupted(args):
        raise KeyboardInterrupt(*[message] * bool(message))

    monkeypatch.setattr(cli, "run_embed", interrupted)
    code, out, err = run(capsys, "embed", "-m", tiny_model_dir, "x")
    assert (code, out, err) == (130, "", f"gte embed: {message or 'interrupted'}\n")


def test_sigterm_removes_the_temporary_output(capsys, monkeypatch, tmp_path, tiny_model_dir):
    """SIGTERM while the output is written: `finally` blocks run, no temporary file stays, the finished parts
    stay for --resume, exit 143."""
    def write_half_then_terminated(parts, target):
        target.write_bytes(b"PAR1 partial")
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(60)  # the handler raises in here

    monkeypatch.setattr(sinks, "_concat_parquet", write_half_then_terminated)
    handler = signal.getsignal(signal.SIGTERM)
    code, out, err = run(capsys, "embed", "-m", tiny_model_dir, "-o", tmp_path / "v.parquet", "x", "y")
    assert (code, out) == (143, "") and err.startswith("gte embed: stopped after 2 of 2 rows;") and err.count("\n") == 1
    assert [p.name for p in tmp_path.iterdir()] == ["v.parquet.partial"]
    assert signal.getsignal(signal.SIGTERM) == handler  # main leaves the process's handler as it found it
    monkeypatch.undo()
    code, _, err = run(capsys, "embed", "-m", tiny_model_dir, "-o", tmp_path / "v.parquet", "x", "y", "--resume")
    assert code == 0 and pq.read_table(tmp_path / "v.parquet").num_rows == 2, err


# ------------------------------------------------------------------------------ broken checkpoints, devices
def test_broken_checkpoints(capsys, tmp_path, tiny_model_dir):
    def copy(name: str) -> Path:
        target = tmp_path / name
        target.mkdir()
        for file in tiny_model_dir.iterdir():
            if file.is_file():
                (target / file.name).write_bytes(file.read_bytes())
        return target

    (copy("no-weights") / "model.safetensors").unlink()
    (copy("list-config") / "config.json").write_text("[1, 2]")
    (copy("bad-config") / "config.json").write_text('{"model_type": ')
    weights = copy("truncated") / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    config = copy("other-config") / "config.json"
    config.write_text(json.dumps(json.loads(config.read_text()) | {"hidden_size": 64}))
    errors = {
        "no-weights": "no-weights has no model.safetensors",
        "list-config": "list-config/config.json holds an array, not an object",
        "bad-config": "bad-config/config.json is not valid JSON",
        "truncated": "truncated/model.safetensors is damaged or incomplete",
        "other-config": "other-config/config.json has hidden_size=64 but the weights have hidden_size=32",
    }
    for name, expected in errors.items():
        for command in ("embed -m {} d", "info {}", "rerank -q q -m {} d"):
            assert expected in error_of(capsys, *command.format(tmp_path / name).split())
    (copy("no-tokenizer") / "tokenizer.json").unlink()
    assert "no-tokenizer has no usable tokenizer (no tokenizer files)" in error_of(capsys, "embed", "-m", tmp_path / "no-tokenizer", "d")


def test_revision_pins_a_hub_commit(capsys, monkeypatch, two_revisions_hub_cache, tiny_model_dir):
    fixtures.use_hub_cache(two_revisions_hub_cache, monkeypatch)
    code, out, err = run(capsys, "embed", "-m", fixtures.OFFICIAL_ID, "--revision", "v1", *TEXTS)
    assert code == 0, err
    pinned = gte.Embedder(tiny_model_dir).encode(TEXTS)
    np.testing.assert_allclose([row["embedding"] for row in read_jsonl(out)], pinned, atol=1e-6)
    code, out, _ = run(capsys, "info", fixtures.OFFICIAL_ID, "--revision", fixtures.OLD_REVISION, "--json")
    assert code == 0 and json.loads(out)["path"].endswith(f"snapshots/{fixtures.OLD_REVISION}")
    missing = "2" * 40
    message = error_of(capsys, "rerank", "-q", "q", "-m", fixtures.OFFICIAL_ID, "--revision", missing, "d")
    assert f"at revision '{missing}' is not in the Hugging Face cache" in message
    assert f"hf download {fixtures.OFFICIAL_ID} --revision {missing}" in message
    message = error_of(capsys, "embed", "-m", tiny_model_dir, "--revision", "main", "d")
    assert message.endswith(f"revision 'main' pins a hub commit, and {tiny_model_dir} is a local directory: drop the "
                            "revision, or pass a hub id")  # fmt: skip


def test_unusable_devices_fail_before_any_work(capsys, tmp_path, tiny_model_dir):
    missing = tmp_path / "missing.txt"  # the device is checked first: no "no such file"
    assert error_of(capsys, "embed", "-m", tiny_model_dir, "--device", "bogus", "-i", missing).endswith(
        "unknown device 'bogus': devices here are cpu" + ", cuda, cuda:1, ..." * torch_cuda()
    )
    if not torch_cuda():
        message = error_of(capsys, "rerank", "-q", "q", "--device", "cuda", "-i", missing)
        assert "device 'cuda' is not available here" in message
    with pytest.raises(ValueError, match="unknown device 'bogus'"):
        hub.resolve_device("bogus")


def torch_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


# ------------------------------------------------------------------------------ rerank output
def test_rerank_top_k_and_output_formats(capsys, reranker_model_dir):
    docs = ["a\ttab", "two\nlines\r\n", "back\\slash", "the panda is a bear"]
    expected = gte.Reranker(reranker_model_dir).rank("panda", docs)
    common = ["rerank", "-m", reranker_model_dir, "-q", "panda", *docs]
    code, out, err = run(capsys, *common)
    assert code == 0, err
    lines = [line.split("\t") for line in out.splitlines()]
    assert [len(fields) for fields in lines] == [3] * len(docs)  # one line, three fields per document
    unescape = {"\\t": "\t", "\\n": "\n", "\\r": "\r", "\\\\": "\\"}
    texts = [re_unescape(text, unescape) for _, _, text in lines]
    assert texts == [hit["text"] for hit in expected]

    code, out, _ = run(capsys, *common, "--format", "jsonl", "--top-k", 2)
    hits = read_jsonl(out)
    assert code == 0 and [list(hit) for hit in hits] == [["index", "score", "text"]] * 2
    assert [(hit["index"], hit["text"]) for hit in hits] == [(hit["index"], hit["text"]) for hit in expected[:2]]
    np.testing.assert_allclose([hit["score"] for hit in hits], [hit["score"] for hit in expected[:2]], rtol=1e-6)

    for top_k in (0, -1):
        assert f"argument --top-k: must be at least 1, got {top_k}" in error_of(capsys, *common, "--top-k", top_k)
    with pytest.raises(ValueError, match="top_k must be at least 1"):
        gte.Reranker(reranker_model_dir).rank("panda", docs, top_k=-1)


def re_unescape(text: str, escapes: dict[str, str]) -> str:
    return re.sub(r"\\[tnr\\]", lambda match: escapes[match.group()], text)
