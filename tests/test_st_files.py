"""sentence-transformers' modules and prompts: every module gte meets is applied exactly (vectors equal
`SentenceTransformer.encode` on the same directory) or refused by name. The directories are saved by
sentence-transformers itself."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer
from transformers import AutoTokenizer

import fixtures
import gte
from gte.embed import PoolingNotice
from gte.st_files import UnsupportedModuleError

TEXTS = ["the quick brown fox jumps over the lazy dog", "paris", "a", "search for a vector of the city river music " * 3]
PROMPTS = {"query": "query: ", "passage": "passage: ", "search": "search the data set for: "}
ATOL = 1e-5


def same(path: Path, *, normalize: bool = False, **encode) -> None:
    """gte's vectors equal sentence-transformers' on `path` (gte's own normalisation off unless asked)."""
    reference = SentenceTransformer(str(path), device="cpu")
    expected = reference.encode(TEXTS, **encode)
    got = gte.Embedder(path, normalize=normalize).encode(TEXTS, **encode)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=ATOL)


@pytest.mark.parametrize("mode", ["cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken"])
def test_each_pooling_mode(st_dir, mode):
    same(st_dir(pooling=mode))


def test_modes_combined_in_their_order(st_dir):
    path = st_dir(pooling=("lasttoken", "mean", "cls"))
    same(path)
    assert gte.Embedder(path).dimension == 96


@pytest.mark.parametrize("mode", ["cls", "mean", "weightedmean", "lasttoken", "max"])
def test_pooling_without_the_prompt(st_dir, mode):
    """include_prompt false: the prompt's tokens (not its trailing special token) are left out of pooling."""
    path = st_dir(pooling=mode, include_prompt=False, prompts=PROMPTS)
    same(path, prompt_name="search")
    same(path, prompt="query: ")
    same(path)  # no prompt: nothing is left out


def test_dense_layers_and_normalize(st_dir):
    path = st_dir(pooling="mean", dense=((48, "GELU"), (16, "Tanh")), normalize=True)
    same(path)
    same(path, normalize=True)
    embedder = gte.Embedder(path)
    assert embedder.dimension == 16 and embedder.encode(TEXTS, dim=8).shape == (4, 8)
    assert "Dense 32->48, Dense 48->16, Normalize" in embedder.head.describe()


def test_dense_with_identity_and_a_residual(st_dir, tmp_path):
    path = Path(shutil.copytree(st_dir(pooling="cls", dense=((32, "Identity"),)), tmp_path / "residual"))
    config = json.loads((path / "2_Dense" / "config.json").read_text())
    (path / "2_Dense" / "config.json").write_text(json.dumps(config | {"use_residual": True}))
    same(path)


def test_old_pytorch_dense_weights(st_dir, tmp_path):
    """sentence-transformers < 3 stored Dense weights as pytorch_model.bin."""
    import torch
    from safetensors.torch import load_file

    path = Path(shutil.copytree(st_dir(pooling="mean", dense=((8, "ReLU"),)), tmp_path / "bin"))
    weights = path / "2_Dense" / "model.safetensors"
    torch.save(load_file(str(weights)), path / "2_Dense" / "pytorch_model.bin")
    expected = gte.Embedder(st_dir(pooling="mean", dense=((8, "ReLU"),)), normalize=False).encode(TEXTS)
    weights.unlink()
    np.testing.assert_allclose(gte.Embedder(path, normalize=False).encode(TEXTS), expected, atol=ATOL)


# ------------------------------------------------------------------------------ prompts
def test_prompts_as_sentence_transformers_picks_them(st_dir):
    path = st_dir(pooling="mean", prompts=PROMPTS, default_prompt_name="query")
    reference, ours = SentenceTransformer(str(path), device="cpu"), gte.Embedder(path, normalize=False)
    pairs = {
        "default": (reference.encode(TEXTS), ours.encode(TEXTS)),
        "named": (reference.encode(TEXTS, prompt_name="passage"), ours.encode(TEXTS, prompt_name="passage")),
        "text": (reference.encode(TEXTS, prompt="custom: "), ours.encode(TEXTS, prompt="custom: ")),
        "empty": (reference.encode(TEXTS, prompt=""), ours.encode(TEXTS, prompt="")),
        "query": (reference.encode_query(TEXTS), ours.encode_query(TEXTS)),
        "document": (reference.encode_document(TEXTS), ours.encode_document(TEXTS)),
        "document named": (reference.encode_document(TEXTS, prompt_name="passage"),
                           ours.encode_document(TEXTS, prompt_name="passage")),
    }  # fmt: skip
    for name, (expected, got) in pairs.items():
        np.testing.assert_allclose(got, expected, atol=ATOL, err_msg=name)
    assert not np.allclose(pairs["default"][1], pairs["empty"][1])  # the default prompt did change the vectors
    with pytest.raises(ValueError, match="prompt name 'nope' is not one of this model's prompts"):
        ours.encode(TEXTS, prompt_name="nope")


