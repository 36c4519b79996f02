"""Corpus jobs (`gte embed --input ... --output ...`, `gte.embed_corpus`): streaming in windows, ids and kept
columns, parquet datasets, resuming after Ctrl-C and SIGKILL, and the inputs and outputs refused up front."""

from __future__ import annotations

import io as stdio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import gte
from gte import job, sources
from gte_cli import main

WORDS = "the quick brown fox jumps over a lazy dog paris london berlin deep neural network search".split()


def corpus(n: int, seed: int = 0) -> list[str]:
    """n texts of 1 to 40 words."""
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=rng.integers(1, 41))) for _ in range(n)]


@pytest.fixture(scope="module")
def embedder(tiny_model_dir) -> gte.Embedder:
    return gte.Embedder(tiny_model_dir)


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def error_of(capsys, *argv) -> str:
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == "", err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def vectors(table: pa.Table) -> np.ndarray:
    return np.array(table["embedding"].to_pylist(), dtype=np.float32)


# ------------------------------------------------------------------------------ ids, columns, order
def test_ids_and_kept_columns_in_input_order(capsys, tmp_path, tiny_model_dir, embedder):
    texts = corpus(300)
    rows = [{"doc": f"d{i:04d}", "body": t, "lang": "en" if i % 2 else None, "n": i} for i, t in enumerate(texts)]
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    common = ["embed", "-m", tiny_model_dir, "-i", source, "--field", "body", "--id-field", "doc",
              "--keep-columns", "lang,n", "--window", 64]  # fmt: skip
    assert run(capsys, *common, "-o", tmp_path / "out.parquet")[0] == 0
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.column_names == ["doc", "embedding", "lang", "n"]
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 32)
    assert table["doc"].to_pylist() == [r["doc"] for r in rows]
    assert table["lang"].to_pylist() == [r["lang"] for r in rows] and table["n"].to_pylist() == list(range(300))
    np.testing.assert_allclose(vectors(table), embedder.encode(texts), atol=1e-5)
    assert pq.ParquetFile(tmp_path / "out.parquet").metadata.num_row_groups == 5  # one per window of 64 rows

    assert run(capsys, *common, "-o", tmp_path / "out.jsonl")[0] == 0
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [list(r) for r in lines[:1]] == [["doc", "embedding", "lang", "n"]]
    assert [r["doc"] for r in lines] == [r["doc"] for r in rows]
    np.testing.assert_allclose([r["embedding"] for r in lines], vectors(table), atol=1e-6)


def test_row_numbers_are_the_default_id(capsys, tmp_path, tiny_model_dir):
    source = tmp_path / "in.txt"
    source.write_text("\n".join(corpus(50)) + "\n")
    code, _, err = run(capsys, "embed", "-m", tiny_model_dir, "-i", source, "-o", tmp_path / "o.parquet", "--window", 7)
    assert code == 0
    assert pq.read_table(tmp_path / "o.parquet")["id"].to_pylist() == list(range(50))
    assert "wrote 50 embeddings to" in err and "tokens in" in err and "rows/s" in err


def test_tiny_windows_give_the_output_of_one_window(tmp_path, tiny_model_dir, embedder):
    texts = corpus(150, seed=1)
    pq.write_table(pa.table({"id": [f"x{i}" for i in range(150)], "text": texts}), tmp_path / "in.parquet")
    one = gte.embed_corpus(tmp_path / "in.parquet", tmp_path / "one.parquet", embedder=embedder, id_field="id", window_rows=100_000)
    tiny = gte.embed_corpus(tmp_path / "in.parquet", tmp_path / "tiny.parquet", embedder=embedder, id_field="id", window_rows=3)
    assert one.rows == tiny.rows == 150
    a, b = pq.read_table(tmp_path / "one.parquet"), pq.read_table(tmp_path / "tiny.parquet")
    assert a["id"].equals(b["id"])
    np.testing.assert_allclose(vectors(a), vectors(b), atol=1e-5)
    assert pq.ParquetFile(tmp_path / "tiny.parquet").metadata.num_row_groups == 50  # one per window


