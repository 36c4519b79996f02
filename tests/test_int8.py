"""dtype="int8" on the CPU: the encoder layers' projections become int8 (everything else stays float32), the
vectors stay close to float32's, the fidelity is measured on the loaded model and shown (`gte info --int8`,
the server's /info), a warning under the bar, and clear refusals elsewhere."""

from __future__ import annotations

import copy
import json
import warnings

import numpy as np
import pytest
import torch

import gte
import gte_cli
from gte import int8, job
from gte.prepack import Int8Linear, PackedLinear, int8_supported, prepack, quantize, supported
from gte_cli import main
from model_helpers import random_batch, small_config

pytestmark = pytest.mark.skipif(not int8_supported(), reason="no int8 kernels in this torch build")

TEXTS = ["the quick brown fox", "", "paris london berlin", "deep neural network for search", "北京 hund"]
# The tiny random checkpoints (hidden size 32: 32 or 64 products per output) give int8 little to average over.
# Measured on their probe texts (8-bit activations, a VNNI CPU): lowest cosine 0.9966 for the English embedder
# (it warns), 0.9997 for the reranker; 7-bit activations (CPUs without VNNI) lose more.
MIN_TINY_COSINE = 0.99


@pytest.fixture(scope="module")
def fp32(tiny_model_dir) -> gte.Embedder:
    return gte.Embedder(tiny_model_dir)


@pytest.fixture(scope="module")
def quantized(tiny_model_dir) -> gte.Embedder:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", int8.Int8Warning)  # whether it warns is test_warning_under_the_bar's
        return gte.Embedder(tiny_model_dir, dtype="int8")


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


def test_the_projections_are_int8_and_the_rest_float32(quantized):
    model = quantized.model
    layers = model.config.num_hidden_layers
    assert sum(isinstance(m, Int8Linear) for m in model.modules()) == 4 * layers  # qkv, o, up_gate, down
    assert not any(isinstance(m, (torch.nn.Linear, PackedLinear)) for m in model.encoder.modules())
    assert {p.dtype for p in model.parameters()} == {torch.float32}  # embeddings, norms
    assert quantized.dtype == torch.float32 and quantized.device == torch.device("cpu")
    assert "dtype=int8" in repr(quantized)


@pytest.mark.skipif(not supported(torch.float32), reason="no packed oneDNN kernel on this machine / torch build")
@pytest.mark.parametrize("config", [{}, {"pack_qkv": False}, {"gated_mlp": False}, {"attention_bias": False, "mlp_bias": False}],
                         ids=["packed-qkv", "split-qkv", "plain-mlp", "no-bias"])
def test_quantize_after_prepack_gives_the_same_model(config):
    """Packing then quantizing gives what quantizing alone does (a packed weight is the float32 weight); packing an
    int8 model finds nothing to pack. The loader quantizes the unpacked model: packing first would be wasted."""
    torch.manual_seed(0)
    plain = gte.NewModel(small_config(**config)).eval()
    packed = copy.deepcopy(plain)
    projections = (6 if "pack_qkv" in config else 4) * plain.config.num_hidden_layers
    assert prepack(packed) == projections
    assert quantize(packed) == quantize(plain) == projections and prepack(plain) == 0
    batch = random_batch(plain.config, [9, 3, 17])
    with torch.inference_mode():
        torch.testing.assert_close(packed(**batch).last_hidden_state, plain(**batch).last_hidden_state, atol=0, rtol=0)


def test_int8_vectors_are_close_to_float32(quantized, fp32):
    got, expected = quantized.encode(TEXTS), fp32.encode(TEXTS)
    assert got.dtype == np.float32 and got.shape == expected.shape
    assert cosines(got, expected).min() >= MIN_TINY_COSINE
    assert not np.allclose(got, expected, atol=1e-5)  # really int8, not float32 under another name


def test_the_fidelity_is_measured_on_the_loaded_model(quantized, fp32):
    """The recorded cosines are those of the probe texts' vectors, int8 (the Embedder as loaded) to float32."""
    fidelity = quantized.int8_fidelity
    assert fidelity.probes == len(int8.PROBE_TEXTS)
    ids, _ = int8.probe_tokens(fp32.tokenizer, fp32.vocab_size, fp32.max_length)
    assert len(ids) == fidelity.probes and all(len(row) > 3 for row in ids)  # real texts, with special tokens
    measured = cosines(quantized.encode_tokens(ids), fp32.encode_tokens(ids))
    assert fidelity.min_cosine == pytest.approx(measured.min(), abs=1e-5)
    assert fidelity.mean_cosine == pytest.approx(measured.mean(), abs=1e-5)
    assert MIN_TINY_COSINE <= fidelity.min_cosine <= fidelity.mean_cosine <= 1
    assert fp32.int8_fidelity is None


