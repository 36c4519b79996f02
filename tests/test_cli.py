"""`gte embed | rerank | info` end to end: every input and output format, sparse output, reranking,
the user errors (exit code 2, one line) and atomic output files."""

from __future__ import annotations

import csv
import io as stdio
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import gte
from gte import sinks, sources
from gte.cli import main

TEXTS = ["the quick brown fox", "", "paris london berlin", "deep neural network for search", "北京 hund"]


@pytest.fixture(scope="module")
def embedder(tiny_model_dir) -> gte.Embedder:
    return gte.Embedder(tiny_model_dir)


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
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


# ------------------------------------------------------------------------------ errors
def error_of(capsys, *argv) -> str:
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("gte ")
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
    assert "dim must be between 1 and the hidden size 32" in error_of(capsys, "embed", "-m", tiny_model_dir, "--dim", 99, "x")


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


def test_rerank_refuses_an_embedding_model(capsys, tiny_model_dir):
    assert "not a reranker" in error_of(capsys, "rerank", "-m", tiny_model_dir, "-q", "q", "d")


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


def test_serve_is_a_subcommand(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    usage = capsys.readouterr().out
    assert all(command in usage for command in ("embed", "rerank", "info", "serve"))
