"""gte.export / `gte export onnx`: ONNX Runtime runs the exported graph with our PyTorch numbers (fp32, <= 1e-4)
on every golden case, the embedded default model, rerankers and the sparse head; symbolic batch and sequence
axes, RoPE past max_position_embeddings; sentence_embedding equals SentenceTransformer.encode on directories
sentence-transformers saved (every pooling mode, Dense, Normalize, the prompt left out), and what the graph
cannot carry is reported; a consumer we did not write (fastembed) loads the export; clear errors."""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from safetensors.torch import load_file
from sentence_transformers import SentenceTransformer

import fixtures
import gte
from gte import export
from gte.embed import PoolingNotice
from gte.export import ExportError, export_onnx, run_onnx
from gte.models import DEFAULT_MODEL
from gte_cli import main
from model_helpers import convert_case, golden_manifest, random_batch

TOLERANCE = 1e-4
CASES = golden_manifest()["cases"]
HEAD_OUTPUTS = {"logits", "start_logits", "end_logits"}


def export_to(model: str | Path, out: Path, **kwargs) -> export.ExportReport:
    report = export_onnx(model, out, **kwargs)
    assert report.max_abs_diff <= TOLERANCE, report
    return report


def graph_dims(model_file: Path) -> dict[str, list[str | int]]:
    """Every graph input's and output's dims: a name where the axis is symbolic, else its size."""
    graph = onnx.load(str(model_file), load_external_data=False).graph
    return {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in [*graph.input, *graph.output]}


def reducing_scatters(model_file: Path) -> list[str]:
    """ScatterND / ScatterElements nodes with a reduction: ONNX Runtime runs them on several threads, which lose updates."""
    nodes = onnx.load(str(model_file), load_external_data=False).graph.node
    reductions = {n.name: onnx.helper.get_node_attr_value(n, "reduction") for n in nodes if n.op_type.startswith("Scatter")}
    return [name for name, reduction in reductions.items() if reduction not in (b"none", "none")]


def max_diff_at_valid(got: np.ndarray, expected: torch.Tensor, mask: torch.Tensor) -> float:
    """Max abs diff at the valid positions of a [B, L, ...] output (got is reshaped to expected's shape)."""
    got = torch.from_numpy(got).double().reshape(expected.shape)
    return float((got - expected.double())[mask.reshape(expected.shape[:2]).bool()].abs().max())