def test_quantized_job_quantizes_every_window_alike(tmp_path, embedder):
    """With fixed ranges, a job of many windows writes the quantization of the float32 job's vectors."""
    texts = corpus(40, seed=2)
    gte.embed_corpus(texts, tmp_path / "f.npy", embedder=embedder, window_rows=3)
    floats = np.load(tmp_path / "f.npy")
    ranges = gte.quantize.calibration_ranges(floats[:10])  # some vectors fall outside: they clip
    gte.embed_corpus(texts, tmp_path / "q.npy", embedder=embedder, window_rows=3, precision="uint8", ranges=ranges)
    np.testing.assert_array_equal(np.load(tmp_path / "q.npy"), gte.quantize_embeddings(floats, "uint8", ranges))
    with pytest.raises(ValueError, match="needs each dimension's range"):
        gte.embed_corpus(texts, tmp_path / "r.npy", embedder=embedder, precision="int8")


def test_character_budget_cuts_windows():
    table = pa.table({"text": ["a" * 10] * 10})
    options = job.Options(window_rows=4, window_chars=25)
    assert [w.num_rows for w in job.windows(iter([table.slice(0, 3), table.slice(3)]), options)] == [2, 2, 2, 2, 2]
    options = job.Options(window_rows=4, window_chars=5)  # a text longer than the budget is a window of its own
    assert [w.num_rows for w in job.windows(iter([table]), options)] == [1] * 10


def test_parquet_directory_is_one_dataset(capsys, tmp_path, tiny_model_dir, embedder):
    data = tmp_path / "data"
    (data / "b").mkdir(parents=True)
    texts = corpus(90, seed=2)
    for name, part in (("a.parquet", slice(0, 30)), ("b/c.parquet", slice(30, 60)), ("d.parquet", slice(60, 90))):
        pq.write_table(pa.table({"id": list(range(90))[part], "text": texts[part]}), data / name, row_group_size=7)
    (data / "_SUCCESS").write_text("")
    (data / ".hidden.parquet").write_text("not parquet")
    for location in (data, str(data / "*.parquet")):
        output = tmp_path / "out.npy"
        assert run(capsys, "embed", "-m", tiny_model_dir, "-i", location, "-o", output, "--overwrite")[0] == 0
        expected = texts if location == data else texts[:30] + texts[60:]
        np.testing.assert_allclose(np.load(output), embedder.encode(expected), atol=1e-5)
    pq.write_table(pa.table({"id": ["x"], "text": ["y"]}), data / "e.parquet")
    message = error_of(capsys, "embed", "-m", tiny_model_dir, "-i", data, "-o", tmp_path / "o.parquet")
    assert "must share one schema" in message and "e.parquet" in message


# ------------------------------------------------------------------------------ resuming
def ctrl_c_at_window(capsys, monkeypatch, window: int, *argv) -> str:
    """Run the job, interrupted as it starts window `window` (0-based): the windows before it are finished parts."""
    real, calls = job.embed_texts, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) > window:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(job, "embed_texts", interrupted)
    code, _, err = run(capsys, *argv)
    monkeypatch.setattr(job, "embed_texts", real)
    assert code == 130 and len(err.strip().splitlines()) == 1, err
    return err


@pytest.mark.parametrize("late, by", [(False, "tokens"), (True, "tokens"), (True, "sentences")],
                         ids=["naive", "late", "late-sentences"])  # fmt: skip
def test_a_chunked_job_resumes_to_the_uninterrupted_output(capsys, monkeypatch, tmp_path, tiny_model_dir, late, by):
    """A part holds more rows than the window's input rows when chunked: resuming counts input rows."""
    rows = [{"id": i, "text": t.replace("dog", "dog.")} for i, t in enumerate(corpus(120, seed=4))]  # some sentences
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    common = ["embed", "-m", tiny_model_dir, "-i", source, "--id-field", "id", "--window", 20, "--chunk-tokens", 5,
              "--chunk-overlap", 1, "--chunk-by", by, *(["--late-chunking"] if late else [])]  # fmt: skip
    assert run(capsys, *common, "-o", tmp_path / "whole.parquet")[0] == 0
    output = tmp_path / "out.parquet"
    assert "stopped after 60 of 120 rows" in ctrl_c_at_window(capsys, monkeypatch, 3, *common, "-o", output)
    code, _, err = run(capsys, *common, "-o", output, "--resume")
    assert code == 0 and "60 were done before the resume" in err
    whole = pq.read_table(tmp_path / "whole.parquet")
    assert pq.read_table(output).equals(whole) and whole.num_rows > 120