def test_warning_under_the_bar(tiny_model_dir, monkeypatch):
    monkeypatch.setattr(int8, "MIN_COSINE", 1.01)  # no int8 model reaches it
    with pytest.warns(int8.Int8Warning, match=r"close to float32 only down to cosine 0\.9\d+ .*use dtype float32"):
        gte.Embedder(tiny_model_dir, dtype="int8")
    monkeypatch.setattr(int8, "MIN_COSINE", 0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error", int8.Int8Warning)
        gte.Embedder(tiny_model_dir, dtype="int8")


def test_reranker_int8(reranker_model_dir):
    fp32 = gte.Reranker(reranker_model_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", int8.Int8Warning)
        quantized = gte.Reranker(reranker_model_dir, dtype="int8")
    assert sum(isinstance(m, Int8Linear) for m in quantized.model.modules()) == 4 * quantized.model.config.num_hidden_layers
    assert type(quantized.model.classifier) is torch.nn.Linear and quantized.model.classifier.weight.dtype == torch.float32
    assert quantized.int8_fidelity.probes == len(int8.PROBE_TEXTS) and quantized.int8_fidelity.min_cosine >= MIN_TINY_COSINE
    query, docs = "le chat", ["le chat", "der hund", "casa", "北京 上海"]
    ids, types = fp32.tokenize_pairs(query, docs)
    assert cosines(quantized.pooled(ids, types).numpy(), fp32.pooled(ids, types).numpy()).min() >= MIN_TINY_COSINE
    got, expected = quantized.score(query, docs), fp32.score(query, docs)
    np.testing.assert_allclose(got, expected, atol=0.1)  # logits of about -0.9..-0.6 here, measured 0.04 apart at most
    assert np.argsort(got).tolist() == np.argsort(expected).tolist()
    assert "dtype=int8" in repr(quantized)


def test_a_model_object_is_quantized_in_place_and_probed_without_a_tokenizer(tiny_model_dir):
    model = gte.NewModel.from_pretrained(str(tiny_model_dir))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", int8.Int8Warning)
        bare = gte.Embedder(model, dtype="int8")
    assert bare.model is model and any(isinstance(m, Int8Linear) for m in model.modules())
    assert bare.int8_fidelity.probes == len(int8.PROBE_TEXTS) and bare.int8_fidelity.min_cosine >= MIN_TINY_COSINE
    ids, types = int8.probe_tokens(None, 100, 10)
    assert types is None and [len(row) for row in ids] == [6, 9, 10, 10, 10, 10, 10, 10]
    assert all(0 <= i < 100 for row in ids for i in row) and ids == int8.probe_tokens(None, 100, 10)[0]


def test_other_devices_and_dtypes_are_refused(tiny_model_dir):
    with pytest.raises(ValueError, match=r"dtype 'int8' runs on the CPU only .* not on meta: pass device='cpu'"):
        gte.Embedder(tiny_model_dir, device="meta", dtype="int8")
    with pytest.raises(ValueError, match=r"unknown dtype 'int4': choose one of float32, .*, bf16, int8"):
        gte.Embedder(tiny_model_dir, dtype="int4")
    with pytest.raises(ValueError, match=r"dtype torch\.int8 is not a floating-point dtype: pass 'int8'"):
        gte.Embedder(tiny_model_dir, dtype=torch.int8)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_is_refused(tiny_model_dir):
    with pytest.raises(ValueError, match=r"runs on the CPU only .* not on cuda"):
        gte.Reranker(tiny_model_dir, device="cuda", dtype="int8")


# ------------------------------------------------------------------------------ the command line
def test_dtype_int8_on_every_command_that_takes_a_dtype():
    parser = gte_cli.build_parser()
    for argv in (["embed", "x"], ["rerank", "-q", "q", "d"], ["serve"]):
        assert parser.parse_args([*argv, "--dtype", "int8"]).dtype == "int8"


def test_gte_embed_dtype_int8(capsys, tiny_model_dir, quantized):
    code = main(["embed", "-m", str(tiny_model_dir), "--dtype", "int8", *TEXTS])
    out, err = capsys.readouterr()
    assert code == 0, err
    rows = [json.loads(line)["embedding"] for line in out.splitlines()]
    np.testing.assert_allclose(rows, quantized.encode(TEXTS), atol=1e-6)
    assert main(["embed", "-m", str(tiny_model_dir), "--dtype", "int8", "--device", "meta", "x"]) == 2
    assert "runs on the CPU only" in capsys.readouterr().err


def test_gte_info_shows_the_int8_fidelity(capsys, tiny_model_dir, quantized):
    assert main(["info", str(tiny_model_dir), "--int8", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["int8_fidelity"] == pytest.approx(quantized.int8_fidelity.as_dict(), abs=1e-6)
    assert main(["info", str(tiny_model_dir), "--int8"]) == 0
    assert "int8_fidelity:" in capsys.readouterr().out
    assert main(["info", str(tiny_model_dir), "--json"]) == 0
    assert "int8_fidelity" not in json.loads(capsys.readouterr().out)  # without --int8 the weights are not loaded


def test_a_corpus_job_resumes_only_in_its_own_dtype(capsys, monkeypatch, tmp_path, tiny_model_dir):
    source = tmp_path / "in.txt"
    source.write_text("\n".join(text for text in TEXTS * 3 if text) + "\n", encoding="utf-8")
    common = ["embed", "-m", str(tiny_model_dir), "-i", str(source), "-o", str(tmp_path / "o.jsonl"), "--window", "5"]
    monkeypatch.setattr(job.EmbedJob, "_finish", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    assert main(common) == 130
    monkeypatch.undo()
    manifest = json.loads((tmp_path / "o.jsonl.partial" / "manifest.json").read_text())
    assert manifest["identity"]["dtype"] == "torch.float32"
    capsys.readouterr()
    assert main([*common, "--dtype", "int8", "--resume"]) == 2
    error = capsys.readouterr().err.splitlines()[-1]
    assert "cannot resume" in error and "its dtype differ" in error