def test_prompts_passed_to_the_embedder(st_dir):
    ours = gte.Embedder(st_dir(pooling="mean"), prompts={"q": "q: "}, default_prompt_name="q", normalize=False)
    np.testing.assert_allclose(ours.encode(TEXTS), ours.encode(TEXTS, prompt="q: "))
    with pytest.raises(ValueError, match="prompt name 'missing'"):
        gte.Embedder(st_dir(pooling="mean"), default_prompt_name="missing")


# ------------------------------------------------------------------------------ the Transformer module's settings
def test_max_seq_length_where_sentence_transformers_6_keeps_it(st_dir, tmp_path):
    """sentence-transformers 6 writes no max_seq_length to sentence_bert_config.json: the tokenizer's
    model_max_length is the limit, within the model's positions."""
    path = Path(shutil.copytree(st_dir(pooling="mean"), tmp_path / "st6"))
    config = json.loads((path / "tokenizer_config.json").read_text())
    (path / "tokenizer_config.json").write_text(json.dumps(config | {"model_max_length": 12}))
    reference = SentenceTransformer(str(path), device="cpu")
    assert gte.Embedder(path).max_length == reference.max_seq_length == 12
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = gte.Embedder(path, normalize=False).encode(TEXTS)
    np.testing.assert_allclose(got, reference.encode(TEXTS), atol=ATOL)


def test_do_lower_case(tmp_path, multilingual_model_dir):
    """sentence_bert_config.json's do_lower_case on a cased tokenizer (sentence-transformers < 6 layout)."""
    path = Path(shutil.copytree(multilingual_model_dir, tmp_path / "lower"))
    fixtures.save_sentence_transformers_files(path, max_seq_length=64, hidden_size=32, normalize=False, pooling="mean")
    (path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 64, "do_lower_case": True}))
    texts = ["The Quick BROWN Fox", "PARIS London", "the quick brown fox"]
    reference = SentenceTransformer(str(path), device="cpu")
    ours = gte.Embedder(path, normalize=False)
    np.testing.assert_allclose(ours.encode(texts), reference.encode(texts), atol=ATOL)
    assert ours.tokenize("The Quick BROWN Fox") == ours.tokenize("the quick brown fox")
    given = AutoTokenizer.from_pretrained(str(path))
    before = given("PARIS")["input_ids"]
    assert gte.Embedder(path, tokenizer=given).tokenize("PARIS") != [before]  # lower-cased, by a copy:
    assert given("PARIS")["input_ids"] == before  # the caller's tokenizer is left as it was


# ------------------------------------------------------------------------------ refused by name
def _with_module(path: Path, out: Path, entry: dict) -> Path:
    copy = Path(shutil.copytree(path, out))
    modules = json.loads((copy / "modules.json").read_text())
    (copy / "modules.json").write_text(json.dumps([*modules, entry]))
    return copy


@pytest.mark.parametrize("kind", ["sentence_transformers.models.LayerNorm", "my_package.modules.Dense"])
def test_unknown_module_is_refused_by_name(st_dir, tmp_path, kind):
    path = _with_module(st_dir(pooling="mean"), tmp_path / "unknown", {"idx": 2, "name": "2", "path": "2_X", "type": kind})
    with pytest.raises(UnsupportedModuleError, match=f"module '2' of type '{kind}' is not one gte can apply"):
        gte.Embedder(path)


def test_settings_gte_cannot_run_are_refused(st_dir, tmp_path):
    path = Path(shutil.copytree(st_dir(pooling="mean", dense=((8, "ReLU"),)), tmp_path / "bad"))
    config = json.loads((path / "2_Dense" / "config.json").read_text())
    (path / "2_Dense" / "config.json").write_text(json.dumps(config | {"activation_function": "my.Activation"}))
    with pytest.raises(UnsupportedModuleError, match="activation_function 'my.Activation' is not a torch.nn module"):
        gte.Embedder(path)
    (path / "2_Dense" / "config.json").write_text(json.dumps(config | {"module_input_name": "token_embeddings"}))
    with pytest.raises(UnsupportedModuleError, match="module_input_name 'token_embeddings' is not supported"):
        gte.Embedder(path)
    (path / "2_Dense" / "config.json").write_text(json.dumps(config | {"in_features": 64}))
    with pytest.raises(UnsupportedModuleError, match="in_features 64 does not match the 32 values"):
        gte.Embedder(path)
    (path / "modules.json").write_text(json.dumps(json.loads((path / "modules.json").read_text())[:1]))
    with pytest.raises(UnsupportedModuleError, match="needs exactly one Pooling module"):
        gte.Embedder(path)


def test_a_checkpoint_without_sentence_transformers_files_says_its_pooling(multilingual_model_dir):
    with pytest.warns(PoolingNotice, match="no sentence-transformers files .* pooling is 'cls'"):
        embedder = gte.Embedder(multilingual_model_dir)
    assert embedder.pooling == "cls"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gte.Embedder(multilingual_model_dir, pooling="mean")  # chosen: no notice