# ------------------------------------------------------------------------------ golden cases: every config kind
@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_golden_case(case, tmp_path):
    """Checkpoint directories without a tokenizer; RoPE (NTK, mixed_b, past max_position_embeddings), absolute
    positions, RMSNorm, split qkv, logn scale, token types; every head. ONNX Runtime on the golden inputs equals
    the original's outputs and our PyTorch path."""
    case_dir = case["dir"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = export_to(case_dir, tmp_path)
    notices = [w for w in caught if issubclass(w.category, PoolingNotice)]  # which pooling sentence_embedding has
    assert len(notices) == (case["class"] == "NewModel")
    assert not (tmp_path / "tokenizer.json").exists() and (tmp_path / "config.json").is_file()
    inputs = load_file(str(case_dir / "inputs.safetensors"))
    expected = load_file(str(case_dir / "expected.safetensors"))
    got = run_onnx(report.model_file, {name: inputs[name] for name in report.inputs})
    mask = inputs["attention_mask"].reshape(-1, inputs["attention_mask"].shape[-1])  # multiple choice: rows B * C

    model = getattr(gte, case["class"]).from_pretrained(case_dir).eval()
    base = model if isinstance(model, gte.NewModel) else model.new
    with torch.no_grad():
        ours = base(**{k: v.reshape(mask.shape) for k, v in inputs.items()}, unpad_inputs=True).last_hidden_state
    assert max_diff_at_valid(got["last_hidden_state"], ours, mask) <= TOLERANCE
    assert max_diff_at_valid(got["last_hidden_state"], expected["last_hidden_state"], mask) <= TOLERANCE
    for name in HEAD_OUTPUTS & set(got):
        if got[name].shape[:2] == tuple(mask.shape):  # per token: compare at valid positions
            assert max_diff_at_valid(got[name], expected[name], mask) <= TOLERANCE, name
        else:
            np.testing.assert_allclose(got[name], expected[name].numpy(), rtol=0, atol=TOLERANCE, err_msg=name)
    assert set(report.outputs) - {"last_hidden_state", "sentence_embedding"} == HEAD_OUTPUTS & set(case["outputs"])
    if case["class"] == "NewModel":  # no sentence-transformers files: CLS, as the Embedder
        cls = expected["last_hidden_state"][:, 0].numpy()
        np.testing.assert_allclose(got["sentence_embedding"], cls, rtol=0, atol=TOLERANCE)
    else:
        assert "sentence_embedding" not in report.outputs


def test_native_gte_layout(tmp_path):
    native_dir = convert_case(next(c for c in CASES if c["name"].startswith("p07")), tmp_path / "native")
    report = export_to(native_dir, tmp_path / "out")
    assert json.loads((tmp_path / "out" / "config.json").read_text())["model_type"] == "gte"
    assert report.outputs == ["last_hidden_state", "logits"]


# ------------------------------------------------------------------------------ dims, lengths, heads
def test_symbolic_dims_and_lengths_past_max_position_embeddings(tiny_model_dir, tmp_path):
    report = export_to(tiny_model_dir, tmp_path)
    assert report.inputs == ["input_ids", "attention_mask"]  # type_vocab_size 0: no token types
    assert graph_dims(report.model_file) == {
        "input_ids": ["batch", "sequence"], "attention_mask": ["batch", "sequence"],
        "last_hidden_state": ["batch", "sequence", 32], "sentence_embedding": ["batch", 32],
    }  # fmt: skip
    model = gte.NewModel.from_pretrained(tiny_model_dir).eval()
    longest = int(1.5 * model.config.max_position_embeddings * model.config.rope_scaling["factor"])  # past the RoPE table
    for lengths in ([longest, 100, 7], [1], [5, 5, 5, 5, 5, 5, 5, 5, 5]):
        batch = random_batch(model.config, lengths, seed=len(lengths))
        with torch.no_grad():
            ours = model(**batch, unpad_inputs=True).last_hidden_state
        got = run_onnx(report.model_file, batch)
        assert max_diff_at_valid(got["last_hidden_state"], ours, batch["attention_mask"]) <= TOLERANCE
        assert not got["last_hidden_state"][~batch["attention_mask"].bool().numpy()].any()  # zeros at padding
        np.testing.assert_allclose(got["sentence_embedding"], ours[:, 0].numpy(), rtol=0, atol=TOLERANCE)  # CLS


def test_gte_reranker(reranker_model_dir, tmp_path):
    report = export_to(reranker_model_dir, tmp_path)
    assert report.outputs == ["last_hidden_state", "logits"]
    reranker = gte.Reranker(reranker_model_dir)
    query, documents = "what is a panda?", ["The giant panda is a bear.", "Paris is in France.", "pandas eat bamboo"]
    batch = reranker.tokenizer([query] * len(documents), documents, padding=True, return_tensors="pt")
    logits = run_onnx(report.model_file, {k: batch[k] for k in report.inputs})["logits"][:, 0]
    scores = [hit["score"] for hit in sorted(reranker.rank(query, documents), key=lambda hit: hit["index"])]
    np.testing.assert_allclose(logits, scores, rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("architecture", ["BertForSequenceClassification", "XLMRobertaModel"])
def test_bert_family(bert_family, architecture, tmp_path):
    report = export_to(bert_family(architecture), tmp_path)
    assert ("token_type_ids" in report.inputs) == architecture.startswith("Bert")  # XLM-R has one token type
    assert ("logits" in report.outputs) == architecture.endswith("Classification")


@pytest.mark.parametrize("family", ["nomic_bert", "modernbert"])
def test_other_families(family, tmp_path):
    """nomic-bert and ModernBERT (local layers with a window of 4 positions, shorter than the check texts) export
    as they run: ONNX Runtime gives the PyTorch numbers."""
    build = fixtures.build_nomic_bert_model if family == "nomic_bert" else fixtures.build_modernbert_model
    report = export_to(build(tmp_path / family), tmp_path / "out")
    assert report.outputs[0] == "last_hidden_state"


def test_nomic_bert_dynamic_ntk(tmp_path):
    """Rotary scaling (dynamic NTK past 16 trained positions) exports as it runs: each row of the padded graph gets
    the frequencies of its own length, as each packed sequence does in PyTorch."""
    rope = {"rope_type": "dynamic", "rope_theta": 1000.0, "factor": 2.0}
    path = fixtures.build_nomic_bert_model(tmp_path / "nomic", max_position_embeddings=16, rope_parameters=rope)
    report = export_to(path, tmp_path / "out")
    model = gte.NewModel.from_pretrained(path).eval()
    batch = random_batch(model.config, [40, 8, 20, 17])
    with torch.no_grad():
        ours = model(**batch, unpad_inputs=True).last_hidden_state
    got = run_onnx(report.model_file, {k: batch[k] for k in report.inputs})
    assert max_diff_at_valid(got["last_hidden_state"], ours, batch["attention_mask"]) <= TOLERANCE


def test_sparse_head_token_weights(sparse_model_dir, tmp_path):
    report = export_to(sparse_model_dir, tmp_path)
    assert report.outputs == ["last_hidden_state", "token_weights", "sentence_embedding"]
    assert graph_dims(report.model_file)["token_weights"] == ["batch", "sequence"]
    embedder = gte.Embedder(sparse_model_dir)
    texts = ["der schnelle hund", "le chat est une maison rapide et le chien"]
    ids = embedder.tokenize(texts)
    batch = embedder.tokenizer(texts, padding=True, return_tensors="pt")
    got = run_onnx(report.model_file, {k: batch[k] for k in report.inputs})
    np.testing.assert_allclose(got["sentence_embedding"], embedder.encode(texts), rtol=0, atol=TOLERANCE)  # and dense vectors
    weights = got["token_weights"]
    special = set(embedder.tokenizer.all_special_ids)
    expected = embedder.sparse_tokens(ids)
    for row, row_ids, want in zip(weights, ids, expected):
        got = embedder._token_weights(row_ids, row[: len(row_ids)].tolist(), special)
        assert got.keys() == want.keys()
        np.testing.assert_allclose(list(got.values()), list(want.values()), rtol=0, atol=TOLERANCE)


# ------------------------------------------------------------------------------ sentence_embedding: the whole pipeline
ST_TEXTS = ["the quick brown fox jumps over the lazy dog", "paris", "a", "search for a vector of the city river music " * 3]
ST_ATOL = 1e-5


@pytest.fixture(scope="module")
def st_export(tmp_path_factory, st_dir):
    """st_export(**build_sentence_transformer options) -> (directory saved by sentence-transformers, its export)."""
    built: dict[Path, export.ExportReport] = {}

    def get(**options) -> tuple[Path, export.ExportReport]:
        path = st_dir(**options)
        if path not in built:
            built[path] = export_to(path, tmp_path_factory.mktemp("st-onnx"))
        return path, built[path]

    return get


def onnx_vectors(report: export.ExportReport, reference: SentenceTransformer, texts: list[str], **feed) -> np.ndarray:
    """ONNX Runtime's sentence_embedding on a right-padded batch of `texts` (sentence-transformers' tokenizer)."""
    batch = reference.tokenizer(texts, padding=True, return_tensors="pt")
    assert batch["attention_mask"][:, -1].tolist().count(0) == len(texts) - 1  # rows of different lengths, right-padded
    return run_onnx(report.model_file, {k: batch[k] for k in report.inputs} | feed)["sentence_embedding"]


@pytest.mark.parametrize(
    ("options", "head"),
    [
        (dict(pooling="mean", dense=((48, "GELU"), (16, "Tanh")), normalize=True), "mean, Dense 32->48, Dense 48->16, Normalize"),
        (dict(pooling="max"), "max"),
        (dict(pooling="weightedmean"), "weightedmean"),
        (dict(pooling="lasttoken"), "lasttoken"),
        (dict(pooling=("cls", "mean"), dense=((8, "ReLU"),)), "cls+mean, Dense 64->8"),
    ],
    ids=["mean-dense-normalize", "max", "weightedmean", "lasttoken", "cls+mean-dense"],
)
def test_sentence_embedding_equals_sentence_transformers(st_export, options, head):
    path, report = st_export(**options)
    assert report.outputs == ["last_hidden_state", "sentence_embedding"] and report.head == head
    reference = SentenceTransformer(str(path), device="cpu")
    expected = reference.encode(ST_TEXTS)
    assert graph_dims(report.model_file)["sentence_embedding"] == ["batch", expected.shape[1]]
    assert reducing_scatters(report.model_file) == []
    np.testing.assert_allclose(onnx_vectors(report, reference, ST_TEXTS), expected, rtol=0, atol=ST_ATOL)
    assert report.left_out == []  # sentence-transformers saved its empty prompts and no tokenizer settings: nothing to do


@pytest.mark.parametrize("mode", ["mean", "cls", "lasttoken"])
def test_prompt_left_out_of_pooling(st_export, mode):
    """include_prompt false: the export says so, and the optional input prompt_length leaves the prompt out."""
    path, report = st_export(pooling=mode, include_prompt=False, prompts={"query": "query: "}, default_prompt_name="query")
    assert report.inputs == ["input_ids", "attention_mask"]  # prompt_length is optional: consumers may ignore it
    assert report.left_out == [
        "prompts ('query', default 'query'; config_sentence_transformers.json): text that the consumer puts before "
        "each input",
        "Pooling leaves the prompt out (include_prompt false): with a prompt, feed the optional input prompt_length "
        "(int64 scalar, default 0), the prompt's token count without its trailing special token",
    ]  # fmt: skip
    reference = SentenceTransformer(str(path), device="cpu")
    prompted = ["query: " + text for text in ST_TEXTS]
    prompt_length = torch.tensor(gte.Embedder(path).prompt_length("query: "))
    got = onnx_vectors(report, reference, prompted, prompt_length=prompt_length)
    np.testing.assert_allclose(got, reference.encode(ST_TEXTS), rtol=0, atol=ST_ATOL)  # the default prompt, left out
    np.testing.assert_allclose(onnx_vectors(report, reference, ST_TEXTS), reference.encode(ST_TEXTS, prompt=""),
                               rtol=0, atol=ST_ATOL)  # fmt: skip


def test_cli_prints_what_is_left_out(st_export, tmp_path, capsys):
    path, _ = st_export(pooling="mean", include_prompt=False, prompts={"query": "query: "}, default_prompt_name="query")
    assert main(["export", "onnx", str(path), str(tmp_path / "out")]) == 0
    lines = capsys.readouterr().err.splitlines()
    assert "gte export: sentence_embedding: mean (without the prompt)" in lines
    left_out = [line for line in lines if line.startswith("gte export: left out of the graph: ")]
    assert len(left_out) == 2 and "prompts ('query'" in left_out[0] and "prompt_length" in left_out[1]


def test_int8_cosine_is_of_sentence_embedding(st_export, tmp_path):
    """The int8 check compares the graphs' own sentence vectors (after Dense), not a pooling of the hidden states."""
    path, _ = st_export(pooling="mean", dense=((48, "GELU"), (16, "Tanh")), normalize=True)
    report = export_to(path, tmp_path, quantize="int8")
    batch = export.check_batch(gte.NewConfig.from_pretrained(path), gte.Embedder(path).tokenizer)
    fp32, int8 = (run_onnx(f, batch)["sentence_embedding"] for f in (report.model_file, report.quantized_file))
    assert fp32.shape[1] == 16
    assert report.int8_cosine == pytest.approx(float((fp32 * int8).sum(-1).min()), abs=1e-6)  # both are normalised


def test_pooling_option(tiny_model_dir, reranker_model_dir, tmp_path, capsys):
    assert main(["export", "onnx", str(tiny_model_dir), str(tmp_path / "out"), "--pooling", "mean"]) == 0
    assert "gte export: sentence_embedding: mean\n" in capsys.readouterr().err
    assert main(["export", "onnx", str(reranker_model_dir), str(tmp_path / "rr"), "--pooling", "mean"]) == 2
    assert "makes no sentence vectors: leave out pooling= / --pooling" in capsys.readouterr().err
    assert not (tmp_path / "rr").exists()


def test_module_gte_cannot_apply_is_left_out_by_name(st_export, tmp_path):
    """The encoder still exports; sentence_embedding is not in the graph, and the report names the module."""
    path = Path(shutil.copytree(st_export(pooling="mean")[0], tmp_path / "unknown"))
    modules = json.loads((path / "modules.json").read_text())
    entry = {"idx": 2, "name": "2", "path": "2_X", "type": "sentence_transformers.models.LayerNorm"}
    (path / "modules.json").write_text(json.dumps([*modules, entry]))
    report = export_to(path, tmp_path / "out")
    assert report.outputs == ["last_hidden_state"] and report.head is None
    assert len(report.left_out) == 1 and "sentence_embedding: " in report.left_out[0]
    assert "module '2' of type 'sentence_transformers.models.LayerNorm' is not one gte can apply" in report.left_out[0]


# ------------------------------------------------------------------------------ the default model, a real consumer
@pytest.fixture(scope="module")
def default_export(tmp_path_factory) -> tuple[export.ExportReport, list[str]]:
    """The embedded default model exported with int8, and the warnings the export gave."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = export_to(DEFAULT_MODEL, tmp_path_factory.mktemp("minilm-onnx"), quantize="int8")
    return report, [str(w.message) for w in caught]


TEXTS = ["what is the capital of China?", "how to implement quick sort in python?", "ok", "The quick brown fox " * 20]


def test_default_model(default_export):
    report, _ = default_export
    out = report.out_dir
    assert {"config.json", "tokenizer.json", "modules.json", "sentence_bert_config.json"} <= {p.name for p in out.iterdir()}
    assert (out / "1_Pooling" / "config.json").is_file() and not list(out.glob("*.safetensors"))
    assert report.inputs == ["input_ids", "attention_mask", "token_type_ids"]
    assert report.head == "mean, Normalize" and report.left_out == ["tokenizing (sentence_bert_config.json): truncate to 256 tokens"]
    embedder = gte.Embedder()
    batch = dict(embedder.tokenizer(TEXTS, padding=True, return_tensors="pt"))
    vectors = run_onnx(report.model_file, batch)["sentence_embedding"]
    np.testing.assert_allclose(vectors, embedder.encode(TEXTS), rtol=0, atol=TOLERANCE)


def test_no_cumsum_over_booleans(default_export):
    """The legacy exporter's graph failed in ONNX Runtime on a CumSum over the bool mask."""
    model = onnx.shape_inference.infer_shapes(onnx.load(str(default_export[0].model_file)))
    types = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.value_info, *model.graph.input]}
    cumsums = [node for node in model.graph.node if node.op_type == "CumSum"]
    assert cumsums and all(types[node.input[0]] == onnx.TensorProto.INT64 for node in cumsums)


