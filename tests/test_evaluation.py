"""`gte eval` / gte.evaluate_retrieval / gte.evaluate_sts: every metric equal to pytrec_eval's (trec_eval's
definitions) on generated runs with ties, graded qrels, unjudged and unretrieved documents and queries without a
relevant document; exact blocked search; the input checks; an end-to-end evaluation of the embedded default model
on a small retrieval set built here, its vectors cached; STS equal to scipy's correlations."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

import gte
from gte.evaluation import metrics, search
from gte.evaluation.data import read_qrels
from gte.evaluation.retrieval import Scoring, corpus_ranges
from gte.sources import InputError
from gte_cli import main

pytrec_eval = pytest.importorskip("pytrec_eval")
CUTOFFS = (1, 3, 5, 10, 20)


# ------------------------------------------------------------------------------ metrics against pytrec_eval
def generated(seed: int) -> tuple[dict, dict]:
    """(qrels, run): graded judgements (0-3), scores with many ties, relevant documents the run misses, retrieved
    documents nobody judged, a query judged without a relevant document."""
    rng = random.Random(seed)
    documents = [f"d{i}" for i in range(60)]
    qrels, run = {}, {}
    for q in range(25):
        judged = rng.sample(documents, rng.randint(1, 15))
        qrels[f"q{q}"] = {d: rng.choice([0, 0, 1, 2, 3]) for d in judged}
        retrieved = rng.sample(documents, rng.randint(0, 30))
        run[f"q{q}"] = {d: round(rng.random(), 1) for d in retrieved}  # one decimal: ties everywhere
    qrels["q0"] = {d: 0 for d in qrels["q0"]}
    return qrels, run


def trec(qrels: dict, run: dict) -> dict:
    measures = {f"{name}.{','.join(map(str, CUTOFFS))}" for name in ("ndcg_cut", "recall", "P", "map_cut")}
    return pytrec_eval.RelevanceEvaluator(qrels, measures | {"recip_rank"}).evaluate(run)


@pytest.mark.parametrize("seed", range(4))
def test_every_metric_equals_pytrec_eval(seed):
    qrels, run = generated(seed)
    expected, ours = trec(qrels, run), metrics.evaluate(run, qrels, CUTOFFS)
    assert expected, "pytrec_eval evaluated nothing"
    names = {"ndcg": "ndcg_cut", "recall": "recall", "precision": "P", "map": "map_cut"}
    for query, values in expected.items():
        for metric, trec_name in names.items():
            for k in CUTOFFS:
                assert ours[query][metric][k] == pytest.approx(values[f"{trec_name}_{k}"], abs=1e-6), (query, metric, k)


@pytest.mark.parametrize("seed", range(4))
def test_mrr_at_k_is_trec_evals_reciprocal_rank_of_the_top_k(seed):
    qrels, run = generated(seed)
    ours = metrics.evaluate(run, qrels, CUTOFFS)
    for k in CUTOFFS:
        top = {q: {d: s for d, s in hits.items() if d in metrics.ranked(hits)[:k]} for q, hits in run.items()}
        for query, values in trec(qrels, top).items():
            assert ours[query]["mrr"][k] == pytest.approx(values["recip_rank"], abs=1e-6), (query, k)


def test_ties_rank_as_trec_eval_ranks_them():
    """Equal scores: the document id later in string order first."""
    assert metrics.ranked({"a": 0.5, "c": 0.5, "b": 0.9, "d": 0.1}) == ["b", "c", "a", "d"]
    qrels, run = {"q": {"a": 1}}, {"q": {"a": 0.5, "c": 0.5}}
    assert metrics.evaluate(run, qrels, [1])["q"]["ndcg"][1] == trec(qrels, run)["q"]["ndcg_cut_1"] == 0


def test_a_query_the_run_lacks_and_one_without_relevant_documents_score_zero():
    scores = metrics.evaluate({"q1": {"a": 1.0}}, {"q1": {"a": 0}, "q2": {"a": 1}}, [1, 10])
    assert all(v == 0 for q in scores.values() for by_k in q.values() for v in by_k.values())
    assert metrics.mean(scores)["ndcg"] == {1: 0.0, 10: 0.0}


# ------------------------------------------------------------------------------ search
def test_blocked_search_finds_the_exact_top_k(monkeypatch):
    monkeypatch.setattr(search, "QUERY_BLOCK", 7)
    monkeypatch.setattr(search, "CORPUS_BLOCK", 11)
    rng = np.random.default_rng(0)
    queries, corpus = rng.standard_normal((20, 8), dtype=np.float32), rng.standard_normal((53, 8), dtype=np.float32)
    scores, rows = search.top_k(queries, corpus, 10)
    full = queries @ corpus.T
    np.testing.assert_array_equal(rows, np.argsort(-full, axis=1, kind="stable")[:, :10])
    np.testing.assert_allclose(scores, np.take_along_axis(full, rows, 1), rtol=1e-6)
    assert search.top_k(queries, corpus[:3], 10)[1].shape == (20, 3)  # fewer documents than k
    cut = [v[:, :4] / np.linalg.norm(v[:, :4], axis=1, keepdims=True) for v in (queries, corpus)]
    matryoshka = Scoring(dim=4).encode
    np.testing.assert_array_equal(search.top_k(queries, corpus, 5, matryoshka)[1], np.argsort(-(cut[0] @ cut[1].T), axis=1)[:, :5])


# ------------------------------------------------------------------------------ a small retrieval set
ANIMALS = [("Bruno", "bear", "salmon", "Alaska"), ("Mila", "otter", "clams", "California"),
           ("Taro", "macaque", "fruit", "Japan"), ("Ines", "flamingo", "shrimp", "Chile"),
           ("Kofi", "elephant", "grass", "Ghana"), ("Lena", "lynx", "hares", "Finland"),
           ("Ravi", "tiger", "deer", "India"), ("Zoe", "koala", "eucalyptus leaves", "Australia"),
           ("Omar", "camel", "desert shrubs", "Morocco"), ("Hana", "panda", "bamboo", "China"),
           ("Pablo", "llama", "hay", "Peru"), ("Ebba", "reindeer", "lichen", "Norway")]  # fmt: skip


def write_set(directory: Path, extra_qrels: str = "") -> dict[str, Path]:
    """BEIR's layout: a document per animal (its food and home), a decoy per animal (the same kind of animal, another
    home and food), notes about the weather; a query per animal asking what the kind from its home eats."""
    directory.mkdir(parents=True, exist_ok=True)
    decoys = ANIMALS[1:] + ANIMALS[:1]  # another animal's name, home and food for each kind
    corpus = [{"_id": f"doc{i}", "title": f"{name} the {kind}", "text": f"{name} is a {kind} from {home} who eats {food}."}
              for i, (name, kind, food, home) in enumerate(ANIMALS)]  # fmt: skip
    corpus += [{"_id": f"decoy{i}", "title": f"{name} the {kind}", "text": f"{name} is a {kind} from {home} who eats {food}."}
               for i, ((name, _, food, home), (_, kind, _, _)) in enumerate(zip(decoys, ANIMALS))]  # fmt: skip
    corpus += [{"_id": f"noise{i}", "title": "", "text": f"A note about the weather on day {i}: rain later."} for i in range(20)]
    queries = [{"_id": f"q{i}", "text": f"what does the {kind} from {home} eat?"} for i, (_, kind, _, home) in enumerate(ANIMALS)]
    files = {"corpus": directory / "corpus.jsonl", "queries": directory / "queries.jsonl", "qrels": directory / "qrels.tsv"}
    files["corpus"].write_text("".join(json.dumps(d) + "\n" for d in corpus))
    files["queries"].write_text("".join(json.dumps(q) + "\n" for q in queries))
    files["qrels"].write_text("query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\tdoc{i}\t1\n" for i in range(len(ANIMALS))) + extra_qrels)
    return files


@pytest.fixture(scope="module")
def default_embedder() -> gte.Embedder:
    return gte.Embedder()


def test_the_default_model_retrieves_the_small_set_and_caches_its_vectors(tmp_path, default_embedder):
    files = write_set(tmp_path / "set")
    cache = tmp_path / "cache"
    first = gte.evaluate_retrieval(**files, embedder=default_embedder, k=[1, 10], dims=[128], cache_dir=cache)
    assert (first.queries, first.documents, first.cutoffs) == (len(ANIMALS), 2 * len(ANIMALS) + 20, [1, 10])
    full, dim = first.variants
    assert (full.name, dim.name) == ("full", "dim 128")
    assert full.scores["ndcg"][10] > 0.9 and full.scores["recall"][10] == 1.0
    assert first.cache is None and list(cache.glob("*/corpus.npy"))
    second = gte.evaluate_retrieval(**files, embedder=default_embedder, k=[1, 10], dims=[128], cache_dir=cache)
    assert second.cache is not None and second.variants == first.variants
    assert "| full | " in second.table() and json.loads(second.to_json())["queries"] == len(ANIMALS)


def test_precisions_score_the_quantized_vectors_from_one_embedding(tmp_path, default_embedder):
    files = write_set(tmp_path / "set")
    report = gte.evaluate_retrieval(**files, embedder=default_embedder, k=[1, 10], dims=[64], precisions=["int8", "binary"],
                                    cache_dir=tmp_path / "cache")  # fmt: skip
    assert [v.name for v in report.variants] == ["full", "int8", "binary", "dim 64", "dim 64 int8", "dim 64 binary"]
    scores = {v.name: v.scores["ndcg"][10] for v in report.variants}
    assert scores["int8"] == pytest.approx(scores["full"], abs=0.1) and 0 < scores["dim 64 binary"] <= 1
    png = report.plot(tmp_path / "curve.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_int8_and_binary_scoring_rank_as_quantized_dot_products():
    """int8: the codes gte.quantize gives under the corpus's ranges; binary: the Hamming distance of the sign bits."""
    rng = np.random.default_rng(1)
    corpus = rng.standard_normal((40, 16)).astype(np.float32)
    ranges = corpus_ranges(corpus, Scoring().encode)
    np.testing.assert_array_equal(ranges, gte.quantize.calibration_ranges(corpus))
    codes = Scoring(precision="int8", ranges=ranges).encode(corpus).numpy()
    np.testing.assert_array_equal(codes, gte.quantize_embeddings(corpus, "int8", ranges))
    signs = Scoring(precision="binary").encode(corpus).numpy()
    bits = np.unpackbits(gte.quantize_embeddings(corpus, "ubinary"), axis=1)[:, :16]
    hamming = (bits[:, None, :] != bits[None, :, :]).sum(-1)
    np.testing.assert_array_equal(signs @ signs.T, 16 - 2 * hamming)