def test_ctrl_c_then_resume_gives_the_uninterrupted_output(capsys, monkeypatch, tmp_path, tiny_model_dir):
    rows = [{"id": i, "text": t} for i, t in enumerate(corpus(400, seed=3))]
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    common = ["embed", "-m", tiny_model_dir, "-i", source, "--id-field", "id", "--window", 50]
    assert run(capsys, *common, "-o", tmp_path / "whole.parquet")[0] == 0

    output = tmp_path / "out.parquet"
    err = ctrl_c_at_window(capsys, monkeypatch, 3, *common, "-o", output)
    assert "stopped after 150 of 400 rows" in err and "resume with: gte embed" in err and err.strip().endswith("--resume")
    assert not output.exists() and (tmp_path / "out.parquet.partial" / "manifest.json").is_file()
    assert "pass --resume" in error_of(capsys, *common, "-o", output)  # a rerun without --resume is refused

    code, _, err = run(capsys, *common, "-o", output, "--resume")
    assert code == 0 and "250 rows" in err and "150 were done before the resume" in err
    assert pq.read_table(output).equals(pq.read_table(tmp_path / "whole.parquet"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out.parquet", "whole.parquet"]
    assert "nothing to resume" in run(capsys, *common, "-o", output, "--resume")[2]


KILLABLE = textwrap.dedent("""
    import sys, time
    from gte import job
    from gte_cli import main
    real = job.embed_texts
    def slow(*args, **kwargs):
        time.sleep(0.2)
        return real(*args, **kwargs)
    job.embed_texts = slow
    sys.exit(main(sys.argv[1:]))
""")


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl", ".npy"])
def test_resume_after_sigkill_is_identical_to_an_uninterrupted_run(capsys, tmp_path, tiny_model_dir, suffix):
    source = tmp_path / "in.csv"
    source.write_text("text,id\n" + "".join(f'"{t}",{i}\n' for i, t in enumerate(corpus(600, seed=4))), encoding="utf-8")
    id_args = [] if suffix == ".npy" else ["--id-field", "id"]
    common = ["embed", "-m", tiny_model_dir, "-i", source, *id_args, "--window", 40]
    assert run(capsys, *common, "-o", tmp_path / f"whole{suffix}")[0] == 0

    output = tmp_path / f"out{suffix}"
    manifest = tmp_path / f"out{suffix}.partial" / "manifest.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen([sys.executable, "-c", KILLABLE, *map(str, common), "-o", str(output)], env=env,
                               stderr=subprocess.PIPE)  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if manifest.is_file() and json.loads(manifest.read_text() or "{}").get("done", 0) >= 120:
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = json.loads(manifest.read_text())["done"]
    assert 120 <= done < 600 and not output.exists()
    (manifest.parent / f".part-999999{suffix}.123.tmp").write_text("a part that was being written")

    code, _, err = run(capsys, *common, "-o", output, "--resume")
    assert code == 0, err
    if suffix == ".npy":
        assert np.array_equal(np.load(output), np.load(tmp_path / "whole.npy"))
    else:
        assert output.read_bytes() == (tmp_path / f"whole{suffix}").read_bytes() or suffix == ".parquet"
        if suffix == ".parquet":
            assert pq.read_table(output).equals(pq.read_table(tmp_path / "whole.parquet"))
    assert not manifest.parent.exists()


def flip(path: Path, at: int) -> None:
    """Overwrite one byte of a file (its size unchanged)."""
    data = bytearray(path.read_bytes())
    data[at] ^= 0x55
    path.write_bytes(bytes(data))


def truncate(path: Path, size: int) -> None:
    with path.open("r+b") as f:
        f.truncate(size)


def edit_manifest(work: Path, change) -> None:
    manifest = json.loads((work / "manifest.json").read_text())
    change(manifest)
    (work / "manifest.json").write_text(json.dumps(manifest))


NPY_HEADER, ROW_BYTES = 128, 32 * 4  # the tiny model's 32 float32 dimensions
DAMAGE = {  # done to the work directory of a job stopped after 4 windows of 40 rows: the file the warning names, the row it resumes from
    "truncated jsonl part": (".jsonl", lambda work: truncate(work / "part-000001.jsonl", 3000), "part-000001.jsonl", 40),
    "overwritten parquet part": (".parquet", lambda work: flip(work / "part-000002.parquet", 2000), "part-000002.parquet", 80),
    "done raised": (".parquet", lambda work: edit_manifest(work, lambda m: m.update(done=m["done"] + 80)), "manifest.json", 160),
    "part missing": (".jsonl", lambda work: (work / "part-000001.jsonl").unlink(), "part-000001.jsonl", 40),
    "rows changed": (".jsonl", lambda work: edit_manifest(work, lambda m: (m["parts"][1].update(rows=41), m.update(done=161))),
                     "manifest.json", 40),
    "damaged npy region": (".npy", lambda work: flip(work / "data.npy", NPY_HEADER + 100 * ROW_BYTES + 7), "data.npy", 80),
    "truncated data.npy": (".npy", lambda work: truncate(work / "data.npy", NPY_HEADER + 50 * ROW_BYTES), "data.npy", 40),
    "npy header": (".npy", lambda work: flip(work / "data.npy", 30), None, 160),  # depends on the shape only: rewritten
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_resume_proves_the_parts_it_keeps(capsys, monkeypatch, tmp_path, tiny_model_dir, damage):
    suffix, spoil, named, resumed_from = DAMAGE[damage]
    source = tmp_path / "in.txt"
    source.write_text("\n".join(corpus(300, seed=5)) + "\n")
    common = ["embed", "-m", tiny_model_dir, "-i", source, "--window", 40]
    whole, output = tmp_path / f"whole{suffix}", tmp_path / f"out{suffix}"
    assert run(capsys, *common, "-o", whole)[0] == 0
    assert "stopped after 160 of 300 rows" in ctrl_c_at_window(capsys, monkeypatch, 4, *common, "-o", output)
    spoil(tmp_path / f"out{suffix}.partial")

    code, _, err = run(capsys, *common, "-o", output, "--resume")
    assert code == 0, err
    assert output.read_bytes() == whole.read_bytes()
    *warned, summary = err.strip().splitlines()
    assert len(warned) == (named is not None), err
    for line in warned:
        assert f"{output}.partial/{named}" in line and line.endswith(f": embedding again from row {resumed_from}"), err
    assert f"wrote 300 embeddings to {output}: {300 - resumed_from} rows" in summary
    assert summary.endswith(f"; {resumed_from} were done before the resume"), summary


def test_resume_refuses_a_manifest_without_checksums(capsys, monkeypatch, tmp_path, tiny_model_dir):
    common = ["embed", "-m", tiny_model_dir, "-i", write_jsonl(tmp_path / "in.jsonl", [{"text": t} for t in corpus(90)]),
              "--window", 40, "-o", tmp_path / "o.jsonl"]  # fmt: skip
    ctrl_c_at_window(capsys, monkeypatch, 1, *common)
    edit_manifest(tmp_path / "o.jsonl.partial", lambda m: m.update(parts=[p["name"] for p in m["parts"]]))
    message = error_of(capsys, *common, "--resume")
    assert "manifest.json was written by an earlier gte, without the checksums" in message and "--overwrite" in message


def test_resume_refuses_a_changed_job(capsys, tmp_path, tiny_model_dir):
    source = write_jsonl(tmp_path / "in.jsonl", [{"id": i, "text": t} for i, t in enumerate(corpus(20))])
    output = tmp_path / "o.parquet"
    work = tmp_path / "o.parquet.partial"
    work.mkdir()
    (work / "manifest.json").write_text(json.dumps({"identity": {"model": "another"}, "rows": 20}))
    message = error_of(capsys, "embed", "-m", tiny_model_dir, "-i", source, "-o", output, "--resume")
    assert "cannot resume" in message and "model" in message and "--overwrite" in message
    assert run(capsys, "embed", "-m", tiny_model_dir, "-i", source, "-o", output, "--overwrite")[0] == 0
    assert pq.read_table(output).num_rows == 20


def test_resume_refuses_another_prompt(capsys, monkeypatch, tmp_path, st_dir):
    path = st_dir(pooling="mean", prompts={"query": "query: ", "passage": "passage: "})
    source = write_jsonl(tmp_path / "in.jsonl", [{"id": i, "text": t} for i, t in enumerate(corpus(20))])
    output, work = tmp_path / "o.jsonl", tmp_path / "o.jsonl.partial"
    common = ["embed", "-m", path, "-i", source, "-o", output, "--window", "5"]
    monkeypatch.setattr(job.EmbedJob, "_finish", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    assert run(capsys, *common, "--prompt-name", "query")[0] == 130
    monkeypatch.undo()
    assert json.loads((work / "manifest.json").read_text())["identity"]["prompt"] == "query: "
    message = error_of(capsys, *common, "--prompt-name", "passage", "--resume")
    assert "cannot resume" in message and "prompt" in message
    assert run(capsys, *common, "--prompt-name", "query", "--resume")[0] == 0
    expected = gte.Embedder(path).encode(corpus(20), prompt_name="query")
    got = np.array([json.loads(line)["embedding"] for line in output.read_text().splitlines()])
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_duplicate_ids_are_refused_when_resuming(capsys, tmp_path, tiny_model_dir):
    rows = [{"id": i % 15, "text": t} for i, t in enumerate(corpus(20))]
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    message = error_of(capsys, "embed", "-m", tiny_model_dir, "-i", source, "--id-field", "id", "-o", tmp_path / "o.jsonl", "--resume")
    assert "row 15: the id 0 appears twice" in message


# ------------------------------------------------------------------------------ refused up front
def test_bad_inputs_and_outputs_exit_2_before_any_work(capsys, tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setattr(gte.cli, "Embedder", None)  # nothing below may get as far as loading the model
    model = ["embed", "-m", tiny_model_dir]
    source = write_jsonl(tmp_path / "in.jsonl", [{"id": 1, "text": "a"}, {"text": "b"}])
    assert "line 2: no field 'id'" in error_of(capsys, *model, "-i", source, "--id-field", "id", "-o", tmp_path / "o.parquet")
    pq.write_table(pa.table({"text": ["a"]}), tmp_path / "in.parquet")
    assert "no column 'doc'" in error_of(capsys, *model, "-i", tmp_path / "in.parquet", "--id-field", "doc", "-o", tmp_path / "o.jsonl")
    csv_file = tmp_path / "in.csv"
    csv_file.write_text("text\nx\n")
    assert "no column 'doc'" in error_of(capsys, *model, "-i", csv_file, "--keep-columns", "doc", "-o", tmp_path / "o.jsonl")
    (tmp_path / "exists.parquet").write_text("")
    assert "exists: pass --overwrite" in error_of(capsys, *model, "x", "-o", tmp_path / "exists.parquet")
    assert "pass one of them" in error_of(capsys, *model, "x", "-o", tmp_path / "n.parquet", "--resume", "--overwrite")
    assert "is a directory" in error_of(capsys, *model, "x", "-o", tmp_path)
    (tmp_path / "d.parquet").mkdir()
    assert "is a directory" in error_of(capsys, *model, "x", "-o", tmp_path / "d.parquet")
    assert "does not exist" in error_of(capsys, *model, "x", "-o", tmp_path / "no" / "o.npy")
    assert "holds vectors only" in error_of(capsys, *model, "-i", source, "--id-field", "id", "-o", tmp_path / "o.npy")
    assert "no ids or other fields" in error_of(capsys, *model, "x", "--id-field", "id", "-o", tmp_path / "o.jsonl")
    assert "has its own 'embedding' column" in error_of(capsys, *model, "-i", source, "--keep-columns", "embedding")
    assert "URIs are read as parquet datasets" in error_of(capsys, *model, "-i", "s3://bucket/docs.jsonl")
    monkeypatch.setattr(sys, "stdin", stdio.StringIO("a\nb\n"))
    assert "needs the row count up front" in error_of(capsys, *model, "-o", tmp_path / "o.npy")


def test_unwritable_outputs(capsys, tmp_path, tiny_model_dir):
    if Path("/dev/full").exists():
        assert "not a regular file" in error_of(capsys, "embed", "-m", tiny_model_dir, "x", "-o", "/dev/full")
    if Path("/proc/version").exists():
        assert "cannot write in /proc" in error_of(capsys, "embed", "-m", tiny_model_dir, "x", "-o", "/proc/o.jsonl")


def test_csv_with_bom_and_an_unclosed_quote(capsys, tmp_path, tiny_model_dir, embedder):
    bom = tmp_path / "bom.csv"
    bom.write_bytes("\ufefftext,id\nhello,1\n\"two\nlines\",2\n".encode())
    code, out, err = run(capsys, "embed", "-m", tiny_model_dir, "-i", bom)
    assert code == 0, err
    np.testing.assert_allclose([json.loads(line)["embedding"] for line in out.splitlines()],
                               embedder.encode(["hello", "two\nlines"]), atol=1e-5)  # fmt: skip
    broken = tmp_path / "broken.csv"
    broken.write_text('text,id\nfine,1\n"open quote,2\nthird,3\nfourth,4\n')
    assert "broken.csv, line 3: malformed CSV" in error_of(capsys, "embed", "-m", tiny_model_dir, "-i", broken)
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("text,id\na,1,extra\n")
    assert "line 2: 3 fields where the header has 2" in error_of(capsys, "embed", "-m", tiny_model_dir, "-i", ragged)


def test_non_utf8_stdin_is_one_line(tmp_path, tiny_model_dir):
    result = subprocess.run([sys.executable, "-m", "gte_cli", "embed", "-m", str(tiny_model_dir)], input=b"ok\ncaf\xe9\n",
                            capture_output=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})  # fmt: skip
    assert result.returncode == 2 and result.stdout == b""
    assert result.stderr.decode().strip() == "gte embed: error: <stdin>, line 2: not UTF-8 text (invalid continuation byte at byte 3 of the line)"


def test_null_texts_and_ids_are_named(capsys, tmp_path, tiny_model_dir):
    pq.write_table(pa.table({"id": [1, None], "text": ["a", "b"]}), tmp_path / "ids.parquet")
    message = error_of(capsys, "embed", "-m", tiny_model_dir, "-i", tmp_path / "ids.parquet", "--id-field", "id", "-o", tmp_path / "o.jsonl")
    assert "row 1: the id field 'id' is null" in message
    pq.write_table(pa.table({"text": ["a", None]}), tmp_path / "texts.parquet")
    assert "row 1: the 'text' value is null" in error_of(capsys, "embed", "-m", tiny_model_dir, "-i", tmp_path / "texts.parquet")
    assert not (tmp_path / "o.jsonl").exists()


def test_python_api_and_empty_input(tmp_path, embedder):
    summary = gte.embed_corpus(["a b", "c"], tmp_path / "v.jsonl", embedder=embedder)
    assert summary.rows == 2 and summary.tokens > 0
    (tmp_path / "empty.jsonl").write_text("")
    summary = gte.embed_corpus(tmp_path / "empty.jsonl", tmp_path / "e.parquet", embedder=embedder)
    empty = pq.read_table(tmp_path / "e.parquet")
    assert summary.rows == 0 and empty.num_rows == 0 and empty.schema.field("embedding").type == pa.list_(pa.float32(), 32)
    with pytest.raises(sources.InputError, match="exists"):
        gte.embed_corpus(["a"], tmp_path / "v.jsonl", embedder=embedder)