def test_int8_reports_its_cosine(default_export):
    report, messages = default_export
    assert report.quantized_file == report.model_file.with_name("model_quantized.onnx")
    assert report.quantized_file.stat().st_size < report.model_file.stat().st_size / 3
    assert 0.9 < report.int8_cosine <= 1.0
    warned = [m for m in messages if "int8" in m]
    assert bool(warned) == (report.int8_cosine < 0.99), messages


def test_fastembed_loads_the_export(default_export, monkeypatch):
    """A consumer we did not write: fastembed's TextEmbedding with a local path, offline, gives our vectors."""
    import fastembed
    from fastembed.common.model_description import ModelSource, PoolingType

    report, _ = default_export
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    name = "gte-tests/all-MiniLM-L6-v2-onnx"
    if name not in {m["model"] for m in fastembed.TextEmbedding.list_supported_models()}:
        fastembed.TextEmbedding.add_custom_model(
            model=name, pooling=PoolingType.MEAN, normalization=True, sources=ModelSource(hf=name), dim=384,
            model_file="onnx/model.onnx",
        )  # fmt: skip
    model = fastembed.TextEmbedding(name, specific_model_path=str(report.out_dir), threads=1)
    theirs = np.stack(list(model.embed(TEXTS)))
    np.testing.assert_allclose(theirs, gte.Embedder().encode(TEXTS), atol=1e-5)