def test_by_hand_the_report_is_the_mean_of_trec_evals_numbers(tmp_path, default_embedder):
    files = write_set(tmp_path / "set")
    report = gte.evaluate_retrieval(**files, embedder=default_embedder, k=[5], cache_dir=tmp_path / "cache")
    queries = [json.loads(line)["text"] for line in files["queries"].read_text().splitlines()]
    documents = [json.loads(line) for line in files["corpus"].read_text().splitlines()]
    q = default_embedder.encode(queries, prompt_name="query")
    d = default_embedder.encode([f"{x['title']} {x['text']}".strip() for x in documents], prompt_name="document")
    run = {f"q{i}": {x["_id"]: float(s) for x, s in zip(documents, row)} for i, row in enumerate(q @ d.T)}
    expected = trec(read_qrels(files["qrels"]), run)
    assert report.variants[0].scores["ndcg"][5] == pytest.approx(np.mean([v["ndcg_cut_5"] for v in expected.values()]), abs=1e-5)


def test_queries_and_documents_get_the_checkpoints_prompts(tmp_path, monkeypatch):
    embedder = gte.Embedder(prompts={"query": "query: ", "document": "passage: "})
    files = write_set(tmp_path / "set")
    asked: list[str | None] = []
    encode = embedder.encode
    monkeypatch.setattr(embedder, "encode", lambda texts, **kw: asked.append(kw.get("prompt_name")) or encode(texts, **kw))
    gte.evaluate_retrieval(**files, embedder=embedder, k=[10], cache_dir=tmp_path / "cache")
    assert asked == ["query"]  # the documents go through the corpus job
    documents = [json.loads(line) for line in files["corpus"].read_text().splitlines()]
    texts = [f"{d['title']} {d['text']}".strip() for d in documents]
    (cached,) = (tmp_path / "cache").glob("*/corpus.npy")
    np.testing.assert_allclose(np.load(cached), encode(texts, prompt_name="document"), atol=1e-6)
    assert not np.allclose(np.load(cached), encode(texts), atol=1e-3)