# ------------------------------------------------------------------------------ the command and its errors
def test_cli_exports(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["export", "onnx", str(tiny_model_dir), str(out), "--opset", "18"]) == 0
    assert (out / "onnx" / "model.onnx").is_file() and (out / "tokenizer.json").is_file()
    assert onnx.load(str(out / "onnx" / "model.onnx"), load_external_data=False).opset_import[0].version == 18
    err = capsys.readouterr().err
    assert "gte export: wrote" in err and "max abs diff" in err and "gte export: sentence_embedding: cls\n" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--opset", "17"], "opset 17 is not supported: choose one from 18 to 22"),
        (["--opset", "23"], "opset 23 is not supported"),
    ],
)
def test_cli_errors(tiny_model_dir, tmp_path, capsys, argv, message):
    assert main(["export", "onnx", str(tiny_model_dir), str(tmp_path / "out"), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()


AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


@pytest.mark.parametrize(
    "where", ["/proc", "under a file", pytest.param("read-only", marks=pytest.mark.skipif(AS_ROOT, reason="root writes anyway"))]
)
def test_an_output_directory_that_cannot_be_made_is_one_line(tiny_model_dir, tmp_path, capsys, where):
    parent = tmp_path / "parent"
    parent.mkdir()
    out = {"/proc": Path("/proc/gte-export-out"), "under a file": parent / "file" / "out", "read-only": parent / "out"}[where]
    (parent / "file").write_text("not a directory")
    if where == "read-only":
        parent.chmod(0o555)
    try:
        assert main(["export", "onnx", str(tiny_model_dir), str(out)]) == 2
    finally:
        parent.chmod(0o755)
    err = capsys.readouterr().err
    assert err.startswith(f"gte export: error: cannot create {out / 'onnx'} (") and err.count("\n") == 1, err
    assert err.endswith("): choose an output directory that can be created and written\n")


def test_missing_model_is_one_line_and_writes_nothing(tmp_path, capsys):
    assert main(["export", "onnx", str(tmp_path / "nowhere"), str(tmp_path / "out")]) == 2
    assert "is not a checkpoint directory" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_revision_not_in_the_cache_writes_nothing(hub_cache_env, tmp_path, capsys):
    argv = ["export", "onnx", fixtures.OFFICIAL_ID, str(tmp_path / "out"), "--revision", "v2"]
    assert main(argv) == 2
    assert f"hub model '{fixtures.OFFICIAL_ID}' at revision 'v2' is not in the Hugging Face cache" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_non_empty_output_needs_force(tiny_model_dir, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["export", "onnx", str(tiny_model_dir), str(tmp_path)]) == 2
    assert "is not empty: pass --force" in capsys.readouterr().err
    assert not (tmp_path / "onnx").exists()
    export_to(tiny_model_dir, tmp_path, force=True)
    assert (tmp_path / "notes.txt").read_text() == "mine" and (tmp_path / "onnx" / "model.onnx").is_file()


@pytest.mark.parametrize("missing", ["onnx", "onnxscript", "onnxruntime"])
def test_missing_packages_name_the_extra(tiny_model_dir, tmp_path, monkeypatch, missing):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == missing else find_spec(name, *a))
    with pytest.raises(ExportError, match=rf"needs {missing}, not installed here: pip install 'gte-engine\[onnx\]'"):
        export_onnx(tiny_model_dir, tmp_path)
    assert not any(tmp_path.iterdir())


def test_unknown_quantization(tiny_model_dir, tmp_path):
    with pytest.raises(ExportError, match="quantization 'int4' is not supported: choose one of int8"):
        export_onnx(tiny_model_dir, tmp_path, quantize="int4")