def test_reranking_is_reported_beside_the_first_stage(tmp_path, default_embedder, reranker_model_dir):
    files = write_set(tmp_path / "set")
    report = gte.evaluate_retrieval(**files, embedder=default_embedder, k=[10], rerank=reranker_model_dir,
                                    rerank_top_k=5, cache_dir=tmp_path / "cache")  # fmt: skip
    assert [v.name for v in report.variants] == ["full", "rerank top 5"]
    assert report.variants[1].scores["recall"][10] <= report.variants[0].scores["recall"][10]  # only the top 5 reranked
    assert "rerank" in report.seconds


def test_pairs_files_make_a_retrieval_set(tmp_path, default_embedder):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"anchor": f"what does the {kind} eat?", "positive": f"the {kind} eats {food}"}) + "\n"
                             for _, kind, food, _ in ANIMALS))  # fmt: skip
    report = gte.evaluate_retrieval(pairs=pairs, embedder=default_embedder, k=[1], cache_dir=tmp_path / "cache")
    assert report.documents == len(ANIMALS) and report.variants[0].scores["mrr"][1] > 0.8


# ------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    "change, message",
    [
        (lambda f: f["qrels"].write_text(f["qrels"].read_text() + "q0\tdoc999\t1\nq99\tdoc1\t1\n"),
         "the qrels name 1 query ids not in the queries and 1 document ids not in the corpus"),
        (lambda f: f["corpus"].write_text(f["corpus"].read_text() + json.dumps({"_id": "doc1", "text": "again"}) + "\n"),
         "1 document ids appear more than once (first: 'doc1')"),
        (lambda f: f["queries"].write_text(f["queries"].read_text() + json.dumps({"_id": "q50", "text": " "}) + "\n"),
         "1 query texts are empty (first id: 'q50')"),
        (lambda f: f["corpus"].write_text(json.dumps({"_id": "doc0", "body": "no text field"}) + "\n"),
         "no field 'text'"),
        (lambda f: f["qrels"].write_text("query-id\tcorpus-id\tscore\nq0\tdoc0\tvery\n"), "line 2: relevance 'very' is not an integer"),
    ],
    ids=["unknown-ids", "duplicate-ids", "empty-query", "no-text-field", "bad-grade"],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, change, message):
    files = write_set(tmp_path / "set")
    change(files)
    code = main(["eval", "retrieval", *(f"--{name}={path}" for name, path in files.items()), "--cache", str(tmp_path / "c")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_ignore_missing_evaluates_without_the_unknown_judgements(tmp_path, capsys, default_embedder):
    files = write_set(tmp_path / "set", extra_qrels="q0\tdoc999\t1\nq99\tdoc1\t1\n")
    report = gte.evaluate_retrieval(**files, embedder=default_embedder, k=[10], ignore_missing=True, cache_dir=tmp_path / "c")
    assert report.queries == len(ANIMALS) and "left out" in report.notes[0]
    with pytest.raises(InputError, match="pass --ignore-missing"):
        gte.evaluate_retrieval(**files, embedder=default_embedder, cache_dir=tmp_path / "c")


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_csv_and_parquet_with_their_own_column_names(tmp_path, default_embedder, suffix):
    import pyarrow as pa
    import pyarrow.csv
    import pyarrow.parquet as pq

    files = write_set(tmp_path / "set")
    for name in ("corpus", "queries"):
        rows = [json.loads(line) for line in files[name].read_text().splitlines()]
        table = pa.table({"doc_id": [r["_id"] for r in rows], "body": [r["text"] for r in rows]})
        files[name] = files[name].with_suffix(suffix)
        pq.write_table(table, files[name]) if suffix == ".parquet" else pa.csv.write_csv(table, files[name])
    report = gte.evaluate_retrieval(**files, embedder=default_embedder, k=[10], id_field="doc_id", text_field="body",
                                    cache_dir=tmp_path / "cache")  # fmt: skip
    assert report.documents == 2 * len(ANIMALS) + 20 and report.variants[0].scores["recall"][10] == 1.0


def test_qrels_in_trec_format_and_without_a_header(tmp_path):
    path = tmp_path / "qrels.txt"
    path.write_text("q1 0 d1 2\nq1 0 d2 0\nq2 0 d1 1\n")
    assert read_qrels(path) == {"q1": {"d1": 2, "d2": 0}, "q2": {"d1": 1}}
    path.write_text("q1\td1\t1\n")
    assert read_qrels(path) == {"q1": {"d1": 1}}


def test_the_command_prints_the_table_and_writes_the_report(tmp_path, capsys):
    files = write_set(tmp_path / "set")
    report = tmp_path / "report.json"
    argv = ["eval", "retrieval", *(f"--{name}={path}" for name, path in files.items()), "--k", "1,10", "--dims", "64",
            "--precision", "binary", "--cache", str(tmp_path / "c"), "--output", str(report), "--plot", str(tmp_path / "p.png")]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "| variant | nDCG@1 | nDCG@10 |" in out and "| dim 64 binary |" in out
    assert json.loads(report.read_text())["cutoffs"] == [1, 10] and (tmp_path / "p.png").is_file()
    assert main(argv[:-6] + ["--output", str(tmp_path / "out" / "r.json")]) == 0  # no --cache: beside the report
    assert list((tmp_path / "out" / "gte-eval-cache").glob("*/corpus.npy"))


def test_sts_command(tmp_path, capsys):
    path = tmp_path / "sts.csv"
    path.write_text("sentence1,sentence2,score\na cat,a kitten,4.5\na car,a banana,0.5\nrain,a storm,3.0\n")
    assert main(["eval", "sts", "--pairs", str(path), "--output", str(tmp_path / "r.json")]) == 0
    assert "| pairs | Spearman | Pearson |" in capsys.readouterr().out
    assert json.loads((tmp_path / "r.json").read_text())["pairs"] == 3
    path.write_text("sentence1,sentence2,score\na,b,1\nc,d,1\n")
    assert main(["eval", "sts", "--pairs", str(path)]) == 2
    assert "every gold score is 1" in capsys.readouterr().err


# ------------------------------------------------------------------------------ STS
def test_sts_correlations_are_scipys_on_the_cosines(tmp_path, default_embedder):
    from scipy import stats

    rows = [("a cat sits on the mat", "a cat is sitting on a mat", 5.0), ("a man plays guitar", "a man plays a guitar", 4.6),
            ("the stock market fell", "a dog runs in the park", 0.2), ("kids play football", "children play soccer", 4.0),
            ("it is raining", "the sun is shining", 1.0)]  # fmt: skip
    path = tmp_path / "sts.jsonl"
    path.write_text("".join(json.dumps({"sentence1": a, "sentence2": b, "score": s}) + "\n" for a, b, s in rows))
    report = gte.evaluate_sts(path, embedder=default_embedder)
    first, second = (default_embedder.encode([r[i] for r in rows]) for i in (0, 1))
    cosine = (first * second).sum(1)
    gold = [r[2] for r in rows]
    assert report.spearman == pytest.approx(stats.spearmanr(cosine, gold).statistic, abs=1e-6)
    assert report.pearson == pytest.approx(stats.pearsonr(cosine, gold).statistic, abs=1e-6)
    assert report.spearman > 0.5
